"""Day partitions and retention: the plan, `tickwire db migrate` / `db maintain` on the real
test cluster, the writers (postgres sink, Spark's writer) on a missing day, an old plain table
converted, and SQLite retention in bounded batches."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from tickwire.framework.cli import build
from tickwire.framework.testing import make_context, normalized, stream_spec, trade_payload
from tickwire.plugins import codegen_postgres
from tickwire.plugins.codegen_sqlite import ddl_for
from tickwire.plugins.postgres_partitions import stream_plan
from tickwire.plugins.postgres_sink import PostgresSink
from tickwire.plugins.sqlite_retention import delete_batches
from tickwire.plugins.sqlite_sink import SQLiteSink
from tests.fixtures.postgres import REPOSITORY, run_db_migrate

TODAY = datetime.now(timezone.utc).date()
TRADE = stream_spec("trade", table="trades", sinks=["pg"])


def ms(day: date, hour: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc).timestamp() * 1000)


def trades_on(day: date, ids: range, symbol: str = "BTCUSDT") -> list[dict]:
    return normalized(TRADE, [trade_payload(i, symbol, event_ms=ms(day) + i) for i in ids])


def project_with_retention(tmp_path: Path, days: int = 30) -> Path:
    """The repository's streams.yaml with `retention: N days` on the trade stream and the candles."""
    shutil.copytree(REPOSITORY / "schemas", tmp_path / "schemas")
    text = (REPOSITORY / "streams.yaml").read_text()
    text = text.replace("    table: trades\n", f"    table: trades\n    retention: {days} days\n", 1)
    text = text.replace("    table: candles_1m\n", f"    table: candles_1m\n    retention: {days} days\n", 1)
    path = tmp_path / "streams.yaml"
    path.write_text(text)
    return path


def tickwire(config: Path, *args: str, env: dict | None = None):
    argv = ["-c", str(config), *args]
    group, app = build(argv)
    return CliRunner().invoke(group, argv, obj=app, env=env or {}, catch_exceptions=False)


def day_partitions(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [name for (name,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass ORDER BY 1", [table]).fetchall()]


def where_rows_are(dsn: str, table: str = "trades") -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1").fetchall())


def partition(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


# -- the plan ----------------------------------------------------------------------------------


def test_trades_are_partitioned_by_trade_time_because_a_trade_keeps_it_on_every_path():
    # A trade filled from REST gets E = T (plugins/binance/rest.py), the WebSocket sends E = T + δ:
    # only the trade time is the same both ways, so only it keeps ON CONFLICT exact.
    plan = stream_plan(TRADE)
    assert (plan.time_column, plan.key) == ("trade_time", ("symbol", "trade_id", "trade_time"))
    ticker = stream_plan(stream_spec("ticker_1h", "ticker_1h.schema.json"))
    assert (ticker.time_column, ticker.key) == ("event_time", ("symbol", "event_time"))


def test_generated_ddl_declares_parent_default_partition_and_function():
    group, app = build(["-c", str(REPOSITORY / "streams.yaml")])
    ddl = app.manager.codegen["postgres"].factory(app.config)["schema.sql"]
    assert 'PRIMARY KEY ("symbol", "trade_id", "trade_time")\n) PARTITION BY RANGE ("trade_time");' in ddl
    assert 'CREATE TABLE IF NOT EXISTS "trades_default" PARTITION OF "trades" DEFAULT;' in ddl
    assert ') PARTITION BY RANGE ("window_start");' in ddl  # candles too
    assert "SECURITY DEFINER" in ddl and "REVOKE ALL ON FUNCTION tickwire_ensure_partition" in ddl
    assert "_p2" not in ddl  # day partitions depend on the date: made by migrate/maintain, not the DDL


# -- migrate and maintain ------------------------------------------------------------------------


def test_migrate_creates_today_and_the_days_ahead(postgres_tables):
    names = day_partitions(postgres_tables.dsn, "trades")
    expected = [partition("trades", TODAY + timedelta(days=n)) for n in range(8)]
    assert names == sorted(expected + ["trades_default"])
    assert partition("ticker_1d", TODAY) in day_partitions(postgres_tables.dsn, "ticker_1d")
    assert partition("candles_1m", TODAY) in day_partitions(postgres_tables.dsn, "candles_1m")


def test_maintain_is_idempotent(postgres_tables):
    env = {"TICKWIRE_PG_ADMIN_DSN": postgres_tables.dsn}
    first = tickwire(REPOSITORY / "streams.yaml", "db", "maintain", "--days-ahead", "10", env=env)
    assert first.exit_code == 0, first.output
    assert "table trades: 3 partitions created, 0 dropped (0 rows)" in first.output  # days 8..10
    before = day_partitions(postgres_tables.dsn, "trades")
    second = tickwire(REPOSITORY / "streams.yaml", "db", "maintain", "--days-ahead", "10", env=env)
    assert second.exit_code == 0, second.output
    assert "table trades: 0 partitions created, 0 dropped (0 rows), 11 day partitions kept" in second.output
    assert day_partitions(postgres_tables.dsn, "trades") == before


def test_maintain_keeps_only_the_recent_rows_of_the_spark_batch_ledger(tmp_path, postgres_db):
    """stream_progress gets a row per Spark micro-batch forever; a replay only ever needs a query's
    newest, so maintain deletes what is both older than a day and 1,000 batches behind."""
    config = project_with_retention(tmp_path)
    assert run_db_migrate(postgres_db, config).exit_code == 0
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO stream_progress (query, batch_id, committed_at)
                        SELECT 'trade', b, now() - interval '3 days' + b * interval '1 s' FROM generate_series(0, 1499) b
                        UNION ALL SELECT 'candles_1m', b, now() - interval '1 hour' FROM generate_series(0, 1499) b""")
    result = tickwire(config, "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": postgres_db.dsn})
    assert result.exit_code == 0, result.output
    assert "table stream_progress: 500 rows of old Spark batches deleted" in result.output
    with psycopg.connect(postgres_db.dsn) as conn:
        kept = dict(conn.execute("SELECT query, min(batch_id) FROM stream_progress GROUP BY query").fetchall())
    assert kept == {"trade": 500, "candles_1m": 0}  # the newest 1,000 of the old; every recent one


@contextlib.contextmanager
def maintain_every(config: Path, *args: str):
    """`tickwire db maintain --every 60 …` running: yields (the process, its output up to its first
    wait); then SIGTERM must stop it with exit 0."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tickwire"), "-c", str(config), "db", "maintain", "--every", "60", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TICKWIRE_PG_ADMIN_DSN": ""})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "next run in 60 s" in line:
                break
        yield proc, lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_maintain_every_keeps_running_through_a_failed_run_and_stops_on_sigterm(tmp_path):
    heartbeat = tmp_path / "maintained"
    with maintain_every(project_with_retention(tmp_path), "--heartbeat", str(heartbeat),
                        "--dsn", "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2") as (proc, lines):
        assert any("PostgreSQL refused" in line for line in lines), lines
        assert "failed; next run in 60 s" in lines[-1]
        assert not heartbeat.exists()  # the health check sees the failure
        assert proc.poll() is None  # still running, waiting for the next run


def test_maintain_every_touches_its_heartbeat_after_a_successful_run(tmp_path):
    config = project_with_retention(tmp_path)
    (tmp_path / "data").mkdir()
    sqlite_trades(tmp_path / "data" / "tickwire.db", dataclasses.replace(TRADE, retention_days=30), [(TODAY, 3)])
    heartbeat = tmp_path / "maintained"
    with maintain_every(config, "--heartbeat", str(heartbeat)) as (_, lines):
        assert "done; next run in 60 s" in lines[-1], lines
        assert heartbeat.exists()


def test_maintain_says_so_when_no_stream_has_a_retention(tmp_path):
    config = project_with_retention(tmp_path)
    config.write_text(config.read_text().replace("    retention: 30 days\n", ""))
    (tmp_path / "data").mkdir()
    sqlite_trades(tmp_path / "data" / "tickwire.db", TRADE, [(TODAY, 3)])
    result = tickwire(config, "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": "", "TICKWIRE_SQLITE_PATH": ""})
    assert result.exit_code == 0, result.output
    assert "tickwire.db: no stream has a `retention:`, nothing to delete" in result.output


def test_maintain_without_any_database_is_a_usage_error(tmp_path):
    result = tickwire(project_with_retention(tmp_path), "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": ""})
    assert result.exit_code == 2 and "nothing to maintain" in result.output


def test_retention_drops_whole_expired_partitions_and_keeps_the_rest(tmp_path, postgres_db):
    config = project_with_retention(tmp_path, days=30)
    assert run_db_migrate(postgres_db, config).exit_code == 0
    old, edge, recent = TODAY - timedelta(days=40), TODAY - timedelta(days=31), TODAY - timedelta(days=29)
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        for day, count in ((old, 5), (edge, 3), (recent, 2)):
            conn.execute("SELECT tickwire_ensure_partition('trades', %s)", [day])
            conn.execute("""INSERT INTO trades SELECT i, 'BTCUSDT', t, 1, 1, t, true, t
                            FROM generate_series(1, %s) i, LATERAL (SELECT %s::timestamptz + i * interval '1 s') x(t)""",
                         [count, datetime(day.year, day.month, day.day, 1, tzinfo=timezone.utc)])
    result = tickwire(config, "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": postgres_db.dsn})
    assert result.exit_code == 0, result.output
    assert f"dropped partition {partition('trades', old)} (5 rows older than 30 days)" in result.output
    assert f"dropped partition {partition('trades', edge)} (3 rows older than 30 days)" in result.output
    assert "table trades: 8 partitions created, 2 dropped (8 rows)" not in result.output  # today..+7 exist already
    assert "table trades: 0 partitions created, 2 dropped (8 rows)" in result.output
    names = day_partitions(postgres_db.dsn, "trades")
    assert partition("trades", old) not in names and partition("trades", edge) not in names
    assert partition("trades", recent) in names and partition("trades", TODAY) in names
    assert where_rows_are(postgres_db.dsn) == {partition("trades", recent): 2}
    again = tickwire(config, "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": postgres_db.dsn})
    assert "table trades: 0 partitions created, 0 dropped (0 rows)" in again.output


def test_expired_rows_waiting_in_the_default_partition_are_deleted_and_counted(tmp_path, postgres_db):
    config = project_with_retention(tmp_path, days=30)
    assert run_db_migrate(postgres_db, config).exit_code == 0
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:  # no partition for that day
        conn.execute("INSERT INTO trades SELECT i, 'BTCUSDT', now() - interval '60 days', 1, 1,"
                     " now() - interval '60 days', true, now() FROM generate_series(1, 4) i")
    assert where_rows_are(postgres_db.dsn) == {"trades_default": 4}
    result = tickwire(config, "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": postgres_db.dsn})
    assert "table trades: deleted 4 expired rows from trades_default" in result.output
    assert where_rows_are(postgres_db.dsn) == {}


# -- the writers on a day without a partition -----------------------------------------------------


def test_a_row_of_a_missing_day_lands_in_the_default_partition_and_maintain_moves_it(postgres_tables):
    far = TODAY - timedelta(days=100)
    with psycopg.connect(postgres_tables.writer_dsn, autocommit=True) as conn:  # any writer: Spark, psql…
        conn.execute("INSERT INTO trades VALUES (7, 'BTCUSDT', %s, 1, 1, %s, true, now())",
                     [datetime(far.year, far.month, far.day, tzinfo=timezone.utc)] * 2)
    assert where_rows_are(postgres_tables.dsn) == {"trades_default": 1}
    result = tickwire(REPOSITORY / "streams.yaml", "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": postgres_tables.dsn})
    assert f"created partition {partition('trades', far)} for rows waiting in trades_default" in result.output
    assert where_rows_are(postgres_tables.dsn) == {partition("trades", far): 1}


def test_the_sink_creates_a_missing_days_partition_on_demand(postgres_tables):
    days = [TODAY - timedelta(days=45), TODAY - timedelta(days=44)]

    async def main():
        sink = PostgresSink("pg", {"dsn": postgres_tables.writer_dsn}, make_context([TRADE]))
        await sink.open()
        with capture_logs() as logs:
            await sink.write(TRADE, trades_on(days[0], range(1, 501)) + trades_on(days[1], range(501, 1001)))
            await sink.write(TRADE, trades_on(days[1], range(1001, 1101)))  # the day is known: no call
        await sink.close()
        return logs

    logs = asyncio.run(main())
    assert where_rows_are(postgres_tables.dsn) == {partition("trades", days[0]): 500, partition("trades", days[1]): 600}
    assert [e["day"] for e in logs if e["event"] == "partition created on demand"] == [d.isoformat() for d in days]


def test_a_sink_that_cannot_create_partitions_still_loses_nothing(postgres_tables):
    day = TODAY - timedelta(days=300)
    with psycopg.connect(postgres_tables.dsn, autocommit=True) as conn:  # e.g. a database migrated by hand
        conn.execute("REVOKE EXECUTE ON FUNCTION tickwire_ensure_partition(regclass, date) FROM tickwire_writer")

    async def main():
        sink = PostgresSink("pg", {"dsn": postgres_tables.writer_dsn}, make_context([TRADE]))
        await sink.open()
        with capture_logs() as logs:
            await sink.write(TRADE, trades_on(day, range(1, 51)))
        await sink.close()
        return logs

    logs = asyncio.run(main())
    assert where_rows_are(postgres_tables.dsn) == {"trades_default": 50}
    assert any(e["event"].startswith("cannot create the day's partition") for e in logs)

    # allowed again, the next run's first batch of that day creates the partition and the
    # function moves the 50 waiting rows into it with the new ones
    with psycopg.connect(postgres_tables.dsn, autocommit=True) as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION tickwire_ensure_partition(regclass, date) TO tickwire_writer")

    async def next_run():
        sink = PostgresSink("pg", {"dsn": postgres_tables.writer_dsn}, make_context([TRADE]))
        await sink.write(TRADE, trades_on(day, range(51, 61)))
        await sink.close()

    asyncio.run(next_run())
    assert where_rows_are(postgres_tables.dsn) == {partition("trades", day): 60}


def test_two_writers_asking_for_the_same_day_at_once_get_one_partition(postgres_tables):
    day = TODAY - timedelta(days=20)
    barrier = threading.Barrier(4)

    def ask() -> bool:
        with psycopg.connect(postgres_tables.writer_dsn, autocommit=True) as conn:
            barrier.wait()
            return conn.execute("SELECT tickwire_ensure_partition('trades', %s)", [day]).fetchone()[0]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(), range(4)))
    assert sorted(answers) == [False, False, False, True]
    assert partition("trades", day) in day_partitions(postgres_tables.dsn, "trades")


def test_only_the_writer_may_call_the_partition_function(postgres_tables):
    with psycopg.connect(postgres_tables.reader_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT tickwire_ensure_partition('trades', '2020-01-01')")
    with psycopg.connect(postgres_tables.writer_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="not partitioned"):
            conn.execute("SELECT tickwire_ensure_partition('dead_letters', '2020-01-01')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the writer still creates nothing itself
            conn.execute("CREATE TABLE trades_p20200101 PARTITION OF trades FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')")


def test_the_same_trade_with_another_event_time_is_still_one_row(postgres_tables):
    # WebSocket: E = T + 3 ms; REST gap fill: E = T. The stored key (symbol, trade_id, trade_time) matches both.
    [websocket] = trades_on(TODAY, range(9, 10))
    rest = dict(websocket, event_time=websocket["trade_time"])
    assert rest["event_time"] != websocket["event_time"]

    async def main():
        sink = PostgresSink("pg", {"dsn": postgres_tables.writer_dsn}, make_context([TRADE]))
        await sink.write(TRADE, [websocket])
        await sink.write(TRADE, [rest])
        await sink.close()
        return sink.ctx.metrics.duplicates_dropped.labels(stream="trade")._value.get()

    assert asyncio.run(main()) == 1
    assert where_rows_are(postgres_tables.dsn) == {partition("trades", TODAY): 1}


def test_the_spark_writer_inserts_into_the_partitioned_parent(postgres_tables):
    from tickwire.spark.postgres_writer import PostgresWriter, TableTarget

    columns = ["trade_id", "symbol", "event_time", "price", "quantity", "trade_time", "buyer_is_maker", "ingested_at"]
    at = f"{TODAY - timedelta(days=3)}T10:00:00.000000Z"
    csv = "\n".join(f"{i},BTCUSDT,{at},1.5,2,{at},true,{at}" for i in range(1, 4))
    writer = PostgresWriter(postgres_tables.writer_dsn, "q", "trade", TableTarget("trades", columns, ["symbol", "trade_id"]),
                            None, "dead_letters", "stream_progress")
    assert writer.write(0, [(csv, None)], []) is True
    assert writer.write(1, [(csv, None)], []) is True  # the same rows again: ON CONFLICT skips them
    writer.close()
    assert where_rows_are(postgres_tables.dsn) == {"trades_default": 3}  # a day without partition: kept


# -- converting a table an older tickwire created --------------------------------------------------


def test_migrate_converts_an_unpartitioned_table_keeping_every_row(postgres_db):
    stream = TRADE
    plain = codegen_postgres.create_table(stream.table, stream.columns, stream.primary_key, stream.event_time, "old")
    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute("\n".join(plain))  # the DDL of tickwire before partitions
        conn.execute("""INSERT INTO trades SELECT i, 'BTCUSDT', t, i * 0.01, 0.5, t, i % 2 = 0, t
                        FROM generate_series(1, 3000) i, LATERAL (SELECT now() - i * interval '1 minute') x(t)""")
        checksum = conn.execute("SELECT sum(trade_id * price), min(trade_time), max(trade_time) FROM trades").fetchone()
    result = run_db_migrate(postgres_db, REPOSITORY / "streams.yaml")
    assert result.exit_code == 0, result.output
    assert "table trades: converting to day partitions" in result.output.replace("not partitioned (created by an older tickwire); ", "")
    assert "table trades: converted to day partitions, 3000 rows copied" in result.output
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'trades'").fetchone() == ("p",)
        assert conn.execute("SELECT sum(trade_id * price), min(trade_time), max(trade_time) FROM trades").fetchone() == checksum
        assert conn.execute("SELECT count(*) FROM trades_default").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('trades_unpartitioned')").fetchone() == (None,)
    first_day = checksum[1].astimezone(timezone.utc).date()
    assert partition("trades", first_day) in day_partitions(postgres_db.dsn, "trades")
    again = run_db_migrate(postgres_db, REPOSITORY / "streams.yaml")
    assert again.exit_code == 0 and "convert" not in again.output


# -- SQLite ---------------------------------------------------------------------------------------


def sqlite_trades(path: Path, stream, days_and_counts: list[tuple[date, int]]) -> None:
    conn = sqlite3.connect(path)
    for statement in ddl_for(stream):
        conn.execute(statement)
    next_id = 1
    for day, count in days_and_counts:
        records = trades_on(day, range(next_id, next_id + count))
        columns = [c.name for c in stream.columns]
        conn.executemany(f"INSERT INTO trades ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                         [[r[c] for c in columns] for r in records])
        next_id += count
    conn.commit()
    conn.close()


def test_sqlite_retention_deletes_in_bounded_batches(tmp_path):
    stream = dataclasses.replace(TRADE, retention_days=30)
    path = tmp_path / "t.db"
    sqlite_trades(path, stream, [(TODAY - timedelta(days=40), 11_000), (TODAY - timedelta(days=29), 700)])
    conn = sqlite3.connect(path, isolation_level=None)
    batches = list(delete_batches(conn, stream, datetime.now(timezone.utc), batch_rows=5000))
    assert batches == [5000, 5000, 1000]
    assert conn.execute("SELECT count(*), min(trade_id) FROM trades").fetchone() == (700, 11_001)
    assert list(delete_batches(conn, stream, datetime.now(timezone.utc))) == []  # nothing left to expire
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT rowid FROM trades WHERE trade_time < '2020'").fetchall()
    assert "trades_trade_time_idx" in str(plan)  # found by index, not by scanning the table


def test_the_sqlite_sink_applies_retention_at_start_and_logs_the_count(tmp_path):
    stream = dataclasses.replace(TRADE, retention_days=7)
    (tmp_path / "data").mkdir()
    sqlite_trades(tmp_path / "data" / "t.db", stream, [(TODAY - timedelta(days=9), 30), (TODAY, 5)])

    async def main():
        sink = SQLiteSink("sqlite", {"path": "data/t.db"}, make_context([stream], tmp_path))
        with capture_logs() as logs:
            await sink.open()
            for _ in range(100):  # the first pass runs in the background, right after open
                if any(e["event"] == "retention: expired rows deleted" for e in logs):
                    break
                await asyncio.sleep(0.02)
            await sink.write(stream, trades_on(TODAY, range(100, 103)))
            await sink.close()
        return logs

    logs = asyncio.run(main())
    [entry] = [e for e in logs if e["event"] == "retention: expired rows deleted"]
    assert (entry["stream"], entry["rows"], entry["retention_days"]) == ("trade", 30, 7)
    conn = sqlite3.connect(tmp_path / "data" / "t.db")
    assert conn.execute("SELECT count(*) FROM trades").fetchone() == (8,)


def test_db_maintain_expires_the_profiles_sqlite_database(tmp_path):
    config = project_with_retention(tmp_path, days=30)
    (tmp_path / "data").mkdir()
    stream = dataclasses.replace(TRADE, retention_days=30)
    sqlite_trades(tmp_path / "data" / "tickwire.db", stream, [(TODAY - timedelta(days=31), 12), (TODAY, 3)])
    result = tickwire(config, "db", "maintain", env={"TICKWIRE_PG_ADMIN_DSN": "", "TICKWIRE_SQLITE_PATH": ""})
    assert result.exit_code == 0, result.output
    assert "table trades: deleted 12 rows older than 30 days" in result.output
    assert sqlite3.connect(tmp_path / "data" / "tickwire.db").execute("SELECT count(*) FROM trades").fetchone() == (3,)


# -- configuration --------------------------------------------------------------------------------


def test_a_malformed_retention_is_reported_with_its_line_and_column(tmp_path):
    config = project_with_retention(tmp_path)
    config.write_text(config.read_text().replace("retention: 30 days", "retention: 4 weeks", 1))
    result = tickwire(config, "validate")
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "4 weeks" in text)
    assert result.exit_code == 2
    assert f"streams.yaml:{line}:16: streams.trade.retention" in result.output, result.output


def test_retention_needs_a_time_column_to_expire_by(tmp_path):
    config = project_with_retention(tmp_path)
    schema = tmp_path / "schemas" / "ticker_1h.schema.json"
    schema.write_text(re.sub(r',\s*"event_time": "event_time"', "", schema.read_text(), count=1))  # no event time any more
    text = config.read_text().replace("    table: ticker_1h\n", "    table: ticker_1h\n    retention: 7 days\n", 1)
    config.write_text(text)
    result = tickwire(config, "validate")
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "retention: 7 days" in t)
    assert result.exit_code == 2
    assert f"streams.yaml:{line}:16: streams.ticker_1h.retention: stream 'ticker_1h' has no time column" in result.output, result.output
