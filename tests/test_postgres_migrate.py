"""`tickwire db migrate` and the generated DDL, against the real test cluster."""

from __future__ import annotations

import psycopg
import pytest

from tickwire.framework.cli import build
from tickwire.plugins.postgres_migrate import scram_verifier, scram_verifier_matches
from tests.fixtures.postgres import READER_PASSWORD, REPOSITORY, run_db_migrate

STREAMS_YAML = REPOSITORY / "streams.yaml"
TABLES = ["trades", "ticker_1h", "ticker_1d", "candles_1m", "dead_letters", "stream_progress"]
A_TRADE = (
    "INSERT INTO trades (symbol, trade_id, event_time, trade_time, price, quantity, buyer_is_maker, ingested_at)"
    " VALUES ('BTCUSDT', 1, now(), now(), '27000.01', '0.5', true, now())"
)


def generated_ddl() -> str:
    group, app = build(["-c", str(STREAMS_YAML)])
    return app.manager.codegen["postgres"].factory(app.config)["schema.sql"]


def catalog_snapshot(conn: psycopg.Connection) -> list[tuple]:
    """Tables, columns with types, indexes and grants: what a migration may change."""
    columns = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY 1, 2"
    ).fetchall()
    indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
    grants = conn.execute(
        "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE table_schema = 'public' AND grantee LIKE 'tickwire_%' ORDER BY 1, 2, 3"
    ).fetchall()
    return columns + indexes + grants


def test_generated_ddl_applies_cleanly_twice(postgres_db) -> None:
    ddl = generated_ddl()
    with psycopg.connect(postgres_db.dsn) as conn:
        conn.execute(ddl)
        first = catalog_snapshot(conn)
        conn.execute(ddl)
        assert catalog_snapshot(conn) == first
        types = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'trades'"
        ).fetchall())
        key = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'trades'::regclass AND contype = 'p'"
        ).fetchone()
        indexed = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'trades'").fetchall()
    assert types["price"] == types["quantity"] == "numeric"  # exact money
    assert types["event_time"] == types["ingested_at"] == "timestamp with time zone"
    assert key == ("PRIMARY KEY (symbol, trade_id, trade_time)",)  # + the partition column
    assert any("(symbol, trade_time)" in definition for (definition,) in indexed)


def test_migrate_creates_everything_then_changes_nothing(postgres_db) -> None:
    first = run_db_migrate(postgres_db, STREAMS_YAML)
    assert first.exit_code == 0, first.output
    for table in TABLES:
        assert f"table {table}: created" in first.output
    with psycopg.connect(postgres_db.dsn) as conn:
        after_first = catalog_snapshot(conn)

    second = run_db_migrate(postgres_db, STREAMS_YAML)
    assert second.exit_code == 0, second.output
    for table in TABLES:
        assert f"table {table}: already present" in second.output
    assert "role tickwire_writer: already present, password unchanged" in second.output
    with psycopg.connect(postgres_db.dsn) as conn:
        assert catalog_snapshot(conn) == after_first


def test_reader_may_only_select(postgres_tables) -> None:
    with psycopg.connect(postgres_tables.dsn) as admin:
        admin.execute(A_TRADE)
    with psycopg.connect(postgres_tables.reader_dsn) as reader:
        for table in TABLES:
            reader.execute(f"SELECT count(*) FROM {table}").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(A_TRADE.replace("1, now()", "2, now()"))
        reader.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("UPDATE trades SET price = 0")
        reader.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("CREATE TABLE sneaky (id int)")


def test_writer_may_insert_update_select_but_not_delete_or_create(postgres_tables) -> None:
    with psycopg.connect(postgres_tables.writer_dsn) as writer:
        writer.execute(A_TRADE)
        writer.execute("UPDATE trades SET quantity = '0.75' WHERE trade_id = 1")
        writer.execute("INSERT INTO dead_letters (stream, reason, plugin, payload) VALUES ('trade', 'r', 'p', '{}')")
        writer.execute("INSERT INTO stream_progress (query, batch_id) VALUES ('candles_1m', 0)")
        assert writer.execute("SELECT quantity::text FROM trades").fetchone() == ("0.75",)
        writer.commit()
        for forbidden in ("DELETE FROM trades", "TRUNCATE trades", "DROP TABLE trades", "CREATE TABLE sneaky (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.execute(forbidden)
            writer.rollback()
        attributes = writer.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert attributes == (False, False, False)


def test_migrate_narrows_a_role_widened_by_hand(postgres_tables) -> None:
    with psycopg.connect(postgres_tables.dsn) as admin:
        admin.execute("GRANT INSERT, DELETE ON trades TO tickwire_reader")
        admin.execute("ALTER ROLE tickwire_reader CREATEDB")
    result = run_db_migrate(postgres_tables.db, STREAMS_YAML)
    assert result.exit_code == 0, result.output
    with psycopg.connect(postgres_tables.reader_dsn) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(A_TRADE)
        reader.rollback()
        assert reader.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)


def test_a_changed_password_is_applied(postgres_tables) -> None:
    result = run_db_migrate(postgres_tables.db, STREAMS_YAML, TICKWIRE_PG_READER_PASSWORD="rotated-password")
    try:
        assert "role tickwire_reader: already present, password updated" in result.output
        psycopg.connect(postgres_tables.db.dsn_for("tickwire_reader", "rotated-password")).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(postgres_tables.reader_dsn)
    finally:
        run_db_migrate(postgres_tables.db, STREAMS_YAML, TICKWIRE_PG_READER_PASSWORD=READER_PASSWORD)


@pytest.mark.parametrize("unset, message", [
    ("TICKWIRE_PG_WRITER_PASSWORD", "TICKWIRE_PG_WRITER_PASSWORD is not set (password of role tickwire_writer)"),
    ("TICKWIRE_PG_READER_PASSWORD", "TICKWIRE_PG_READER_PASSWORD is not set (password of role tickwire_reader)"),
    ("TICKWIRE_PG_ADMIN_DSN", "no admin connection: set TICKWIRE_PG_ADMIN_DSN or pass --dsn"),
])
def test_a_missing_setting_is_a_clear_error_with_exit_2(postgres_db, unset: str, message: str) -> None:
    result = run_db_migrate(postgres_db, STREAMS_YAML, **{unset: None})
    assert result.exit_code == 2
    assert message in result.output
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT to_regclass('trades')").fetchone() == (None,)


def test_a_refused_migration_changes_nothing(postgres_db) -> None:
    with psycopg.connect(postgres_db.dsn, autocommit=True) as admin:
        # a conflicting object makes one DDL statement fail halfway through the migration
        admin.execute("CREATE VIEW candles_1m AS SELECT 1 AS x")
    result = run_db_migrate(postgres_db, STREAMS_YAML)
    assert result.exit_code == 1
    assert "PostgreSQL refused, nothing was changed" in result.output
    with psycopg.connect(postgres_db.dsn) as conn:
        assert conn.execute("SELECT to_regclass('trades')").fetchone() == (None,)


def test_scram_verifier_round_trip() -> None:
    verifier = scram_verifier("s3cret", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert scram_verifier_matches(verifier, "s3cret")
    assert not scram_verifier_matches(verifier, "other")
    assert not scram_verifier_matches("md5abcdef", "s3cret")
