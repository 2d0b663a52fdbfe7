"""The `postgres` sink against the real test cluster, with tables from `tickwire db migrate`.

Read-back turns NUMERIC into text and TIMESTAMPTZ into the record's ISO format, so a stored
value must equal the normalized record's string exactly (scale and trailing zeros included).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

import tickwire.plugins.postgres_sink as postgres_sink
from tickwire.framework.components import DeadLetter
from tickwire.framework.testing import SinkCase, SinkConformance, make_context, normalized, stream_spec, trade_payload
from tickwire.plugins.postgres_sink import PostgresSink, PostgresSinkError

# The brief's scenario stops PostgreSQL for 30 s. The default suite uses 3 s: the sink's path is
# the same (refused connections, backoff capped at retry_max_seconds), only the wait is longer.
# CI's slow job sets TICKWIRE_PG_OUTAGE_SECONDS=30.
OUTAGE_SECONDS = float(os.environ.get("TICKWIRE_PG_OUTAGE_SECONDS", "3"))
TRADE = stream_spec("trade", table="trades", sinks=["pg"])
ISO_MS = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'


def _sink_spec():
    specs = []
    postgres_sink.tickwire_register_sinks(register=specs.append)
    return specs[0]


def read_back(dsn: str, stream) -> list[dict]:
    """Rows as the normalized record spells them: decimals and timestamps as strings."""
    def as_record_value(column) -> sql.Composable:
        name = sql.Identifier(column.name)
        if column.logical == "decimal":
            return sql.SQL("{}::text").format(name)
        if column.logical == "timestamp_ms":
            return sql.SQL("to_char({} AT TIME ZONE 'UTC', {})").format(name, sql.Literal(ISO_MS))
        return name

    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL("{} AS {}").format(as_record_value(c), sql.Identifier(c.name)) for c in stream.columns),
        sql.Identifier(stream.table),
    )
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(query)
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def read_dead_letters(dsn: str) -> list[dict]:
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute("SELECT stream, reason, plugin, payload FROM dead_letters ORDER BY id")
        return [dict(zip(["stream", "reason", "plugin", "payload"], row)) for row in cursor.fetchall()]


def new_sink(dsn: str, streams=(TRADE,), **options) -> tuple[PostgresSink, object]:
    ctx = make_context(list(streams))
    options = {"dsn": dsn, "retry_initial_seconds": 0.1, "retry_max_seconds": 1, **options}
    return PostgresSink("pg", options, ctx), ctx


class TestPostgresConformance(SinkConformance):
    @pytest.fixture
    def sink_case(self, postgres_tables):
        return SinkCase(
            spec=_sink_spec(),
            options={"dsn": postgres_tables.writer_dsn},
            ctx_factory=lambda streams: make_context(streams),
            read_back=lambda case, stream: read_back(postgres_tables.dsn, stream),
            read_dead_letters=lambda case: read_dead_letters(postgres_tables.dsn),
            name="pg",
        )


def test_every_event_is_stored_once_with_exact_decimals(postgres_tables) -> None:
    prices = ["0.00000001", "16500.10000000", "99999999999.99999999", "123456789012345678.123456789012345678"]
    payloads = [trade_payload(i, price=prices[i % len(prices)]) for i in range(3000)]
    records = normalized(TRADE, payloads)

    async def scenario():
        sink, ctx = new_sink(postgres_tables.writer_dsn)
        await sink.open()
        try:
            await sink.write(TRADE, records[:1000])
            await sink.write(TRADE, records[500:2000] + records[1990:2000])  # overlap + in-batch duplicates
            await sink.write(TRADE, records[1000:3000])  # a replay of a whole acknowledged range
        finally:
            await sink.close()
        return ctx

    ctx = asyncio.run(scenario())
    with psycopg.connect(postgres_tables.dsn) as conn:
        rows = conn.execute("SELECT trade_id, price, quantity FROM trades ORDER BY trade_id").fetchall()
    assert [trade_id for trade_id, _, _ in rows] == list(range(3000))
    for (trade_id, price, quantity), payload in zip(rows, payloads):
        assert price == Decimal(payload["p"]) and quantity == Decimal(payload["q"])
    assert ctx.metrics.value("tickwire_duplicates_dropped_total", stream="trade") == 500 + 10 + 1000
    by_key = {row["trade_id"]: row for row in read_back(postgres_tables.dsn, TRADE)}
    for record in records:
        stored = by_key[record["trade_id"]]
        assert stored["price"] == record["price"]  # the very string Binance sent
        assert stored["event_time"] == record["event_time"] and stored["trade_time"] == record["trade_time"]


@pytest.mark.parametrize("name, schema, table", [
    ("ticker_1h", "ticker_1h.schema.json", "ticker_1h"),
    ("ticker", "ticker_24h.schema.json", "ticker_1d"),
])
def test_ticker_streams_round_trip(postgres_tables, name: str, schema: str, table: str) -> None:
    stream = stream_spec(name, schema, table=table, sinks=["pg"])
    records = [record_of(stream, i) for i in range(50)]

    async def scenario():
        sink, _ = new_sink(postgres_tables.writer_dsn, streams=[stream])
        await sink.open()
        try:
            await sink.write(stream, records)
            await sink.write(stream, records)
        finally:
            await sink.close()

    asyncio.run(scenario())
    stored = sorted(read_back(postgres_tables.dsn, stream), key=lambda row: row["event_time"])
    assert stored == sorted(records, key=lambda row: row["event_time"])


def record_of(stream, i: int) -> dict:
    """A normalized record for any stream schema: one distinct value per column type."""
    values = {
        "decimal": f"{i}.{i:06d}00",
        "bigint": 10_000_000_000 + i,
        "integer": i,
        "text": "BTCUSDT",
        "boolean": bool(i % 2),
        "timestamp_ms": f"2023-01-01T00:00:{i % 60:02d}.{i:03d}Z",
    }
    return {column.name: values[column.logical] for column in stream.columns}


def test_nothing_is_lost_while_postgresql_is_stopped(postgres_tables) -> None:
    """PostgreSQL stops mid-stream; writes wait, the producer is held back by the bounded
    queue (the engine's backpressure), and after the restart every trade is stored once."""
    cluster = postgres_tables.db.cluster
    records = normalized(TRADE, [trade_payload(i) for i in range(6000)])
    batches = [records[start:start + 100] for start in range(0, len(records), 100)]
    outage_started = asyncio.Event()

    async def scenario() -> float:
        sink, _ = new_sink(postgres_tables.writer_dsn)
        await sink.open()
        queue: asyncio.Queue = asyncio.Queue(maxsize=4)

        async def produce():
            for batch in batches:
                await queue.put(batch)
                await asyncio.sleep(0.01)
            await queue.put(None)

        async def consume():
            while (batch := await queue.get()) is not None:
                await sink.write(TRADE, batch)

        async def outage() -> float:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(cluster.stop, "immediate")  # like a crash: no clean shutdown
            outage_started.set()
            stopped = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(cluster.start)
            return time.monotonic() - stopped

        try:
            results = await asyncio.wait_for(asyncio.gather(produce(), consume(), outage()), OUTAGE_SECONDS + 60)
        finally:
            await sink.close()
        return results[2]

    try:
        downtime = asyncio.run(scenario())
    finally:
        cluster.start()
    assert downtime >= OUTAGE_SECONDS
    with psycopg.connect(postgres_tables.dsn) as conn:
        stored = conn.execute("SELECT trade_id FROM trades ORDER BY trade_id").fetchall()
    assert [trade_id for (trade_id,) in stored] == list(range(6000))


def test_postgresql_down_at_open_does_not_hold_the_start_and_the_first_write_waits_for_it(postgres_tables, caplog) -> None:
    """open() with the server stopped returns at once (logged); the write retries with backoff
    and stores the batch once the server is back; the tables are checked on that connection."""
    cluster = postgres_tables.db.cluster
    records = normalized(TRADE, [trade_payload(i) for i in range(100)])

    async def scenario() -> float:
        sink, _ = new_sink(postgres_tables.writer_dsn)
        opened = time.monotonic()
        await sink.open()
        open_took = time.monotonic() - opened
        try:
            write = asyncio.create_task(sink.write(TRADE, records))
            await asyncio.sleep(1.0)
            assert not write.done(), "the write must wait for the server, not fail"
            await asyncio.to_thread(cluster.start)
            await asyncio.wait_for(write, 30)
        finally:
            await sink.close()
        return open_took

    cluster.stop()
    try:
        with caplog.at_level(logging.WARNING):
            open_took = asyncio.run(scenario())
            gc.collect()
    finally:
        cluster.start()
    assert open_took < 2
    with psycopg.connect(postgres_tables.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 100
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage() or r.exc_info]


def test_a_missing_table_found_on_a_late_connection_is_named(postgres_db) -> None:
    """PostgreSQL down at open: the table check happens on the first connection of a write."""
    cluster = postgres_db.cluster

    async def scenario():
        sink, _ = new_sink(postgres_db.dsn)
        await sink.open()
        await asyncio.to_thread(cluster.start)
        try:
            await sink.write(TRADE, normalized(TRADE, [trade_payload(0)]))
        finally:
            await sink.close()

    cluster.stop()
    try:
        with pytest.raises(PostgresSinkError, match=r"stream 'trade': table public.trades does not exist"):
            asyncio.run(scenario())
    finally:
        cluster.start()


def test_a_record_postgresql_rejects_is_dead_lettered_and_the_rest_stored(postgres_tables) -> None:
    records = normalized(TRADE, [trade_payload(i) for i in range(5)])
    records[2]["price"] = "1e400000"  # passes no validator, but make sure the sink survives it
    records[3]["symbol"] = None

    async def scenario():
        sink, ctx = new_sink(postgres_tables.writer_dsn)
        await sink.open()
        try:
            await sink.write(TRADE, records)
        finally:
            await sink.close()
        return ctx

    ctx = asyncio.run(scenario())
    with psycopg.connect(postgres_tables.dsn) as conn:
        stored = conn.execute("SELECT trade_id FROM trades ORDER BY trade_id").fetchall()
    assert stored == [(0,), (1,), (4,)]
    letters = read_dead_letters(postgres_tables.dsn)
    assert [letter["plugin"] for letter in letters] == ["postgres:pg", "postgres:pg"]
    assert "numeric" in letters[0]["reason"] and "not-null" in letters[1]["reason"]
    assert '"trade_id": 2' in letters[0]["payload"]
    assert ctx.metrics.value("tickwire_dead_letters_total", stream="trade") == 2


def test_a_dead_letter_with_a_nul_byte_is_kept(postgres_tables) -> None:
    async def scenario():
        sink, _ = new_sink(postgres_tables.writer_dsn)
        await sink.open()
        try:
            await sink.write_dead_letters([DeadLetter(None, "not JSON", "binance", "ab\x00cd", "2023-01-01T00:00:00.000Z")])
        finally:
            await sink.close()

    asyncio.run(scenario())
    assert read_dead_letters(postgres_tables.dsn)[0]["payload"] == "ab\\u0000cd"


def test_missing_tables_are_reported_with_sink_and_stream(postgres_db) -> None:
    sink, _ = new_sink(postgres_db.dsn)
    with pytest.raises(PostgresSinkError, match=r"sink 'pg' \(postgres\), stream 'trade': table public.trades does not exist.*tickwire db migrate"):
        asyncio.run(sink.open())


def test_the_reader_role_is_refused_at_open(postgres_tables) -> None:
    sink, _ = new_sink(postgres_tables.reader_dsn)
    with pytest.raises(PostgresSinkError, match="may not INSERT into public.trades"):
        asyncio.run(sink.open())


def test_a_wrong_password_fails_at_open_without_retrying(postgres_tables) -> None:
    sink, _ = new_sink(postgres_tables.db.dsn_for("tickwire_writer", "wrong"))
    started = time.monotonic()
    with pytest.raises(PostgresSinkError, match="cannot connect: .*password authentication failed"):
        asyncio.run(sink.open())
    assert time.monotonic() - started < 5


def test_no_dsn_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("TICKWIRE_PG_DSN", raising=False)
    with pytest.raises(PostgresSinkError, match=r"sink 'pg' \(postgres\): no connection string; set TICKWIRE_PG_DSN"):
        PostgresSink("pg", {"dsn": ""}, make_context([TRADE]))
