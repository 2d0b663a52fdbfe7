"""Helpers for testing the Spark job against real Kafka and PostgreSQL (and for the benchmark).

* :func:`trade_mapping` — a mapping of the shape `tickwire generate spark` writes, for a trade
  stream (columns of docs/architecture.md) and its candles;
* :func:`create_tables` — the tables the job writes, for a database `tickwire db migrate` has
  not prepared (idempotent);
* :func:`trade_record` / :func:`expected_candles` — normalized trade records and the candles a
  correct job must produce from them, computed in plain Python with exact decimals;
* :func:`create_topic` / :func:`produce` — Kafka set-up with aiokafka.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal, localcontext

TRADE_COLUMNS = [
    ("symbol", "text", False),
    ("trade_id", "bigint", False),
    ("event_time", "timestamp_ms", False),
    ("trade_time", "timestamp_ms", False),
    ("price", "decimal", False),
    ("quantity", "decimal", False),
    ("buyer_is_maker", "boolean", False),
    ("ingested_at", "timestamp_ms", True),
]
_JSON_TYPE = {"decimal": "string", "bigint": "long", "integer": "integer", "text": "string",
              "boolean": "boolean", "timestamp_ms": "string"}
_SELECT = {
    "decimal": "CAST(`{c}` AS DECIMAL(38,18)) AS `{c}`",
    "timestamp_ms": "CAST(`{c}` AS TIMESTAMP) AS `{c}`",
    "bigint": "CAST(`{c}` AS BIGINT) AS `{c}`",
    "integer": "CAST(`{c}` AS INT) AS `{c}`",
    "text": "`{c}`",
    "boolean": "`{c}`",
}
_PG_TYPE = {"decimal": "NUMERIC", "bigint": "BIGINT", "integer": "INTEGER", "text": "TEXT",
            "boolean": "BOOLEAN", "timestamp_ms": "TIMESTAMPTZ"}


def stream_mapping(name: str, topic: str, table: str, columns, primary_key, event_time="event_time") -> dict:
    return {
        "name": name,
        "topic": topic,
        "table": table,
        "primary_key": list(primary_key),
        "event_time": event_time,
        "value_schema": {
            "type": "struct",
            "fields": [{"name": c, "type": _JSON_TYPE[t], "nullable": True, "metadata": {}} for c, t, _ in columns],
        },
        "select": [_SELECT[t].format(c=c) for c, t, _ in columns],
        "columns": [{"name": c, "logical": t, "nullable": n} for c, t, n in columns],
    }


def trade_mapping(topic: str, table: str = "trades", candles_table: str = "candles_1m",
                  interval: str = "1 minute", watermark: str = "30 seconds") -> dict:
    return {
        "streams": [stream_mapping("trade", topic, table, TRADE_COLUMNS, ["symbol", "trade_id"])],
        "derived": [{
            "name": candles_table, "kind": "candles", "from": "trade", "interval": interval,
            "watermark": watermark, "table": candles_table, "primary_key": ["symbol", "window_start"],
        }],
        "dead_letter_table": "dead_letters",
        "progress_table": "stream_progress",
    }


def create_tables(conn, mapping: dict) -> None:
    """CREATE TABLE IF NOT EXISTS for every table of ``mapping`` (psycopg connection)."""
    statements = []
    for s in mapping["streams"]:
        cols = ", ".join(
            f'"{c["name"]}" {_PG_TYPE[c["logical"]]}{"" if c["nullable"] else " NOT NULL"}' for c in s["columns"]
        )
        key = ", ".join(f'"{k}"' for k in s["primary_key"])
        statements.append(f'CREATE TABLE IF NOT EXISTS "{s["table"]}" ({cols}, PRIMARY KEY ({key}))')
    for d in mapping.get("derived", []):
        statements.append(
            f'CREATE TABLE IF NOT EXISTS "{d["table"]}" (symbol TEXT NOT NULL, window_start TIMESTAMPTZ NOT NULL, '
            "window_end TIMESTAMPTZ NOT NULL, open NUMERIC NOT NULL, high NUMERIC NOT NULL, low NUMERIC NOT NULL, "
            "close NUMERIC NOT NULL, volume NUMERIC NOT NULL, quote_volume NUMERIC NOT NULL, "
            "trade_count BIGINT NOT NULL, vwap NUMERIC, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (symbol, window_start))"
        )
    statements.append(
        f'CREATE TABLE IF NOT EXISTS "{mapping.get("dead_letter_table", "dead_letters")}" '
        "(id BIGSERIAL PRIMARY KEY, stream TEXT, reason TEXT NOT NULL, plugin TEXT, payload TEXT, "
        "received_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    statements.append(
        f'CREATE TABLE IF NOT EXISTS "{mapping.get("progress_table", "stream_progress")}" '
        "(query TEXT NOT NULL, batch_id BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
        "PRIMARY KEY (query, batch_id))"
    )
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def trade_record(symbol: str, trade_id: int, price: str, quantity: str, trade_ms: int,
                 event_ms: int | None = None, buyer_is_maker: bool = False) -> dict:
    """A normalized trade record (the Kafka value of docs/architecture.md)."""
    event_ms = trade_ms + 3 if event_ms is None else event_ms
    return {
        "symbol": symbol, "trade_id": trade_id, "event_time": iso_ms(event_ms), "trade_time": iso_ms(trade_ms),
        "price": price, "quantity": quantity, "buyer_is_maker": buyer_is_maker, "ingested_at": iso_ms(event_ms + 20),
    }


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def expected_candles(trades: list[dict], interval_seconds: int = 60) -> dict[tuple, dict]:
    """(symbol, window_start) → candle, from distinct trades, exact decimals; vwap to 18 places."""
    distinct = {(t["symbol"], t["trade_id"]): t for t in trades}
    windows: dict[tuple, list[dict]] = defaultdict(list)
    for t in distinct.values():
        ts = parse_iso(t["trade_time"])
        epoch = int(ts.timestamp())
        start = datetime.fromtimestamp(epoch - epoch % interval_seconds, tz=timezone.utc)
        windows[(t["symbol"], start)].append(t)
    result = {}
    for (symbol, start), group in windows.items():
        ordered = sorted(group, key=lambda t: (parse_iso(t["trade_time"]), t["trade_id"]))
        prices = [Decimal(t["price"]) for t in group]
        volume = sum((Decimal(t["quantity"]) for t in group), Decimal(0))
        quote = sum((Decimal(t["price"]) * Decimal(t["quantity"]) for t in group), Decimal(0))
        with localcontext() as ctx:
            ctx.prec = 60
            vwap = (quote / volume).quantize(Decimal("1e-18"))
        result[(symbol, start)] = {
            "window_end": start + timedelta(seconds=interval_seconds),
            "open": Decimal(ordered[0]["price"]), "close": Decimal(ordered[-1]["price"]),
            "high": max(prices), "low": min(prices), "volume": volume, "quote_volume": quote,
            "trade_count": len(group), "vwap": vwap,
        }
    return result


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    asyncio.run(_create_topic(bootstrap, topic, partitions))


async def _produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, values: list[dict | bytes | str]) -> None:
    """Send each value (a record dict as JSON, or raw text/bytes), keyed by its symbol."""
    encoded = []
    for v in values:
        if isinstance(v, dict):
            key = str(v.get("symbol", "")).encode() or None
            encoded.append((key, json.dumps(v).encode()))
        else:
            encoded.append((None, v.encode() if isinstance(v, str) else v))
    asyncio.run(_produce(bootstrap, topic, encoded))
