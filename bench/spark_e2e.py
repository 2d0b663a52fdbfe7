"""Benchmark: simulator → ``tickwire run`` → Kafka → Spark job → PostgreSQL, end to end, side by
side with the direct postgres sink in the same run (one ingest process with both sinks, so both
paths see the very same trades).

Everything runs here: a real KRaft broker and a throwaway PostgreSQL cluster (free ports), the
simulator at a fixed rate, ``tickwire spark submit`` (local[*]); two databases, both migrated by
``tickwire db migrate``: ``spark_path`` (written by the Spark job) and ``direct_path`` (written by
the postgres sink). PostgreSQL runs with ``track_commit_timestamp = on``, so every row's commit
time is known exactly: ``pg_xact_commit_timestamp(xmin)``.

How each figure is measured, over a window after a warm-up:
  rows/s        rows committed in the window (by commit time) / window length
  E → commit    per row: PostgreSQL commit time − Binance ``E`` (``event_time``), p50 / p99, for
                trades whose ``E`` falls in the window (the Spark figure includes Kafka and the
                micro-batch trigger)
  drained       after the simulator stops: seconds until the Spark path holds every trade the
                direct path holds

    .venv/bin/python bench/spark_e2e.py                     # 1,000 and 10,000 trades/s, 30 s windows
    .venv/bin/python bench/spark_e2e.py --rates 1000 --seconds 20 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tickwire.devservices.kafka_broker import KafkaBroker  # noqa: E402
from tickwire.devservices.pg_cluster import PostgresCluster  # noqa: E402
from tests.fixtures.simulator import start_simulator  # noqa: E402
from tickwire.framework.testing import write_streams_yaml  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
TICKWIRE = [sys.executable, "-m", "tickwire.framework.cli"]
PASSWORDS = {"TICKWIRE_PG_WRITER_PASSWORD": "bench-writer", "TICKWIRE_PG_READER_PASSWORD": "bench-reader"}

def sh(command: list[str], env: dict | None = None, timeout: float = 300) -> str:
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def wait_log(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if found:
            return found
        if proc.poll() is not None:
            raise SystemExit(f"{path.name}: exited {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise SystemExit(f"{path.name}: no {pattern!r} within {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # both tickwire run and the Spark job stop cleanly on it
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def figures(dsn: str, t0: float, t1: float) -> dict:
    with psycopg.connect(dsn) as conn:
        committed = conn.execute(
            "SELECT count(*) FROM trades WHERE pg_xact_commit_timestamp(xmin) "
            "BETWEEN to_timestamp(%s) AND to_timestamp(%s)", (t0, t1)).fetchone()[0]
        lat = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l), "
            "max(l), count(*) FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - event_time) AS l "
            "FROM trades WHERE event_time BETWEEN to_timestamp(%s) AND to_timestamp(%s)) s", (t0, t1)).fetchone()
    return {"rows_per_s": committed / (t1 - t0), "p50_s": lat[0], "p99_s": lat[1], "max_s": lat[2], "sampled": lat[3]}


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM trades").fetchone()[0]


def run_rate(args, work: Path, broker: KafkaBroker, cluster: PostgresCluster, rate: int) -> dict:
    label = f"r{rate}-{uuid.uuid4().hex[:4]}"
    topic = f"bench-spark-{label}.trades"
    dbs = {}
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        for path in ("spark", "direct"):
            name = f"{path}_{label}".replace("-", "_")
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            dbs[path] = name
    writer = {p: cluster.dsn_for(n, user="tickwire_writer", password=PASSWORDS["TICKWIRE_PG_WRITER_PASSWORD"])
              for p, n in dbs.items()}
    config = work / f"streams-{label}.yaml"
    write_streams_yaml(
        config,
        sources={"binance": {"type": "binance", "url": "ws://127.0.0.1:9", "rest_url": "http://127.0.0.1:9"}},
        symbols=SYMBOLS,
        streams={"trade": {"topic": {"name": topic, "partitions": 3}}},
        derived={"candles_1m": {"kind": "candles", "from": "trade", "interval": "1 minute", "watermark": "30 seconds",
                                "table": "candles_1m"}},
        sinks={"kafka": {"type": "kafka", "bootstrap_servers": broker.bootstrap, "dead_letter_topic": f"{topic}.dead-letter"},
               "postgres": {"type": "postgres", "dsn": writer["direct"]}},
        profiles={"bench": {"sinks": ["kafka", "postgres"], "dead_letter": "kafka"}},
        engine={"batch_size": 1000, "linger_ms": 100, "queue_batches": 32},
    )
    base = [*TICKWIRE, "-c", str(config)]
    for name in dbs.values():
        sh([*base, "db", "migrate", "--dsn", cluster.dsn_for(name)], env=PASSWORDS)
    sh([*base, "kafka", "provision"])

    spark_log = work / f"spark-{label}.log"
    spark = subprocess.Popen(
        [*base, "spark", "submit", "--bootstrap", broker.bootstrap, "--dsn", writer["spark"],
         "--checkpoint-dir", str(work / f"checkpoints-{label}"), "--master", args.master,
         "--trigger", args.trigger, "--shuffle-partitions", "2", "--metrics-port", "auto", "--ui-port", "-1",
         "--starting-offsets", "earliest", *[a for c in args.conf for a in ("--conf", c)]],
        cwd=REPO, stdout=open(spark_log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    procs = [spark]
    sim = None
    try:
        wait_log(spark_log, r"started \d+ queries", spark, timeout=180)
        sim = start_simulator(work, rate=rate, seed=1, symbols=",".join(SYMBOLS), ticker_interval=3600)
        ingest_log = work / f"ingest-{label}.log"
        ingest = subprocess.Popen(
            [*base, "--set", f"sources.binance.url={sim.ws_url}", "--set", f"sources.binance.rest_url={sim.rest_url}",
             "--set", f"sinks.kafka.spool.directory={work / label / 'spool'}",
             "run", "--metrics-port", "0", "--no-status", "--log-format", "json"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(ingest_log, "wb"))
        procs.append(ingest)
        deadline = time.monotonic() + 60
        while count(writer["direct"]) == 0:
            if ingest.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nothing reached PostgreSQL directly:\n{ingest_log.read_text()[-3000:]}")
            time.sleep(0.5)
        time.sleep(args.warmup)
        t0 = time.time()
        time.sleep(args.seconds)
        t1 = time.time()
        sim.stop()
        sim = None
        time.sleep(3)
        stop(ingest)
        direct_total = count(writer["direct"])
        drain_start = time.monotonic()
        while count(writer["spark"]) < direct_total and time.monotonic() - drain_start < args.drain_timeout:
            time.sleep(0.5)
        drained = time.monotonic() - drain_start
        spark_total = count(writer["spark"])
        result = {
            "rate": rate, "window_s": t1 - t0,
            "direct": figures(writer["direct"], t0, t1), "spark": figures(writer["spark"], t0, t1),
            "direct_total": direct_total, "spark_total": spark_total,
            "spark_drained_s": drained if spark_total >= direct_total else None,
        }
        return result
    finally:
        if sim is not None:
            sim.stop()
        for proc in reversed(procs):
            stop(proc)


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def report(results: list[dict]) -> str:
    lines = ["| rate (trades/s) | path | committed rows/s | E→commit p50 (s) | p99 (s) | max (s) | rows | drained after stop (s) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for path in ("direct", "spark"):
            f = r[path]
            drained = fmt(r["spark_drained_s"], ".1f") if path == "spark" else ""
            lines.append(f"| {r['rate']:,} | {path} | {f['rows_per_s']:,.0f} | {fmt(f['p50_s'])} | {fmt(f['p99_s'])} | "
                         f"{fmt(f['max_s'])} | {r[path + '_total']:,} | {drained} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,10000", help="comma-separated trades/s")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--trigger", default="1 second")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting for the job")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tickwire-spark-bench-"))
    broker = KafkaBroker(work / "kafka", die_with_parent=True)
    cluster = PostgresCluster.new()  # its own world-traversable folder: the server runs as another user
    results = []
    try:
        broker.start()
        cluster.create()
        cluster.start()
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        cluster.stop()
        cluster.start()
        for rate in [int(r) for r in args.rates.split(",")]:
            print(f"-- {rate:,} trades/s", file=sys.stderr, flush=True)
            results.append(run_rate(args, work, broker, cluster, rate))
            print(json.dumps(results[-1], default=str), file=sys.stderr, flush=True)
    finally:
        broker.stop()
        cluster.destroy()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
