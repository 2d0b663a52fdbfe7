"""The SQLite sink on its own and under the engine: WAL, exact decimals, idempotent replays,
readers while it writes, lock contention retried by the engine."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from structlog.testing import capture_logs

import tickwire.plugins.normalize
import tickwire.plugins.sqlite_sink
import tickwire.plugins.validate
from tickwire import plugins
from tickwire.framework.engine import Engine, EngineSettings
from tickwire.framework.testing import LIST_SOURCE, make_context, normalized, stream_spec, trade_payload
from tickwire.plugins.sqlite_inserts import ROWS_PER_STATEMENT
from tickwire.plugins.sqlite_sink import SQLiteSink

TRADE = stream_spec("trade")


def sink_spec():
    found = []
    plugins.sqlite_sink.tickwire_register_sinks(register=found.append)
    return found[0]


def open_sink(tmp_path, **options):
    ctx = make_context([TRADE], tmp_path)
    sink = SQLiteSink("sqlite", {"path": "data/t.db", **options}, ctx)
    return sink, ctx


def rows(path, sql="SELECT * FROM trades ORDER BY trade_id"):
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def test_wal_mode_parent_folders_and_tables(tmp_path):
    async def main():
        sink, _ = open_sink(tmp_path)
        await sink.open()
        await sink.close()

    asyncio.run(main())
    db = tmp_path / "data" / "t.db"
    assert db.exists()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"trades", "dead_letters"} <= tables
    pk = [r[1] for r in sorted(conn.execute("PRAGMA table_info(trades)"), key=lambda r: r[5]) if r[5]]
    assert pk == ["symbol", "trade_id"]


def test_exact_decimals_round_trip(tmp_path):
    prices = ["16500.12000000", "0.00000001", "123456789012345678.123456789012345678", "0.10", "100"]  # trade prices are positive (schema)
    payloads = [trade_payload(i, price=p, quantity=p.lstrip("-")) for i, p in enumerate(prices)]

    async def main():
        sink, _ = open_sink(tmp_path)
        await sink.open()
        await sink.write(TRADE, normalized(TRADE, payloads))
        await sink.close()

    asyncio.run(main())
    stored = rows(tmp_path / "data" / "t.db")
    assert [r["price"] for r in stored] == prices
    assert all(type(r["price"]) is str for r in stored)
    assert rows(tmp_path / "data" / "t.db", "SELECT typeof(price) AS t FROM trades") == [{"t": "text"}] * 5
    assert stored[1]["event_time"] == "2023-01-01T00:00:00.002Z" and stored[1]["buyer_is_maker"] == 1


def test_replays_and_overlaps_never_duplicate_and_are_counted(tmp_path):
    async def main():
        sink, ctx = open_sink(tmp_path)
        await sink.open()
        first = normalized(TRADE, [trade_payload(i) for i in range(100)])
        await sink.write(TRADE, first)
        await sink.write(TRADE, first)
        await sink.write(TRADE, normalized(TRADE, [trade_payload(i) for i in range(50, 150)]))
        await sink.close()
        return ctx.metrics.value("tickwire_duplicates_dropped_total", stream="trade")

    dups = asyncio.run(main())
    stored = rows(tmp_path / "data" / "t.db")
    assert [r["trade_id"] for r in stored] == list(range(150))
    assert dups == 150


def test_batches_larger_than_one_statement(tmp_path):
    n = ROWS_PER_STATEMENT * 2 + 17

    async def main():
        sink, _ = open_sink(tmp_path)
        await sink.open()
        await sink.write(TRADE, normalized(TRADE, [trade_payload(i) for i in range(n)]))
        await sink.close()

    asyncio.run(main())
    assert rows(tmp_path / "data" / "t.db", "SELECT count(*) AS n FROM trades") == [{"n": n}]


def test_readers_see_committed_batches_while_the_sink_writes(tmp_path):
    """WAL: another connection reads (and never blocks the writer) during a stream of writes."""
    db = tmp_path / "data" / "t.db"
    seen: list[int] = []
    errors: list[Exception] = []
    done = threading.Event()

    def reader():
        while not db.exists():
            time.sleep(0.001)
        conn = sqlite3.connect(db, timeout=0.05)  # short: a blocked reader would fail
        while not done.is_set():
            try:
                conn.execute("BEGIN")
                n = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
                conn.execute("COMMIT")
                seen.append(n)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    errors.append(exc)
        conn.close()

    async def main():
        sink, _ = open_sink(tmp_path)
        await sink.open()
        t = threading.Thread(target=reader)
        t.start()
        try:
            for b in range(40):
                await sink.write(TRADE, normalized(TRADE, [trade_payload(b * 500 + i) for i in range(500)]))
                await asyncio.sleep(0.002)
        finally:
            done.set()
            t.join()
            await sink.close()

    asyncio.run(main())
    assert not errors
    assert seen and all(n % 500 == 0 for n in seen), "readers only ever see whole batches"
    assert seen == sorted(seen) and len(set(seen)) > 3


def test_dead_letters_table(tmp_path):
    from tickwire.framework.components import DeadLetter

    async def main():
        sink, _ = open_sink(tmp_path)
        await sink.open()
        await sink.write_dead_letters([DeadLetter("trade", "bad", "validate", '{"p":"x"}', "2023-01-01T00:00:00.000Z")])
        await sink.close()

    asyncio.run(main())
    (row,) = rows(tmp_path / "data" / "t.db", "SELECT stream, reason, plugin, payload, received_at FROM dead_letters")
    assert row == {"stream": "trade", "reason": "bad", "plugin": "validate", "payload": '{"p":"x"}', "received_at": "2023-01-01T00:00:00.000Z"}


def test_a_locked_database_is_retried_by_the_engine_and_nothing_is_lost(tmp_path):
    """Another process holds the write lock: the write fails ('database is locked'), the engine
    logs it with the sink, plugin and stream names and retries until the lock is gone."""
    db = tmp_path / "data" / "t.db"
    tr = []
    plugins.validate.tickwire_register_transforms(register=tr.append)
    plugins.normalize.tickwire_register_transforms(register=tr.append)
    engine = Engine(
        streams=[stream_spec("trade", sinks=["sqlite"])],
        sources={"test": (LIST_SOURCE, {"payloads": [("trade", trade_payload(i)) for i in range(300)]})},
        sinks={"sqlite": (sink_spec(), {"path": "data/t.db", "busy_timeout_ms": 10})},
        transforms={t.name: t for t in tr},
        settings=EngineSettings(batch_size=100, linger_ms=10, retry_initial_s=0.05),
        config_dir=tmp_path,
    )

    async def main():
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # hold the write lock
        await asyncio.sleep(0.4)
        locker.execute("ROLLBACK")
        locker.close()
        await task

    with capture_logs() as logs:
        asyncio.run(main())
    warnings = [e["event"] for e in logs if "retrying in" in e["event"]]
    assert warnings and warnings[0].startswith("sink 'sqlite' (plugin sqlite), stream 'trade': database is locked; retrying in 0.05s")
    assert [r["trade_id"] for r in rows(db)] == list(range(300))
    assert engine.metrics.value("tickwire_messages_written_total", stream="trade", sink="sqlite") == 300


def test_the_wal_is_checkpointed_in_the_background_not_by_commits(tmp_path):
    """Commits never copy the WAL into the database file (that copy + fsync made rare commits take
    hundreds of ms); a thread of the sink does it on its own connection while it stays open."""
    db = tmp_path / "data" / "t.db"

    async def main():
        sink, _ = open_sink(tmp_path, checkpoint_interval_s=0.2)
        await sink.open()
        size_before = db.stat().st_size
        records = normalized(TRADE, [trade_payload(i) for i in range(5000)])
        for start in range(0, 5000, 500):
            await sink.write(TRADE, records[start:start + 500])
        assert sink._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        deadline = time.monotonic() + 10
        while db.stat().st_size <= size_before:  # the rows reach the main file only by a checkpoint
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            await asyncio.sleep(0.05)
        await sink.close()

    asyncio.run(main())
    assert rows(db, "SELECT count(*) FROM trades") == [{"count(*)": 5000}]
    assert not (tmp_path / "data" / "t.db-wal").exists() or (tmp_path / "data" / "t.db-wal").stat().st_size == 0


def test_any_batch_size_uses_a_few_cached_statements_and_counts_stay_exact(tmp_path):
    """Adaptive batching makes batch sizes vary; the sink pads a batch to one of a few statement
    sizes by repeating its last row, which conflicts with itself on the primary key: the rows
    stored and the duplicates counted are exactly those of the batch."""
    from tickwire.plugins.sqlite_inserts import statement_rows

    assert [statement_rows(n, 5000) for n in (1, 16, 17, 21, 100, 1000)] == [1, 16, 20, 24, 112, 1024]
    assert len({statement_rows(n, 5000) for n in range(1, 5001)}) < 60
    payloads = [trade_payload(i) for i in range(21)]

    async def main():
        sink, ctx = open_sink(tmp_path)
        await sink.open()
        await sink.write(TRADE, normalized(TRADE, payloads))  # padded to 24
        first = ctx.metrics.value("tickwire_duplicates_dropped_total", stream="trade")
        await sink.write(TRADE, normalized(TRADE, payloads[15:]))  # 6 rows already stored
        await sink.close()
        return first, ctx.metrics.value("tickwire_duplicates_dropped_total", stream="trade"), sink._inserts.sql

    first, total, statements = asyncio.run(main())
    assert [r["trade_id"] for r in rows(tmp_path / "data" / "t.db")] == list(range(21))
    assert first == 0 and total == 6
    assert {size for _table, size in statements} == {24, 6}
