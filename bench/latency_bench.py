"""Benchmark: event → commit latency and throughput per sink at fixed rates and at full speed,
adaptive batching side by side with the fixed linger it replaced, in the same run.

For each sink (SQLite, Kafka acks=all, PostgreSQL direct) and each rate (``--rates``; 0 = full
speed: the simulator sends as fast as the client reads), ``tickwire run`` runs once per mode,
the modes alternating so they see the same machine:

  adaptive   this code's defaults: ``engine.batching: adaptive``, Kafka producer ``linger_ms: 0``
  linger     the fixed wait it replaced: ``engine.batching: linger`` (``linger_ms: 200``), Kafka
             producer ``linger_ms: 5`` — the settings of the code before, on this code
  before     (``--before DIR``) the code before, as a package folder on PYTHONPATH (DIR/tickwire
             holding the old framework/, plugins/…): for CPU per message before/after

Everything runs here: the simulator (``tickwire simulate --rate R``, Binance ``E`` = the send
time), a real KRaft broker (devservices/kafka_broker.py; topics with
``message.timestamp.type=LogAppendTime``), a throwaway PostgreSQL (devservices/pg_cluster.py,
``track_commit_timestamp = on``). How each figure is measured, over ``--seconds`` after a
warm-up:

  E → commit   SQLite: a reader polls the file every 2 ms (WAL: it never blocks the writer) for
               the rows committed since its last look; a row's latency is the start of the read
               that first saw it − its ``event_time`` (an upper bound, ≤ 2 ms + one read high).
               Kafka: every record of the window read back, broker append time − ``event_time``.
               PostgreSQL: ``pg_xact_commit_timestamp(xmin) − event_time`` of every row whose
               ``event_time`` falls in the window (exact).
  msgs/s       rows (records) committed in the window / window length
  CPU µs/msg   psutil user+sys of the ``tickwire run`` process over the window / those rows

    .venv/bin/python bench/latency_bench.py                                  # all sinks, 1k/5k/20k/full
    .venv/bin/python bench/latency_bench.py --sinks kafka --rates 5000 --seconds 10
    .venv/bin/python bench/latency_bench.py --before /tmp/base-pkg --json results.json

Targets (issue 14): at 5,000 msgs/s p99 < 25 ms to the Kafka append and to the SQLite commit,
< 50 ms to the PostgreSQL commit; at full speed ≥ 80,000 msgs/s into Kafka.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tickwire.devservices.kafka_broker import KafkaBroker  # noqa: E402
from tickwire.devservices.pg_cluster import PostgresCluster  # noqa: E402
from tests.fixtures.simulator import start_simulator  # noqa: E402
from tickwire.framework.testing import write_streams_yaml  # noqa: E402
from kafka_bench import KafkaReader, latencies, quantile, total  # noqa: E402  (bench/ is on sys.path)

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
PASSWORDS = {"TICKWIRE_PG_WRITER_PASSWORD": "bench-writer", "TICKWIRE_PG_READER_PASSWORD": "bench-reader"}
ENGINE = {"batch_size": 1000, "linger_ms": 200, "queue_batches": 8}  # the defaults, written out
MODES = {
    "adaptive": ["engine.batching=adaptive", "sinks.kafka.linger_ms=0"],
    "linger": ["engine.batching=linger", "sinks.kafka.linger_ms=5"],
    "before": [],  # the old code knows neither option: its defaults are the linger mode's
}
POLL_S = 0.002
TARGETS = {("kafka", 5000): 25.0, ("sqlite", 5000): 25.0, ("postgres", 5000): 50.0}  # p99 ms


def iso_ms(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() * 1000.0


class SQLitePoller:
    """Polls the trades table for rows committed since the last look (per symbol, by trade id)."""

    def __init__(self, db: Path, stride: int):
        self.db, self.stride = db, stride
        self.last = {s: -1 for s in SYMBOLS}
        self.lat: list[float] = []
        self.rows = 0
        self.measuring = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                if not self.db.exists():
                    time.sleep(0.05)
                    continue
                conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5, isolation_level=None)
            try:
                self._poll(conn)
            except sqlite3.OperationalError:  # table not there yet
                time.sleep(0.05)
            time.sleep(POLL_S)
        if conn is not None:
            conn.close()

    def _poll(self, conn: sqlite3.Connection) -> None:
        started = time.time() * 1000.0
        conn.execute("BEGIN")  # one snapshot for the three symbols
        try:
            for symbol in SYMBOLS:
                rows = conn.execute("SELECT trade_id, event_time FROM trades WHERE symbol = ? AND trade_id > ? "
                                    "ORDER BY trade_id", (symbol, self.last[symbol])).fetchall()
                if not rows:
                    continue
                self.last[symbol] = rows[-1][0]
                if self.measuring:
                    self.rows += len(rows)
                    self.lat.extend(started - iso_ms(e) for i, e in rows if i % self.stride == 0)
        finally:
            conn.execute("COMMIT")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Bench:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.broker: KafkaBroker | None = None
        self.reader: KafkaReader | None = None
        self.cluster: PostgresCluster | None = None

    # -- services ----------------------------------------------------------------------------

    def start_services(self, sinks: list[str]) -> None:
        if "kafka" in sinks:
            self.broker = KafkaBroker(self.work / "kafka", die_with_parent=True)
            self.broker.start()
            self.reader = KafkaReader(self.broker.bootstrap)
        if "postgres" in sinks:
            import psycopg

            self.cluster = PostgresCluster.new(die_with_parent=True)
            self.cluster.create()
            self.cluster.start()
            with psycopg.connect(self.cluster.dsn, autocommit=True) as admin:
                admin.execute("ALTER SYSTEM SET track_commit_timestamp = on")
            self.cluster.stop()
            self.cluster.start()

    def stop_services(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None:
            self.cluster.destroy()

    # -- one run -----------------------------------------------------------------------------

    def config(self, sink: str, label: str) -> tuple[Path, dict]:
        """streams.yaml of one run, and what the measurement needs (topic, db path, dsn)."""
        where: dict = {}
        streams: dict = {"trade": {}}
        sinks: dict = {}
        if sink == "sqlite":
            where["db"] = self.work / label / "bench.db"
            sinks = {"sqlite": {"type": "sqlite", "path": str(where["db"])},
                     "dl": {"type": "jsonl", "path": str(self.work / label / "dead-letters.jsonl")}}
            profile = {"sinks": ["sqlite"], "dead_letter": "dl"}
        elif sink == "kafka":
            where["topic"] = f"latency-{label}.trades"
            streams = {"trade": {"topic": {"name": where["topic"], "partitions": 3,
                                           "config": {"message.timestamp.type": "LogAppendTime"}}}}
            sinks = {"kafka": {"type": "kafka", "bootstrap_servers": self.broker.bootstrap, "provision": True,
                               "dead_letter_topic": f"latency-{label}.dead-letter",
                               "spool": {"directory": str(self.work / label / "spool")}}}
            profile = {"sinks": ["kafka"], "dead_letter": "kafka"}
        else:
            import psycopg
            from psycopg import sql

            name = f"latency_{label}".replace("-", "_")
            with psycopg.connect(self.cluster.dsn, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            where["admin_dsn"] = self.cluster.dsn_for(name)
            where["dsn"] = self.cluster.dsn_for(name, user="tickwire_writer", password=PASSWORDS["TICKWIRE_PG_WRITER_PASSWORD"])
            sinks = {"postgres": {"type": "postgres", "dsn": where["dsn"]}}
            profile = {"sinks": ["postgres"], "dead_letter": "postgres"}
        path = self.work / label / "streams.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_streams_yaml(path, sources={"binance": {"type": "binance", "url": "ws://127.0.0.1:9",
                                                      "rest_url": "http://127.0.0.1:9", "gap_fill": False}},
                           symbols=SYMBOLS, streams=streams, sinks=sinks, profiles={"bench": profile}, engine=ENGINE)
        if sink == "postgres":
            subprocess.run([sys.executable, "-m", "tickwire.framework.cli", "-c", str(path), "db", "migrate",
                            "--dsn", where["admin_dsn"]], cwd=REPO, env={**os.environ, **PASSWORDS}, check=True,
                           capture_output=True, timeout=120)
        return path, where

    def run(self, sink: str, rate: int, mode: str) -> dict:
        a = self.args
        label = f"{sink}-{rate}-{mode}-{uuid.uuid4().hex[:4]}"
        config, where = self.config(sink, label)
        sim = start_simulator(self.work, rate=rate, symbols=",".join(SYMBOLS), seed=1, ticker_interval=3600)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if mode == "before":
            # its schemas folder is elsewhere: the config written here names this checkout's
            env.update(PYTHONPATH=str(a.before), TICKWIRE_ALLOW_OUTSIDE_PATHS="1")
        command = [sys.executable, "-m", "tickwire.framework.cli", "-c", str(config),
                   "--set", f"sources.binance.url={sim.ws_url}", "--set", f"sources.binance.rest_url={sim.rest_url}"]
        for item in MODES[mode]:
            if item.startswith("sinks.kafka.") and sink != "kafka":
                continue
            command += ["--set", item]
        command += ["run", "--profile", "bench", "--metrics-port", "0", "--no-status", "--log-format", "json",
                    "--progress-interval", "3600"]
        log_path = self.work / label / "run.log"
        proc = subprocess.Popen(command, cwd=self.work, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), env=env)
        stride = max(1, int((rate or 80_000) / 2000))
        poller = SQLitePoller(where["db"], stride) if sink == "sqlite" else None
        ps = psutil.Process(proc.pid)
        try:
            self.wait_first(sink, where, proc, log_path, poller)
            time.sleep(a.warmup)
            cpu0, o0, t0 = sum(ps.cpu_times()[:2]), self.offsets(sink, where), time.time()
            if poller:
                poller.measuring = True
            time.sleep(a.seconds)
            if poller:
                poller.measuring = False
            cpu1, o1, t1 = sum(ps.cpu_times()[:2]), self.offsets(sink, where), time.time()
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        finally:
            if poller:
                poller.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sim.stop()
        if sink == "sqlite":
            n, lat = poller.rows, sorted(poller.lat)
        elif sink == "kafka":
            n = total(o1) - total(o0)
            lat = latencies(self.reader, o0, o1, stride=stride)
        else:
            n, lat = self.postgres_window(where["admin_dsn"], t0, t1, stride)
        window = t1 - t0
        return {"sink": sink, "rate": rate, "mode": mode, "msgs_per_s": n / window, "cpu_us_per_msg": (cpu1 - cpu0) / max(n, 1) * 1e6,
                "p50_ms": quantile(lat, 0.5), "p99_ms": quantile(lat, 0.99), "max_ms": lat[-1] if lat else None,
                "sampled": len(lat), "exit": proc.returncode}

    def wait_first(self, sink: str, where: dict, proc, log_path: Path, poller) -> None:
        deadline = time.monotonic() + 90
        while True:
            if sink == "sqlite":
                if poller.last != {s: -1 for s in SYMBOLS}:
                    return
            elif self.offsets(sink, where):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nothing committed (exit {proc.poll()}):\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def offsets(self, sink: str, where: dict):
        if sink == "kafka":
            try:
                o = self.reader.end_offsets(where["topic"])
            except Exception:  # the topic is provisioned by the run itself
                return {}
            return o if total(o) else {}
        if sink == "postgres":
            import psycopg

            try:
                with psycopg.connect(where["admin_dsn"]) as conn:
                    return conn.execute("SELECT count(*) FROM trades").fetchone()[0]
            except psycopg.Error:
                return 0
        return None

    @staticmethod
    def postgres_window(dsn: str, t0: float, t1: float, stride: int) -> tuple[int, list[float]]:
        import psycopg

        with psycopg.connect(dsn) as conn:
            n = conn.execute("SELECT count(*) FROM trades WHERE pg_xact_commit_timestamp(xmin) "
                             "BETWEEN to_timestamp(%s) AND to_timestamp(%s)", (t0, t1)).fetchone()[0]
            rows = conn.execute("SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - event_time) * 1000 FROM trades "
                                "WHERE event_time BETWEEN to_timestamp(%s) AND to_timestamp(%s) AND trade_id %% %s = 0",
                                (t0, t1, stride)).fetchall()
        return n, sorted(float(r[0]) for r in rows)


# -- report ------------------------------------------------------------------------------------


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(results: list[dict], modes: list[str]) -> str:
    head = ["sink", "rate/s"] + [f"{m} {what}" for what in ("p50 ms", "p99 ms", "msgs/s", "µs CPU/msg") for m in modes] + ["target"]
    rows = []
    for sink in dict.fromkeys(r["sink"] for r in results):
        for rate in dict.fromkeys(r["rate"] for r in results if r["sink"] == sink):
            by_mode = {r["mode"]: r for r in results if r["sink"] == sink and r["rate"] == rate}
            cells = [sink, "full" if rate == 0 else f"{rate:,}"]
            for key, spec in (("p50_ms", ".1f"), ("p99_ms", ".1f"), ("msgs_per_s", ",.0f"), ("cpu_us_per_msg", ".1f")):
                cells += [fmt(by_mode.get(m, {}).get(key), spec) for m in modes]
            target = TARGETS.get((sink, rate))
            note = ""
            if target is not None and "adaptive" in by_mode:
                p99 = by_mode["adaptive"]["p99_ms"]
                note = f"p99 < {target:.0f} ms {'PASS' if p99 is not None and p99 < target else 'FAIL'}"
            if sink == "kafka" and rate == 0 and "adaptive" in by_mode:
                ok = by_mode["adaptive"]["msgs_per_s"] >= 80_000
                note = f">= 80,000 msgs/s {'PASS' if ok else 'FAIL'}"
            rows.append(cells + [note])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: " | ".join(str(c).rjust(w) if 1 < i < len(head) - 1 else str(c).ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(head), "-|-".join("-" * w for w in widths), *map(line, rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sinks", default="sqlite,kafka,postgres")
    ap.add_argument("--rates", default="1000,5000,20000,0", help="trades/s, comma-separated; 0 = full speed")
    ap.add_argument("--modes", default="adaptive,linger", help="adaptive, linger, before (with --before)")
    ap.add_argument("--before", type=Path, help="a folder holding the code before as package `tickwire` (adds mode `before`)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after the first commit")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the modes this often; the run with the lowest p99 is kept")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sinks = args.sinks.split(",")
    modes = args.modes.split(",")
    if args.before and "before" not in modes:
        modes.append("before")
    if "before" in modes and not args.before:
        raise SystemExit("mode `before` needs --before DIR")
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # this process reads back every record; keep its GC quiet
    work = Path(tempfile.mkdtemp(prefix="tickwire-latency-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; work files in {work}", flush=True)
    bench = Bench(args, work)
    results: list[dict] = []
    every: list[dict] = []
    try:
        bench.start_services(sinks)
        for sink in sinks:
            for rate in [int(r) for r in args.rates.split(",")]:
                tried: dict[str, list[dict]] = {m: [] for m in modes}
                for _ in range(args.repeat):
                    for mode in modes:
                        r = bench.run(sink, rate, mode)
                        tried[mode].append(r)
                        every.append(r)
                        print(f"  {sink:8} {'full' if rate == 0 else rate:>6} {mode:8} p50 {fmt(r['p50_ms'], '8.1f')} ms  "
                              f"p99 {fmt(r['p99_ms'], '8.1f')} ms  {r['msgs_per_s']:>9,.0f} msgs/s  "
                              f"{r['cpu_us_per_msg']:5.1f} µs CPU/msg  load {os.getloadavg()[0]:.1f}", flush=True)
                for mode, rs in tried.items():
                    results.append(min(rs, key=lambda r: (r["p99_ms"] is None, r["p99_ms"] or 0) if rate else -r["msgs_per_s"]))
    finally:
        bench.stop_services()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nevent -> commit latency and throughput ({args.seconds:.0f} s windows, best of {args.repeat}; "
          f"full speed: the fastest run)\n{report(results, modes)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "every": every}, indent=2, default=str))


if __name__ == "__main__":
    main()
