"""Baseline for bench/kafka_bench.py: the least a program can do to move Binance trades into Kafka.

websockets receive → orjson parse → keep trade events → one aiokafka record batch per partition
per 1,000 trades (key = symbol, Kafka's murmur2 partitioner, value = the trade re-serialized with
orjson), sent with the same producer settings as tickwire's kafka sink: acks=all, idempotence,
zstd, 512 KiB batches. Up to 32 sent batches wait for their acknowledgement while reading goes
on (tickwire's engine queue holds 32). No validation, normalization, headers, metrics, spool.

    python bench/baselines/kafka_baseline.py WS_URL BOOTSTRAP TOPIC [--compression none|deflate]

``--compression none`` (the default) connects without offering permessage-deflate; ``deflate``
offers it as websockets does by default (``compression="deflate"``), which is what a plain
websockets client gets against a server that accepts it.

Runs until SIGINT/SIGTERM, then waits for the outstanding acknowledgements and prints one JSON
line: trades sent, acknowledged, and the send→ack latency of each 1,000-trade batch (p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import defaultdict, deque

import orjson
import websockets
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

BATCH = 1000
IN_FLIGHT = 32


async def main(url: str, bootstrap: str, topic: str, compression: str = "none") -> dict:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, compression_type="zstd",
        linger_ms=5, max_batch_size=524288, max_request_size=1048576,
    )
    await producer.start()
    partitions = sorted(await producer.partitions_for(topic))
    partition_of: dict[bytes, int] = {}
    pending: deque[asyncio.Future] = deque()
    acks: list[float] = []
    counts = {"sent": 0, "acked": 0}

    async def send(rows: list[tuple[bytes, bytes]]) -> None:
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value in rows:
            p = partition_of.get(key)
            if p is None:
                p = partition_of[key] = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            by_partition[p].append((key, value))
        started = time.perf_counter()
        futures = []
        for p, group in by_partition.items():
            batch = producer.create_batch()
            for key, value in group:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=p))
        done = asyncio.gather(*futures)
        n = len(rows)

        def acknowledged(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                acks.append(time.perf_counter() - started)
                counts["acked"] += n

        done.add_done_callback(acknowledged)
        pending.append(done)
        counts["sent"] += n
        while len(pending) > IN_FLIGHT:
            await pending.popleft()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def read() -> None:
        rows: list[tuple[bytes, bytes]] = []
        loads, dumps = orjson.loads, orjson.dumps
        offer = "deflate" if compression == "deflate" else None
        async with websockets.connect(url, max_size=2**24, compression=offer) as ws:
            while not stop.is_set():
                data = loads(await ws.recv()).get("data")
                if not data or data.get("e") != "trade":
                    continue
                rows.append((data["s"].encode(), dumps(data)))
                if len(rows) >= BATCH:
                    await send(rows)
                    rows = []
        if rows:
            await send(rows)

    reader = asyncio.create_task(read())
    await asyncio.wait([reader, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not reader.done():
        await asyncio.sleep(0.05)  # let it leave recv() at the next frame
        reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await asyncio.gather(*pending, return_exceptions=True)
    await producer.stop()
    acks.sort()
    q = lambda p: acks[min(len(acks) - 1, int(p * len(acks)))] if acks else 0.0  # noqa: E731
    return {**counts, "batches": len(acks), "ack_p50_s": q(0.5), "ack_p99_s": q(0.99)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("--compression", choices=["none", "deflate"], default="none",
                    help="offer permessage-deflate (websockets' default) or not")
    a = ap.parse_args()
    print(orjson.dumps(asyncio.run(main(a.url, a.bootstrap, a.topic, a.compression))).decode(), flush=True)
