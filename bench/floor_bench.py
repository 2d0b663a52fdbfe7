"""Benchmark: the per-message floor — CPU µs per message of the pipeline itself, without the
network: pre-built Binance combined-stream frames from memory → the Binance source's own
FrameRouter → engine (validate + normalize, batching, queues, acknowledgements) → the SQLite sink
(a file) or the Kafka sink (a real KRaft broker, acks=all, idempotent, zstd, spool ready).

CPU is ``time.process_time()`` from the moment the sinks are open until every record is
acknowledged, over N frames (trades of three symbols, a trade per millisecond per symbol). Each
measurement runs in a fresh process; ``--before DIR`` (DIR/tickwire holding the code before:
framework/, plugins/…) adds the same measurement on that code, the two alternating, so the
before/after figures come from the same minutes of the same machine.

    .venv/bin/python bench/floor_bench.py                        # sqlite and kafka, 300,000 frames, 3 rounds
    .venv/bin/python bench/floor_bench.py --before /tmp/base-pkg --sinks kafka

Targets (issue 14): Kafka path ≤ 7.5 µs CPU per message, SQLite ≤ 10 µs, same guarantees (the
networked figures: bench/kafka_bench.py, bench/sqlite_bench.py, bench/latency_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def frames(n: int) -> list[str]:
    import orjson

    start = int(time.time() * 1000) - n  # recent: within max_clock_skew_seconds, like live trades
    out = []
    for i in range(n):
        sym = SYMBOLS[i % len(SYMBOLS)]
        t = start + i // len(SYMBOLS)
        data = {"e": "trade", "E": t + 1, "s": sym, "t": i // len(SYMBOLS), "p": f"{16500 + (i % 1000) / 100:.8f}",
                "q": f"{0.001 * (1 + i % 7):.8f}", "T": t, "m": bool(i % 2), "M": True}
        out.append(orjson.dumps({"stream": f"{sym.lower()}@trade", "data": data}).decode())
    return out


def measure(sink: str, n: int, bootstrap: str | None, work: Path) -> dict:
    """One run in this process (whichever tickwire it imports): µs CPU per message."""
    import asyncio
    import gc
    import logging
    from dataclasses import fields

    import tickwire.plugins.normalize
    import tickwire.plugins.validate
    from tickwire import plugins
    from tickwire.framework.components import SourceSpec
    from tickwire.framework.engine import Engine, EngineSettings
    from tickwire.framework.schemas import TopicSpec
    from tickwire.framework.testing import stream_spec
    from tickwire.plugins.binance.frames import FrameRouter, build_channels

    logging.disable(logging.WARNING)
    data = frames(n)
    transforms: dict = {}
    for module in (plugins.validate, plugins.normalize):
        module.tickwire_register_transforms(register=lambda spec: transforms.setdefault(spec.name, spec))
    stream = stream_spec("trade", symbols=SYMBOLS, sinks=[sink], source="mem")
    if sink == "kafka":
        from tickwire.plugins.kafka.sink import KAFKA_SINK

        topic = f"floor-{uuid.uuid4().hex[:6]}.trades"
        stream.topic = TopicSpec(name=topic, partitions=3)
        sinks = {"kafka": (KAFKA_SINK, {"bootstrap_servers": bootstrap, "provision": True, "dead_letter_topic": f"{topic}.dl",
                                        "spool": {"directory": str(work / f"spool-{topic}")}})}
        dead_letter = "kafka"
    else:
        import tickwire.plugins.jsonl_sink
        import tickwire.plugins.sqlite_sink

        specs: dict = {}
        for module in (plugins.sqlite_sink, plugins.jsonl_sink):
            module.tickwire_register_sinks(register=lambda spec: specs.setdefault(spec.name, spec))
        name = uuid.uuid4().hex[:6]
        sinks = {"sqlite": (specs["sqlite"], {"path": str(work / f"floor-{name}.db")}),
                 "dl": (specs["jsonl"], {"path": str(work / f"floor-{name}.jsonl")})}
        dead_letter = "dl"

    class MemorySource:
        def __init__(self, name, options, ctx):
            self.channels = build_channels(ctx.streams, name)

        async def run(self, emit):
            router = FrameRouter(self.channels, emit, 2**20, lambda ch: None)
            handle, now = router.handle_nowait, time.time_ns  # as Connection.run reads frames
            for i, raw in enumerate(data):
                pending = handle(raw, now(), None)
                if pending is not None:
                    await pending
                if not i & 63:
                    await asyncio.sleep(0)  # a socket read ends now and then: the sinks' turn

    settings = {"batch_size": 1000, "queue_batches": 8}
    if "batching" in {f.name for f in fields(EngineSettings)}:
        settings["batching"] = "adaptive"
    engine = Engine(streams=[stream], sources={"mem": (SourceSpec("mem", MemorySource, "frames from memory", plugin="bench"), {})},
                    sinks=sinks, transforms=transforms, dead_letter=dead_letter, settings=EngineSettings(**settings),
                    config_dir=work)
    gc.freeze()  # as `tickwire run` tunes the collector
    gc.set_threshold(50_000, 20, 100)
    marks: dict = {}

    async def run() -> None:
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        marks["cpu"], marks["wall"] = time.process_time(), time.perf_counter()
        await task

    asyncio.run(run())
    cpu, wall = time.process_time() - marks["cpu"], time.perf_counter() - marks["wall"]
    snap = engine.snapshot()
    written = snap["streams"]["trade"]["written"][sink]
    if written != n:
        raise SystemExit(f"{sink}: {written} of {n} written")
    return {"sink": sink, "us_per_msg": cpu / n * 1e6, "msgs_per_s": n / wall, "writes": snap["sinks"][sink]["commits"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sinks", default="sqlite,kafka")
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the codes this often; the lowest CPU of each is kept")
    ap.add_argument("--before", type=Path, help="a folder holding the code before as package `tickwire`")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: sink,bootstrap,work — one measurement, JSON out
    args = ap.parse_args()
    if args.one:
        sink, bootstrap, work = args.one.split(",")
        print(json.dumps(measure(sink, args.frames, bootstrap or None, Path(work))))
        return

    sys.path.insert(0, str(REPO))
    from tickwire.devservices.kafka_broker import KafkaBroker

    work = Path(tempfile.mkdtemp(prefix="tickwire-floor-bench-"))
    sinks = args.sinks.split(",")
    broker = KafkaBroker(work / "kafka", die_with_parent=True) if "kafka" in sinks else None
    codes = {"this code": None, **({"before": args.before} if args.before else {})}
    best: dict[tuple[str, str], dict] = {}
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    try:
        if broker:
            broker.start()
        for _ in range(args.rounds):
            for sink in sinks:
                for code, path in codes.items():
                    env = {**os.environ}
                    if path is not None:
                        env["PYTHONPATH"] = str(path)
                    out = subprocess.run([sys.executable, __file__, "--frames", str(args.frames), "--one",
                                          f"{sink},{broker.bootstrap if broker else ''},{work}"],
                                         capture_output=True, text=True, env=env, cwd=work, timeout=900)
                    if out.returncode != 0:
                        raise SystemExit(f"{sink} ({code}) failed:\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"  {sink:7} {code:10} {r['us_per_msg']:6.2f} µs CPU/msg  {r['msgs_per_s']:>9,.0f} msgs/s  "
                          f"{r['writes']} writes", flush=True)
                    key = (sink, code)
                    if key not in best or r["us_per_msg"] < best[key]["us_per_msg"]:
                        best[key] = r
    finally:
        if broker:
            broker.stop()
    print(f"\n{args.frames:,} frames from memory, lowest of {args.rounds} rounds (µs CPU per message)")
    for sink in sinks:
        cells = "  ".join(f"{code}: {best[(sink, code)]['us_per_msg']:.2f}" for code in codes)
        print(f"  {sink:7} {cells}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
