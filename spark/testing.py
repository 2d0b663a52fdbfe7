"""Helpers for testing the Spark job against real Kafka and PostgreSQL (and for the benchmark).

* :func:`config_yaml` — a streams.yaml with only the trade stream and its candles;
* :func:`trade_record` / :func:`expected_candles` — normalized trade records and the candles a
  correct job must produce from them, computed in plain Python with exact decimals;
* :func:`produce` — trades into a Kafka topic with aiokafka.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal, localcontext
from pathlib import Path

from tickwire.framework.schemas import shipped_schemas


def config_yaml(topic: str, derived: str = "candles_1m: {kind: candles, from: trade, interval: 1 minute, "
                "watermark: 30 seconds, table: candles_1m}") -> str:
    """A streams.yaml with just the trade stream (on ``topic``, dead letters on
    ``<topic>.dead-letter``) and its candles."""
    return f"""\
version: 1
default_profile: compose
sources:
  binance: {{type: binance, url: "wss://127.0.0.1:9"}}
symbols: [BTCUSDT, ETHUSDT, BNBUSDT]
streams:
  trade:
    channel: "{{symbol}}@trade"
    schema: {Path(shipped_schemas() / "trade.schema.json")}
    table: trades
    topic: {{name: {topic}, partitions: 2}}
derived:
  {derived}
sinks:
  kafka: {{type: kafka, bootstrap_servers: "127.0.0.1:9", dead_letter_topic: {topic}.dead-letter}}
profiles:
  compose: {{sinks: [kafka]}}
"""


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


async def _produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    await _send(bootstrap, [(topic, k, v, None) for k, v in values])


async def _send(bootstrap: str, messages: list[tuple[str, bytes | None, bytes, list | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, headers=h) for topic, k, v, h in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce_messages(bootstrap: str, messages: list[tuple[str, bytes | None, bytes, list | None]]) -> None:
    """Send (topic, key, value, headers) messages as they are, e.g. the Kafka sink's dead letters
    (plugins/kafka/dead_letters.py, ``dead_letter_messages``)."""
    asyncio.run(_send(bootstrap, messages))


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
