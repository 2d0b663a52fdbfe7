"""Micro-benchmark of framework/spool.py: append and replay rates, in records/s.

The Kafka sink spools whole engine batches while the broker is away and replays them when it
is back, so both sides matter: ``append`` (frame + checksum + write + one fsync per batch) and
``read`` + ``ack`` (parse + hand out). Records are ~300-byte trade messages as the Kafka sink
encodes them; batches of 1,000 as the engine hands them over. CPU time is measured too (the
wall clock on a shared machine mostly measures the scheduler).

    .venv/bin/python bench/spool_bench.py                       # 200,000 records, best of 3
    .venv/bin/python bench/spool_bench.py --records 500000 --fsync never
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tickwire.framework.spool import Spool  # noqa: E402


def payloads(count: int) -> list[bytes]:
    value = (b'{"event_time":"2023-01-01T00:00:00.000Z","symbol":"BTCUSDT","trade_id":%d,'
             b'"price":"16500.10000000","quantity":"0.00100000","buyer_order_id":null,'
             b'"seller_order_id":null,"trade_time":"2023-01-01T00:00:00.000Z","is_buyer_maker":true,'
             b'"ingested_at":"2023-01-01T00:00:00.136Z"}')
    head = b"\x00\x0ebinance.trades\x00\x00\x00\x07\x04BTCUSDT"
    return [head + value % i for i in range(count)]


def measure(records: list[bytes], batch: int, fsync: str) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(directory, fsync=fsync, max_bytes=8 * 1024**3)
        spool.open()
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(records), batch):
            spool.append(records[start:start + batch])
        append_wall, append_cpu = time.perf_counter() - wall, time.process_time() - cpu
        spool.close()
        spool = Spool(directory, fsync=fsync, max_bytes=8 * 1024**3)
        wall, cpu = time.perf_counter(), time.process_time()
        spool.open()  # recovery validates every record: part of a replay after a restart
        replayed = 0
        while True:
            got, position = spool.read(5000)
            if not got:
                break
            replayed += len(got)
            spool.ack(position)
        replay_wall, replay_cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert replayed == len(records), (replayed, len(records))
        spool.close()
    return append_wall, append_cpu, replay_wall, replay_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--fsync", choices=["always", "batch", "never"], default="batch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    records = payloads(args.records)
    results = [measure(records, args.batch, args.fsync) for _ in range(args.repeat)]
    n = args.records
    aw, ac, rw, rc = (min(r[i] for r in results) for i in range(4))
    print(f"spool, {n:,} records of ~{sum(map(len, records)) // n} bytes, batches of {args.batch}, fsync {args.fsync}, "
          f"best of {args.repeat} (load average {os.getloadavg()[0]:.1f})")
    print(f"  append   {n / aw:12,.0f} records/s wall   {n / ac:12,.0f} records/s CPU")
    print(f"  replay   {n / rw:12,.0f} records/s wall   {n / rc:12,.0f} records/s CPU   (open + read + ack)")


if __name__ == "__main__":
    main()
