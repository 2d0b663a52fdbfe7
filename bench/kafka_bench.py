"""Benchmark: simulator at full speed → ``tickwire run --profile compose`` → Kafka (acks=all,
idempotent, zstd, validation + normalization on), side by side with a baseline in the same run
(bench/baselines/kafka_baseline.py: websockets + orjson + aiokafka record batches, no validation).

Everything runs here: a real KRaft broker (scripts/kafka_broker.py, free ports), the simulator
(``tickwire simulate --rate 0``: as fast as the client reads), fresh topics per run (3 partitions,
``message.timestamp.type=LogAppendTime`` so a record's timestamp is when the broker appended it).
All of it is stopped at the end, and the work directory removed (``--keep`` keeps it).

How each figure is measured, over a steady window after the first record in Kafka + a warm-up:
  msgs/s         trades that reached Kafka: growth of the topic's end offsets / window wall time
  CPU µs/msg     psutil user+sys of the ingest process over the window / those trades
  peak RSS       psutil, sampled every 0.25 s from start to stop
  E → Kafka      every record of the window read back: broker append time (LogAppendTime) − the
                 payload's Binance ``E`` (tickwire: ``event_time``); includes all queueing
  send → ack     tickwire: its ``tickwire_batch_commit_seconds`` histogram (engine batch handed to
                 the sink → acknowledged); baseline: its own timing of each 1,000-trade batch

``--deflate`` (the default; ``--no-deflate`` skips it): per ``--repeat``, one more
baseline/tickwire pair against ``tickwire simulate --compression deflate``: the baseline offers
permessage-deflate as websockets does by default, tickwire runs with
``sources.binance.compression=deflate``. Printed as "baseline, deflate" and "tickwire, deflate"
with the same figures, the CPU per message deflate adds over the runs without it, the bytes per
message on the wire (simulator stats) and the simulator's CPU: compressing costs it ~3 µs a
message, so near 100 % it, not the client, sets the msgs/s. A run whose connection did not
negotiate what it asked for stops the benchmark. The pair adds about a minute.

``--outage``: the simulator at a steady 5,000 trades/s, the broker SIGKILLed for 60 s and started
again; tickwire must lose nothing (every trade the simulator sent, by ``/_sim/stats``, is in the
topic, ids contiguous per symbol) with bounded memory (peak RSS, peak spool size).

    .venv/bin/python bench/kafka_bench.py                   # 20 s windows
    .venv/bin/python bench/kafka_bench.py --seconds 20 --outage --json results.json
    .venv/bin/python bench/kafka_bench.py --no-deflate      # without the permessage-deflate pair

Targets (issue 4): ≥ 50,000 msgs/s in one process, ≥ 0.75 × baseline, peak RSS < 250 MB; outage:
zero loss, memory bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import orjson
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tickwire.devservices.kafka_broker import KafkaBroker  # noqa: E402
from tests.fixtures.simulator import start_simulator  # noqa: E402
from tickwire.framework.testing import write_streams_yaml  # noqa: E402
from prometheus_text import histogram_quantile  # noqa: E402  (bench/ is on sys.path when run as a script)

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
PYTHON = sys.executable
BASELINE = REPO / "bench" / "baselines" / "kafka_baseline.py"

# -- Kafka side --------------------------------------------------------------------------------


class KafkaReader:
    """End offsets and read-back, from one consumer living on a background event loop."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.consumer = self._call(self._start())

    def _call(self, coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self):
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    max_partition_fetch_bytes=8 * 2**20, fetch_max_bytes=32 * 2**20)
        await consumer.start()
        return consumer

    def end_offsets(self, topic: str) -> dict:
        async def go():
            from aiokafka import TopicPartition

            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic) or set()
            return await self.consumer.end_offsets([TopicPartition(topic, p) for p in sorted(parts)])

        return self._call(go())

    def read(self, start: dict, end: dict, on_record) -> int:
        """Feed every record between two end_offsets() answers to ``on_record(record)``."""

        async def go():
            wanted = {tp: end[tp] for tp in end if end[tp] > start.get(tp, 0)}
            if not wanted:
                return 0
            self.consumer.assign(list(wanted))
            for tp in wanted:
                self.consumer.seek(tp, start.get(tp, 0))
            n = 0
            while wanted:
                batches = await self.consumer.getmany(*wanted, timeout_ms=1000, max_records=20000)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset < wanted.get(tp, -1):
                            on_record(record)
                            n += 1
                    if records and records[-1].offset + 1 >= wanted.get(tp, 0):
                        wanted.pop(tp, None)
            self.consumer.unsubscribe()
            return n

        return self._call(go(), timeout=600)

    def close(self) -> None:
        try:
            self._call(self.consumer.stop(), timeout=20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def total(offsets: dict) -> int:
    return sum(offsets.values())


def _event_ms(value: bytes) -> int:
    d = orjson.loads(value)
    if "E" in d:  # the baseline's raw Binance payload
        return d["E"]
    return int(datetime.fromisoformat(d["event_time"]).timestamp() * 1000)  # tickwire's record


def latencies(reader: KafkaReader, start: dict, end: dict, stride: int = 1) -> list[float]:
    """Broker append time − Binance E (ms) of the records between two offset snapshots."""
    out: list[float] = []
    seen = [0]

    def on_record(record) -> None:
        seen[0] += 1
        if seen[0] % stride == 0:
            out.append(record.timestamp - _event_ms(record.value))

    reader.read(start, end, on_record)
    out.sort()
    return out


def quantile(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def gauge(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


# -- processes ----------------------------------------------------------------------------------


class Sampler:
    """Peak RSS of a process, sampled in a thread until stopped; optional extra probe."""

    def __init__(self, pid: int, probe=None, interval: float = 0.25):
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.probe = probe
        self.probe_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
                if self.probe is not None:
                    self.probe_peak = max(self.probe_peak, self.probe())
            except (psutil.Error, OSError):
                pass
            self._stop.wait(0.25)

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Bench:
    def __init__(self, args, work: Path, broker: KafkaBroker, reader: KafkaReader):
        self.args = args
        self.work = work
        self.broker = broker
        self.reader = reader
        self.dead_letter = f"bench-{uuid.uuid4().hex[:6]}.dead-letter"
        self.config = work / "streams.yaml"
        write_streams_yaml(
            self.config,
            sources={"binance": {"type": "binance", "url": "ws://127.0.0.1:9", "rest_url": "http://127.0.0.1:9"}},
            symbols=SYMBOLS,
            streams={"trade": {"topic": {"name": "bench.trades", "partitions": 3,
                                         "config": {"message.timestamp.type": "LogAppendTime"}}}},
            sinks={"kafka": {"type": "kafka", "bootstrap_servers": broker.bootstrap, "dead_letter_topic": self.dead_letter}},
            profiles={"compose": {"sinks": ["kafka"], "dead_letter": "kafka"}},
            engine={"batch_size": 1000, "linger_ms": 200, "queue_batches": 8},
        )

    def cli(self, *args: str, sets: list[str] = ()) -> list[str]:
        command = [PYTHON, "-m", "tickwire.framework.cli", "-c", str(self.config)]
        for item in sets:
            command += ["--set", item]
        return [*command, *args]

    def provision(self, topic: str) -> None:
        result = subprocess.run(self.cli("kafka", "provision", sets=[f"streams.trade.topic.name={topic}"]),
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise SystemExit(f"tickwire kafka provision failed:\n{result.stdout}{result.stderr}")

    def new_topic(self, label: str) -> str:
        topic = f"bench-{label}-{uuid.uuid4().hex[:6]}.trades"
        self.provision(topic)
        return topic

    def wait_first(self, topic: str, proc: subprocess.Popen, log) -> None:
        deadline = time.monotonic() + 60
        while total(self.reader.end_offsets(topic)) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nothing reached {topic} (exit {proc.poll()}):\n{log()[-3000:]}")
            time.sleep(0.2)

    def window(self, topic: str, sampler: Sampler, sim) -> dict:
        sim_proc = psutil.Process(sim.proc.pid)
        sim_cpu = lambda: sum(sim_proc.cpu_times()[:2])  # noqa: E731
        time.sleep(self.args.warmup)
        o0, c0, s0, t0 = self.reader.end_offsets(topic), sampler.cpu(), sim_cpu(), time.monotonic()
        time.sleep(self.args.seconds)
        o1, c1, s1, t1 = self.reader.end_offsets(topic), sampler.cpu(), sim_cpu(), time.monotonic()
        n = total(o1) - total(o0)
        return {"messages": n, "window_s": t1 - t0, "msgs_per_s": n / (t1 - t0),
                "cpu_us_per_msg": (c1 - c0) / max(n, 1) * 1e6, "cpu_percent": (c1 - c0) / (t1 - t0) * 100,
                "sim_cpu_percent": (s1 - s0) / (t1 - t0) * 100, "_offsets": (o0, o1)}

    def start_tickwire(self, topic: str, sim, extra_sets: list[str] = (), name: str = "tickwire"):
        sets = [f"sources.binance.url={sim.ws_url}", f"sources.binance.rest_url={sim.rest_url}",
                f"streams.trade.topic.name={topic}", f"sinks.kafka.spool.directory={self.work / name / 'spool'}",
                *extra_sets]
        command = self.cli("run", "--profile", "compose", "--metrics-port", "auto", "--log-format", "json",
                           "--no-status", "--progress-interval", "3600", sets=sets)
        if self.args.profile_tickwire and name == "tickwire":
            if self.args.profiler == "pyinstrument":  # sampling: fair to code with many small calls
                command[1:1] = ["-m", "pyinstrument", "-i", "0.002",
                                "-r", "text", "--show-all", "-o", str(self.args.profile_tickwire)]
            else:
                command[1:1] = ["-m", "cProfile", "-o", str(self.args.profile_tickwire)]
        log_path = self.work / f"{name}.log"
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                                     "PYTHONUNBUFFERED": "1"})
        log = lambda: log_path.read_text(errors="replace")  # noqa: E731
        deadline = time.monotonic() + 60
        # console: "  metrics: http://…"; JSON logs: "metrics":"http://…" in the `starting` event
        while not (m := re.search(r'metrics"?:\s*"?(http://[0-9.]+:\d+/metrics)', log())):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise SystemExit(f"tickwire run did not start (exit {proc.poll()}):\n{log()[-3000:]}")
            time.sleep(0.1)
        return proc, m.group(1), log

    @staticmethod
    def scrape(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    @staticmethod
    def finish(proc: subprocess.Popen, log, sig=signal.SIGINT, timeout: float = 60) -> float:
        started = time.monotonic()
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SystemExit(f"did not stop within {timeout:.0f}s of {sig.name}:\n{log()[-3000:]}")
        if code != 0:
            raise SystemExit(f"exited {code} after {sig.name}:\n{log()[-3000:]}")
        return time.monotonic() - started

    # -- the runs ----------------------------------------------------------------------------

    def start_full_speed_simulator(self, compression: str):
        return start_simulator(self.work, rate=0, symbols=",".join(SYMBOLS), seed=1, ticker_interval=3600,
                               compression=compression)

    @staticmethod
    def wire(sim, compression: str, who: str) -> dict:
        """What went over the WebSocket: the extension every connection negotiated (it must be
        the one asked for) and the bytes per message the simulator wrote."""
        stats = sim.stats()
        expected = "permessage-deflate" if compression == "deflate" else None
        got = {c["compression"] for c in stats["connections"]}
        if got != {expected}:
            raise SystemExit(f"{who}: connections negotiated {got}, expected {expected!r}")
        return {"compression": compression,
                "wire_bytes_per_msg": stats["bytes_sent"] / max(1, stats["messages_sent"])}

    def run(self, kind: str, compression: str = "none") -> dict:
        """One full-speed run of ``kind`` ("tickwire" or "baseline") on its own simulator and
        topic: the measured window, a clean stop, then the window's records read back."""
        label = kind if compression == "none" else f"{kind}-{compression}"
        topic = self.new_topic(label)
        sim = self.start_full_speed_simulator(compression)
        start = self._start_tickwire_run if kind == "tickwire" else self._start_baseline_run
        try:
            proc, log, stop = start(topic, sim, compression, label)
            sampler = Sampler(proc.pid)
            try:
                self.wait_first(topic, proc, log)
                r = self.window(topic, sampler, sim)
                r.update(stop())
            finally:
                sampler.stop()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            r.update(self.wire(sim, compression, label))
        finally:
            sim.stop()
        lat = latencies(self.reader, *r.pop("_offsets"), stride=self.args.latency_stride)
        return {**r, "topic": topic, "peak_rss_mb": sampler.peak_rss / 2**20,
                "e2k_p50_ms": quantile(lat, 0.5), "e2k_p99_ms": quantile(lat, 0.99)}

    def _start_tickwire_run(self, topic: str, sim, compression: str, label: str):
        sets = [] if compression == "none" else [f"sources.binance.compression={compression}"]
        proc, metrics_url, log = self.start_tickwire(topic, sim, sets, name=label)

        def stop() -> dict:  # the batch send -> ack histogram, scraped before the stop
            text = self.scrape(metrics_url)
            return {"stop_s": self.finish(proc, log),
                    "ack_p50_ms": (histogram_quantile(text, "tickwire_batch_commit_seconds", 0.5) or 0) * 1000,
                    "ack_p99_ms": (histogram_quantile(text, "tickwire_batch_commit_seconds", 0.99) or 0) * 1000}

        return proc, log, stop

    def _start_baseline_run(self, topic: str, sim, compression: str, label: str):
        log_path = self.work / f"{label}.log"
        log = lambda: log_path.read_text(errors="replace")  # noqa: E731
        url = sim.url(*(f"{s.lower()}@trade" for s in SYMBOLS))
        proc = subprocess.Popen([PYTHON, str(BASELINE), url, self.broker.bootstrap, topic, "--compression", compression],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=open(log_path, "wb"), text=True)

        def stop() -> dict:  # the baseline prints its own send -> ack timing when interrupted
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
            if proc.returncode != 0 or not out.strip():
                raise SystemExit(f"baseline exited {proc.returncode}:\n{log()[-3000:]}")
            own = json.loads(out.strip().splitlines()[-1])
            return {"ack_p50_ms": own["ack_p50_s"] * 1000, "ack_p99_ms": own["ack_p99_s"] * 1000}

        return proc, log, stop

    def run_outage(self) -> dict:
        """Steady rate; broker SIGKILLed for ``--outage-seconds``; then everything must be there."""
        a = self.args
        topic = self.new_topic("outage")
        # enough history that the simulator's REST could fill any gap the run might see
        sim = start_simulator(self.work, rate=a.outage_rate, symbols=",".join(SYMBOLS), seed=1,
                              ticker_interval=3600, history=int(a.outage_rate * (a.outage_seconds + 120)))
        spool_dir = self.work / "outage" / "spool"
        spool_size = lambda: sum(f.stat().st_size for f in spool_dir.rglob("*") if f.is_file())  # noqa: E731
        result: dict = {"rate": a.outage_rate, "outage_s": a.outage_seconds}
        try:
            proc, metrics_url, log = self.start_tickwire(topic, sim, name="outage")
            sampler = Sampler(proc.pid, probe=spool_size)
            try:
                self.wait_first(topic, proc, log)
                time.sleep(2)
                o0 = self.reader.end_offsets(topic)
                time.sleep(8)
                o1 = self.reader.end_offsets(topic)
                result["rss_before_mb"] = sampler.proc.memory_info().rss / 2**20
                self.broker.kill()
                down_at = time.monotonic()
                peak_spool_metric = 0.0
                while time.monotonic() - down_at < a.outage_seconds:
                    peak_spool_metric = max(peak_spool_metric, gauge(self.scrape(metrics_url), "tickwire_spool_bytes"))
                    time.sleep(0.5)
                result["spooled_records_at_restart"] = gauge(self.scrape(metrics_url), "tickwire_spool_records")
                result["rss_during_outage_peak_mb"] = sampler.peak_rss / 2**20
                self.broker.start()
                back_at = time.monotonic()
                self.reader.close()
                self.reader = KafkaReader(self.broker.bootstrap)
                while True:
                    text = self.scrape(metrics_url)
                    peak_spool_metric = max(peak_spool_metric, gauge(text, "tickwire_spool_bytes"))
                    if gauge(text, "tickwire_spool_records") == 0 and time.monotonic() - back_at > 2:
                        break
                    if time.monotonic() - back_at > 300:
                        raise SystemExit(f"the spool did not drain within 300 s:\n{log()[-3000:]}")
                    time.sleep(0.5)
                result["drain_s"] = time.monotonic() - back_at
                time.sleep(5)
                self.finish(proc, log)
                result["send_errors"] = gauge(text, "tickwire_send_errors_total")
                result["spool_dropped"] = gauge(text, "tickwire_spool_dropped_total")
            finally:
                sampler.stop()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            stats = sim.stats()
        finally:
            sim.stop()
        result["peak_rss_mb"] = sampler.peak_rss / 2**20
        result["peak_spool_mb"] = max(peak_spool_metric, sampler.probe_peak) / 2**20
        lat = latencies(self.reader, o0, o1)
        result["steady_e2k_p50_ms"], result["steady_e2k_p99_ms"] = quantile(lat, 0.5), quantile(lat, 0.99)
        # every trade the simulator sent to tickwire's connections, by id, must be in the topic
        sent = sum(c["messages_sent"] for c in stats["connections"])
        ids: dict[str, set[int]] = {s: set() for s in SYMBOLS}
        copies = [0]

        def on_record(record) -> None:
            copies[0] += 1
            d = orjson.loads(record.value)
            ids[d["symbol"]].add(d["trade_id"])

        end = self.reader.end_offsets(topic)
        self.reader.read({tp: 0 for tp in end}, end, on_record)
        missing = {s: (max(v) - min(v) + 1 - len(v)) if v else 0 for s, v in ids.items()}
        distinct = sum(len(v) for v in ids.values())
        result.update(sim_sent=sent, kafka_records=copies[0], kafka_distinct=distinct,
                      missing_inside_range=sum(missing.values()), not_in_kafka=max(0, sent - distinct),
                      connections=len(stats["connections"]))
        return result


# -- report ------------------------------------------------------------------------------------


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def ratio_of(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else ""


def table(head: tuple, rows: list[tuple]) -> str:
    """A metric column, figures right-aligned, and a free-text last column ("target" or "note")."""
    free = head[-1] in ("target", "note")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: " | ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c) if free and i == len(head) - 1 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(head), "-|-".join("-" * w for w in widths), *map(line, rows)])


def metric_rows(tw: dict, base: dict, targets: dict[str, str]) -> list[tuple]:
    """The figures of a tickwire run beside a baseline run, with their ratio and target."""
    rows = [
        ("messages/s into Kafka", fmt(tw["msgs_per_s"], ",.0f"), fmt(base["msgs_per_s"], ",.0f"),
         ratio_of(tw["msgs_per_s"], base["msgs_per_s"])),
        ("CPU µs per message", fmt(tw["cpu_us_per_msg"], ".1f"), fmt(base["cpu_us_per_msg"], ".1f"),
         ratio_of(tw["cpu_us_per_msg"], base["cpu_us_per_msg"])),
        ("CPU % (1 core = 100)", fmt(tw["cpu_percent"], ".0f"), fmt(base["cpu_percent"], ".0f"), ""),
        ("peak RSS MB", fmt(tw["peak_rss_mb"], ".0f"), fmt(base["peak_rss_mb"], ".0f"),
         ratio_of(tw["peak_rss_mb"], base["peak_rss_mb"])),
        ("E -> Kafka append p50 ms", fmt(tw["e2k_p50_ms"], ".0f"), fmt(base["e2k_p50_ms"], ".0f"), ""),
        ("E -> Kafka append p99 ms", fmt(tw["e2k_p99_ms"], ".0f"), fmt(base["e2k_p99_ms"], ".0f"), ""),
        ("batch send -> ack p50 ms", fmt(tw["ack_p50_ms"], ".1f"), fmt(base["ack_p50_ms"], ".1f"), ""),
        ("batch send -> ack p99 ms", fmt(tw["ack_p99_ms"], ".1f"), fmt(base["ack_p99_ms"], ".1f"), ""),
    ]
    return [(*row, targets.get(row[0], "")) for row in rows]


def comparison(tw: dict, base: dict) -> tuple[str, dict]:
    ratio = tw["msgs_per_s"] / base["msgs_per_s"] if base["msgs_per_s"] else 0.0
    rows = metric_rows(tw, base, {"messages/s into Kafka": ">= 50,000; >= 0.75x", "peak RSS MB": "< 250"})
    text = table(("metric", "tickwire", "baseline", "ratio", "target"), rows)
    verdict = {">= 50,000 msgs/s": tw["msgs_per_s"] >= 50_000, ">= 0.75 x baseline": ratio >= 0.75,
               "peak RSS < 250 MB": tw["peak_rss_mb"] < 250}
    return text, verdict


def deflate_comparison(tw_deflate: dict, base_deflate: dict, tw: dict, base: dict) -> tuple[str, dict]:
    """The deflate pair side by side, and what deflate adds over the runs without it."""
    added = {"tickwire": tw_deflate["cpu_us_per_msg"] - tw["cpu_us_per_msg"],
             "baseline": base_deflate["cpu_us_per_msg"] - base["cpu_us_per_msg"]}
    rows = metric_rows(tw_deflate, base_deflate, {}) + [
        ("CPU µs/msg added by deflate", fmt(added["tickwire"], "+.1f"), fmt(added["baseline"], "+.1f"), "", ""),
        ("simulator CPU %", fmt(tw_deflate["sim_cpu_percent"], ".0f"), fmt(base_deflate["sim_cpu_percent"], ".0f"), "",
         f"without: {tw['sim_cpu_percent']:.0f} / {base['sim_cpu_percent']:.0f}; ~100 = the simulator sets the pace"),
        ("msgs/s vs without deflate", ratio_of(tw_deflate["msgs_per_s"], tw["msgs_per_s"]),
         ratio_of(base_deflate["msgs_per_s"], base["msgs_per_s"]), "", ""),
        ("wire bytes per message", fmt(tw_deflate["wire_bytes_per_msg"], ".0f"), fmt(base_deflate["wire_bytes_per_msg"], ".0f"),
         "", f"without: {tw['wire_bytes_per_msg']:.0f}"),
    ]
    text = table(("metric", "tickwire, deflate", "baseline, deflate", "ratio", "note"), rows)
    return text, {"added_cpu_us_per_msg": added}


def outage_report(o: dict) -> tuple[str, dict]:
    lines = [
        f"broker SIGKILLed for {o['outage_s']:.0f} s at {o['rate']:,.0f} trades/s",
        f"  trades sent by the simulator (/_sim/stats) : {o['sim_sent']:,}  over {o['connections']} connection(s)",
        f"  distinct trades in Kafka                   : {o['kafka_distinct']:,}  ({o['kafka_records']:,} records, "
        f"{o['kafka_records'] - o['kafka_distinct']:,} redelivered)",
        f"  sent but not in Kafka / ids missing inside : {o['not_in_kafka']:,} / {o['missing_inside_range']:,}",
        f"  records in the spool when the broker came back: {o['spooled_records_at_restart']:,.0f}; "
        f"drained in {o['drain_s']:.1f} s; spool dropped {o['spool_dropped']:,.0f}",
        f"  peak spool size MB                         : {o['peak_spool_mb']:.1f}",
        f"  RSS MB before / peak during outage / peak  : {o['rss_before_mb']:.0f} / "
        f"{o['rss_during_outage_peak_mb']:.0f} / {o['peak_rss_mb']:.0f}",
        f"  E -> Kafka append p50 / p99 ms, steady, before the outage: "
        f"{fmt(o['steady_e2k_p50_ms'], '.0f')} / {fmt(o['steady_e2k_p99_ms'], '.0f')}",
    ]
    verdict = {"outage: zero loss": o["not_in_kafka"] == 0 and o["missing_inside_range"] == 0,
               "outage: peak RSS < 250 MB": o["peak_rss_mb"] < 250}
    return "\n".join(lines), verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after the first record in Kafka")
    ap.add_argument("--repeat", type=int, default=1, help="alternate baseline/tickwire this often; best of each")
    ap.add_argument("--deflate", action=argparse.BooleanOptionalAction, default=True,
                    help="also run a baseline/tickwire pair with permessage-deflate, per --repeat (~1 min each)")
    ap.add_argument("--outage", action="store_true", help="also run the broker-outage scenario")
    ap.add_argument("--outage-seconds", type=float, default=60.0)
    ap.add_argument("--outage-rate", type=float, default=5000.0)
    ap.add_argument("--only-outage", action="store_true", help="skip the throughput comparison")
    ap.add_argument("--latency-stride", type=int, default=1, help="read back every record, but time every n-th")
    ap.add_argument("--profile-tickwire", type=Path, help="run the full-speed tickwire under a profiler, report to this file")
    ap.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile",
                    help="cprofile: pstats file; pyinstrument: text call tree (pyinstrument must be importable, "
                         "e.g. pip install --target DIR pyinstrument and PYTHONPATH=DIR)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, broker data)")
    args = ap.parse_args()
    if args.profile_tickwire:
        args.profile_tickwire = args.profile_tickwire.resolve()

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the read-back consumer while the broker is down
    # This process reads every record back while both contenders run on the same 2 cores; with
    # CPython's default GC thresholds the collector took a third of its CPU, stolen from them.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    work = Path(tempfile.mkdtemp(prefix="tickwire-kafka-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; work files in {work}", flush=True)
    if not args.deflate and not args.only_outage:
        print("permessage-deflate: not measured (--no-deflate)", flush=True)
    broker = KafkaBroker(work / "kafka", die_with_parent=True)
    results: dict = {}
    verdict: dict = {}
    reader = None
    try:
        broker.start()
        reader = KafkaReader(broker.bootstrap)
        bench = Bench(args, work, broker, reader)
        bench.provision("bench.trades")  # the dead-letter topic, once
        if not args.only_outage:
            runs = [("baseline", "none"), ("tickwire", "none")]
            if args.deflate:
                runs += [("baseline", "deflate"), ("tickwire", "deflate")]
            label = lambda kind, compression: kind if compression == "none" else f"{kind}, {compression}"  # noqa: E731
            every: dict[str, list[dict]] = {label(*run): [] for run in runs}
            for _ in range(args.repeat):
                for kind, compression in runs:
                    r = bench.run(kind, compression)
                    every[label(kind, compression)].append(r)
                    print(f"  {label(kind, compression):17} {r['msgs_per_s']:>9,.0f} msgs/s  {r['cpu_us_per_msg']:6.1f} µs CPU/msg  "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            best = {name: max(rs, key=lambda r: r["msgs_per_s"]) for name, rs in every.items()}
            base, tw = best["baseline"], best["tickwire"]
            text, v = comparison(tw, base)
            verdict.update(v)
            results.update(tickwire=tw, baseline=base, every=every)
            print(f"\nfull speed, {args.seconds:.0f} s window (best of {args.repeat}); "
                  f"tickwire SIGINT to exit {tw['stop_s']:.2f} s\n{text}", flush=True)
            if args.deflate:
                tw_d, base_d = best["tickwire, deflate"], best["baseline, deflate"]
                text, extra = deflate_comparison(tw_d, base_d, tw, base)
                results["deflate"] = {"tickwire": tw_d, "baseline": base_d, **extra}
                print(f"\npermessage-deflate (simulator --compression deflate), full speed, {args.seconds:.0f} s "
                      f"window (best of {args.repeat})\n{text}", flush=True)
        if args.outage or args.only_outage:
            o = bench.run_outage()
            text, v = outage_report(o)
            verdict.update(v)
            results["outage"] = o
            print(f"\n{text}")
        reader = bench.reader
    finally:
        if reader is not None:
            reader.close()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    for what, ok in verdict.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "verdict": verdict}, indent=2, default=str))


if __name__ == "__main__":
    main()
