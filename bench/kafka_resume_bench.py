"""How long the kafka sink takes to find, at start-up, the last trade id per symbol it holds
(plugins/kafka/resume.py): a 3-partition topic with 1M trade records of 3 symbols, then the same
with a 4th symbol whose only records are the oldest ones (its partition is read to the start).

    .venv/bin/python bench/kafka_resume_bench.py [records]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tickwire.framework.schemas import StreamSpec, TopicSpec
from tickwire.devservices.kafka_broker import KafkaBroker
from tickwire.plugins.kafka.resume import read_topic_tail
from tests.fixtures.kafka import create_topics

SCHEMA = orjson.loads(Path("schemas/trade.schema.json").read_bytes())


def stream(topic: str, symbols: list[str]) -> StreamSpec:
    return StreamSpec("trade", "binance", "{symbol}@trade", symbols, Path("schemas/trade.schema.json"), SCHEMA,
                      "trades", TopicSpec(topic), [])


async def fill(bootstrap: str, topic: str, records: int, rare: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, compression_type="zstd")
    await producer.start()
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    try:
        pending = []
        for i in range(records):
            symbol = rare if i < 100 else symbols[i % 3]
            value = orjson.dumps({"trade_id": i, "symbol": symbol, "price": "1.00000000", "quantity": "0.1",
                                  "event_time": "2026-01-01T00:00:00.000Z", "ingested_at": "2026-01-01T00:00:00.000Z"})
            pending.append(await producer.send(topic, value, key=symbol.encode()))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def main(records: int) -> None:
    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="tickwire-resume-bench-")), die_with_parent=True)
    broker.start()
    try:
        await create_topics(broker.bootstrap, "bench.trades", partitions=3)
        t0 = time.perf_counter()
        await fill(broker.bootstrap, "bench.trades", records, "XRPUSDT")
        print(f"produced {records} records in {time.perf_counter() - t0:.1f}s")
        settings = {"bootstrap_servers": broker.bootstrap}
        for symbols in (["BTCUSDT", "ETHUSDT", "SOLUSDT"], ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]):
            t0 = time.perf_counter()
            ids, unfinished, *_ = await read_topic_tail(settings, stream("bench.trades", symbols), [0, 1, 2])
            took = time.perf_counter() - t0
            print(f"{len(symbols)} symbols: {took:.2f}s, last ids {({s: max(v) for s, v in ids.items()})}, unfinished {unfinished}")
    finally:
        broker.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
