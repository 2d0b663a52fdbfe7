"""A schema evolves while data flows (docs/schema-evolution.md): `tickwire run` ingests the
simulator, stops, the trade schema gains an optional column (the payload's `M` flag, stored as
`best_match`), the tables are migrated in place, and the run starts again with the new schema.
Nothing is lost, rows of the old version hold NULL, new rows the value. And what cannot be done
in place — the issue's dropped `m` and retyped `q`, a changed key — is refused with the steps."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.postgres import REPOSITORY, run_db_migrate
from tickwire.framework.schema_lock import LOCK_FILE
from tickwire.plugins.table_evolution import POSTGRESQL, SQLITE, TableShape, plan_table

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
TRADE = "schemas/trade.schema.json"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The repository's streams.yaml, schemas and lock in a folder of their own."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(REPOSITORY / "streams.yaml", folder / "streams.yaml")
    shutil.copytree(REPOSITORY / "schemas", folder / "schemas")
    shutil.copy(REPOSITORY / LOCK_FILE, folder / LOCK_FILE)
    return folder


def edit_trade_schema(project: Path, change) -> None:
    path = project / TRADE
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2) + "\n")


def add_best_match(schema: dict) -> None:
    """An optional column: `M` is not in `required`."""
    schema["properties"]["M"]["x-tickwire"] = {"column": "best_match", "type": "boolean"}


def drop_m_and_retype_q(schema: dict) -> None:
    """The issue's scenario: Binance dropped a field, and a type changed."""
    schema["required"].remove("m")
    del schema["properties"]["m"]
    schema["properties"]["q"]["x-tickwire"]["type"] = "text"


def run_pipeline(project: Path, sim, profile: str, duration: float, log_path: Path, **env: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "tickwire.framework.cli", "-c", str(project / "streams.yaml"),
        "--set", f"sources.binance.url={sim.ws_url}", "--set", f"sources.binance.rest_url={sim.rest_url}",
        "--set", f"symbols=[{','.join(SYMBOLS)}]",
        "run", "--profile", profile, "--no-status", "--log-format", "json", "--metrics-port", "0", "--duration", str(duration),
    ]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with log_path.open("wb") as log:
        return subprocess.run(command, cwd=project, env=environment, stdout=log, stderr=subprocess.STDOUT, timeout=120)


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tickwire", "-c", str(project / "streams.yaml"), *args],
                          cwd=project, capture_output=True, text=True, timeout=120)


def assert_nothing_lost_and_new_column_filled(rows: list[tuple], held: dict[str, int], sim) -> None:
    """``rows``: (symbol, trade_id, best_match) in order. Per symbol the ids are one unbroken
    range of the simulator's record; ids the first run stored have NULL, later ones the value."""
    for symbol in SYMBOLS:
        mine = [(trade_id, best) for s, trade_id, best in rows if s == symbol]
        ids = [trade_id for trade_id, _ in mine]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: trade ids missing"
        assert ids[-1] > held[symbol] + 100, f"{symbol}: the second run stored too little to prove anything"
        truth = {t["id"]: t for t in sim.trades(symbol, from_id=ids[0], limit=len(ids))}
        assert set(truth) == set(ids)
        old = [best for trade_id, best in mine if trade_id <= held[symbol]]
        new = [best for trade_id, best in mine if trade_id > held[symbol]]
        assert old and all(best is None for best in old), f"{symbol}: rows of the previous version must hold NULL"
        assert new and all(best in (True, 1) for best in new), f"{symbol}: new rows must hold the new column"


def test_sqlite_run_gets_a_new_optional_column_without_losing_a_trade(project: Path, simulator, tmp_path: Path) -> None:
    sim = simulator(rate=200, symbols=",".join(SYMBOLS))
    database = tmp_path / "tickwire.db"
    env = {"TICKWIRE_SQLITE_PATH": str(database), "TICKWIRE_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl")}
    first = run_pipeline(project, sim, "local", 4, tmp_path / "run-1.log", **env)
    assert first.returncode == 0, (tmp_path / "run-1.log").read_text()[-3000:]
    with sqlite3.connect(database) as conn:
        held = dict(conn.execute("SELECT symbol, max(trade_id) FROM trades GROUP BY symbol").fetchall())
    assert set(held) == set(SYMBOLS)

    edit_trade_schema(project, add_best_match)
    checked = cli(project, "validate")
    assert checked.returncode == 0 and "adds optional column 'best_match'" in checked.stdout, checked.stderr
    assert cli(project, "schema", "lock").returncode == 0

    second = run_pipeline(project, sim, "local", 4, tmp_path / "run-2.log", **env)  # the sink adds the column
    log = (tmp_path / "run-2.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert "table trades: added column best_match (INTEGER)" in log
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT symbol, trade_id, best_match FROM trades ORDER BY symbol, trade_id").fetchall()
        assert conn.execute("SELECT count(*) FROM trade_gaps").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert_nothing_lost_and_new_column_filled(rows, held, sim)


def test_sqlite_refuses_a_breaking_schema_at_start_with_the_steps(project: Path, simulator, tmp_path: Path) -> None:
    sim = simulator(rate=50, symbols=",".join(SYMBOLS))
    database = tmp_path / "tickwire.db"
    env = {"TICKWIRE_SQLITE_PATH": str(database), "TICKWIRE_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl")}
    assert run_pipeline(project, sim, "local", 2, tmp_path / "run-1.log", **env).returncode == 0
    with sqlite3.connect(database) as conn:
        stored = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
    edit_trade_schema(project, drop_m_and_retype_q)
    refused = run_pipeline(project, sim, "local", 2, tmp_path / "run-2.log", **env)
    log = (tmp_path / "run-2.log").read_text()
    assert refused.returncode == 1, log[-3000:]
    assert "column buyer_is_maker (INTEGER NOT NULL) is not in the schema, so every insert would fail" in log
    assert "ALTER TABLE \\\"trades\\\" DROP COLUMN \\\"buyer_is_maker\\\" drops it" in log  # JSON-escaped quotes
    assert "Traceback" not in log  # quantity: decimal and text are both TEXT in SQLite, nothing to refuse
    with sqlite3.connect(database) as conn:  # untouched
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == stored
        assert "buyer_is_maker" in {row[1] for row in conn.execute("PRAGMA table_info(trades)")}


def test_postgres_run_gets_a_new_optional_column_from_db_migrate_without_losing_a_trade(
        project: Path, postgres_tables, simulator, tmp_path: Path) -> None:
    sim = simulator(rate=200, symbols=",".join(SYMBOLS))
    env = {"TICKWIRE_PG_DSN": postgres_tables.writer_dsn}
    first = run_pipeline(project, sim, "postgres", 4, tmp_path / "run-1.log", **env)
    assert first.returncode == 0, (tmp_path / "run-1.log").read_text()[-3000:]
    with psycopg.connect(postgres_tables.dsn) as conn:
        held = dict(conn.execute("SELECT symbol, max(trade_id) FROM trades GROUP BY symbol").fetchall())

    edit_trade_schema(project, add_best_match)
    too_early = run_pipeline(project, sim, "postgres", 4, tmp_path / "run-too-early.log", **env)
    early_log = (tmp_path / "run-too-early.log").read_text()
    assert too_early.returncode == 1, early_log[-3000:]  # at start, before a record is taken
    assert "table public.trades has no column best_match (schema trade.schema.json version 1); add it with " \
           "`tickwire db migrate`" in early_log

    migrated = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert migrated.exit_code == 0, migrated.output
    assert "table trades: added column best_match (boolean)" in migrated.output
    again = run_db_migrate(postgres_tables.db, project / "streams.yaml")  # idempotent: nothing left to add
    assert again.exit_code == 0 and "added column" not in again.output

    second = run_pipeline(project, sim, "postgres", 4, tmp_path / "run-2.log", **env)
    assert second.returncode == 0, (tmp_path / "run-2.log").read_text()[-3000:]
    with psycopg.connect(postgres_tables.dsn) as conn:
        rows = conn.execute("SELECT symbol, trade_id, best_match FROM trades ORDER BY symbol, trade_id").fetchall()
        assert conn.execute("SELECT count(*) FROM trade_gaps").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
        writer_may_insert = conn.execute("SELECT has_column_privilege('tickwire_writer', 'trades', 'best_match', 'INSERT')")
        assert writer_may_insert.fetchone()[0]
    assert_nothing_lost_and_new_column_filled(rows, held, sim)


def insert_one_trade(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO trades (symbol, trade_id, event_time, price, quantity, trade_time, buyer_is_maker, "
                     "ingested_at) VALUES ('BTCUSDT', 1, now(), 1.5, 2, now(), true, now())")


def columns_of(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                                 [table]).fetchall())


def test_db_migrate_refuses_the_issues_breaking_change_and_changes_nothing(project: Path, postgres_tables) -> None:
    insert_one_trade(postgres_tables.dsn)
    edit_trade_schema(project, drop_m_and_retype_q)
    result = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert result.exit_code == 2, result.output
    assert "table trades: column quantity is numeric, the schema says text: ALTER TABLE \"trades\" ALTER COLUMN " \
           "\"quantity\" TYPE text USING \"quantity\"::text" in result.output
    assert "table trades: column buyer_is_maker (boolean NOT NULL) is not in the schema, so every insert would fail: " \
           "ALTER TABLE \"trades\" ALTER COLUMN \"buyer_is_maker\" DROP NOT NULL keeps its data" in result.output
    assert "2 change(s) cannot be made in place; nothing was changed" in result.output
    assert "migrated database" not in result.output
    assert columns_of(postgres_tables.dsn, "trades")["quantity"] == "numeric"


def test_db_migrate_refuses_a_changed_key(project: Path, postgres_tables) -> None:
    edit_trade_schema(project, lambda s: s["x-tickwire"].update(primary_key=["symbol", "trade_id", "event_time"]))
    result = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert result.exit_code == 2
    # The stored key of a day-partitioned table ends with its partition column (trade_time).
    assert ("table trades: the primary key is (symbol, trade_id, trade_time), "
            "the schema says (symbol, trade_id, event_time, trade_time)") in result.output


def test_db_migrate_runs_a_declared_migration_once(project: Path, postgres_tables) -> None:
    insert_one_trade(postgres_tables.dsn)

    def version_2(schema: dict) -> None:
        drop_m_and_retype_q(schema)
        schema["x-tickwire"].update(version=2, migration="migrations/trade-v2.sql")

    edit_trade_schema(project, version_2)
    (project / "migrations").mkdir()
    (project / "migrations/trade-v2.sql").write_text(
        "ALTER TABLE trades DROP COLUMN buyer_is_maker;\n"
        "ALTER TABLE trades ALTER COLUMN quantity TYPE text USING quantity::text;\n")
    assert cli(project, "validate").returncode == 0

    result = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert result.exit_code == 0, result.output
    assert "table trades: ran migration trade-v2.sql (stream trade)" in result.output
    assert columns_of(postgres_tables.dsn, "trades")["quantity"] == "text"
    assert "buyer_is_maker" not in columns_of(postgres_tables.dsn, "trades")
    with psycopg.connect(postgres_tables.dsn) as conn:
        assert conn.execute("SELECT quantity FROM trades").fetchone()[0] == "2"
    again = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert again.exit_code == 0 and "ran migration" not in again.output


def test_a_migration_that_does_not_fix_the_table_changes_nothing(project: Path, postgres_tables) -> None:
    def version_2(schema: dict) -> None:
        drop_m_and_retype_q(schema)
        schema["x-tickwire"].update(version=2, migration="migrations/trade-v2.sql")

    edit_trade_schema(project, version_2)
    (project / "migrations").mkdir()
    (project / "migrations/trade-v2.sql").write_text("ALTER TABLE trades DROP COLUMN buyer_is_maker;\n")
    result = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert result.exit_code == 2
    assert "table trades (after its migration trade-v2.sql): column quantity is numeric, the schema says text" in result.output
    assert "buyer_is_maker" in columns_of(postgres_tables.dsn, "trades")  # rolled back with the rest


def test_a_field_made_optional_drops_not_null_in_place(project: Path, postgres_tables) -> None:
    insert_one_trade(postgres_tables.dsn)
    edit_trade_schema(project, lambda s: s["required"].remove("m"))
    checked = cli(project, "validate")
    assert checked.returncode == 0 and "column 'buyer_is_maker' made optional" in checked.stdout, checked.stderr
    result = run_db_migrate(postgres_tables.db, project / "streams.yaml")
    assert result.exit_code == 0, result.output
    assert "table trades: column buyer_is_maker may now be NULL" in result.output
    with psycopg.connect(postgres_tables.dsn) as conn:
        nullable = conn.execute("SELECT is_nullable FROM information_schema.columns "
                                "WHERE table_name = 'trades' AND column_name = 'buyer_is_maker'").fetchone()[0]
        assert nullable == "YES"
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 1  # the rows stay


# -- the plan itself (pure logic, both dialects) -------------------------------------------------

LIVE = TableShape({"symbol": ("text", True), "trade_id": ("bigint", True), "price": ("numeric", True)},
                  ("symbol", "trade_id"))


def test_plan_adds_optional_columns_and_keeps_dropped_nullable_ones() -> None:
    expected = TableShape({"symbol": ("text", True), "trade_id": ("bigint", True), "price": ("numeric", True),
                           "best_match": ("boolean", False)}, ("symbol", "trade_id"))
    plan = plan_table("trades", expected, LIVE, POSTGRESQL)
    assert plan.refusals == [] and plan.statements() == ['ALTER TABLE "trades" ADD COLUMN "best_match" boolean']
    back = plan_table("trades", LIVE, TableShape({**LIVE.columns, "best_match": ("boolean", False)}, LIVE.key), POSTGRESQL)
    assert back.statements() == [] and back.kept == ["best_match"] and not back.refusals


def test_plan_refuses_new_required_columns_and_sqlite_cannot_drop_not_null() -> None:
    required = TableShape({**LIVE.columns, "side": ("text", True)}, LIVE.key)
    [reason] = plan_table("trades", required, LIVE, POSTGRESQL).refusals
    assert reason.startswith("column side (text NOT NULL) is missing") and "x-tickwire.migration" in reason
    relaxed = TableShape({**LIVE.columns, "price": ("TEXT", False)}, LIVE.key)
    sqlite_live = TableShape({**LIVE.columns, "price": ("TEXT", True)}, LIVE.key)
    [reason] = plan_table("trades", relaxed, sqlite_live, SQLITE).refusals
    assert "SQLite cannot drop the constraint in place" in reason
    assert plan_table("trades", relaxed, sqlite_live, SQLITE).statements() == []
