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
  cold start    seconds from the first trade until the Spark path is less than 3 s behind; the
                warm-up starts then (the first batches carry JIT, code generation, state stores)

  batches       the trade query's micro-batches in the job's log: how many, and the mean time
                of their Spark part (read, parse, de-duplicate, render) and PostgreSQL part

Spark settings are compared side by side: ``--triggers``, ``--derived-triggers`` (the candle
query's) and ``--shuffle-partitions`` take comma-separated lists and every combination runs at
every rate (the job's defaults when omitted); ``--conf`` applies to all of them, and
``--variants`` adds a list of Spark setting sets to compare (``|`` between sets, ``;`` between
the KEY=VALUE of a set, an empty set = the job's defaults; ``--option=value`` is a job option
such as ``--dedup-window=5 seconds``).

    .venv/bin/python bench/spark_e2e.py                     # 1,000 and 10,000 trades/s, 30 s windows
    .venv/bin/python bench/spark_e2e.py --rates 1000 --seconds 20 --json results.json
    .venv/bin/python bench/spark_e2e.py --rates 1000 --triggers "1 second,0 seconds" --shuffle-partitions 1,4
    .venv/bin/python bench/spark_e2e.py --rates 1000 --variants "|spark.sql.streaming.metricsEnabled=false"
"""

from __future__ import annotations

import argparse
import ast
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
from tickwire.spark import DEFAULT_DERIVED_TRIGGER, DEFAULT_SHUFFLE_PARTITIONS, DEFAULT_TRIGGER  # noqa: E402

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


def newest_age(dsn: str) -> float | None:
    """Seconds since the newest event time stored (None when empty)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT extract(epoch FROM now() - max(event_time))::float FROM trades").fetchone()[0]


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM trades").fetchone()[0]


LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ INFO tickwire\.spark "
BATCH_LINE = re.compile(LOG_TIME + r"query trade batch \d+: (\d+) rows, \d+ dead letters: Spark ([\d.]+)s, "
                        r"PostgreSQL ([\d.]+)s", re.M)
PROGRESS_LINE = re.compile(LOG_TIME + r"query trade batch \d+: \d+ rows, \d+ ms (\{.*\})", re.M)


def batch_figures(spark_log: Path, t0: float, t1: float) -> dict:
    """The trade query's batches that wrote rows in [t0, t1] (the writer logs one line each), and
    the mean of Spark's own per-phase durations (the listener logs ``durationMs`` of every batch)."""
    text = spark_log.read_text(errors="replace")

    def inside(stamp: str) -> bool:  # the job logs local time
        return t0 <= time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) <= t1

    found = [(int(n), float(a), float(b)) for stamp, n, a, b in BATCH_LINE.findall(text) if inside(stamp)]
    phases: dict[str, list[int]] = {}
    for stamp, line in PROGRESS_LINE.findall(text):
        if not inside(stamp):
            continue
        for key, ms in ast.literal_eval(line).items():
            phases.setdefault(key, []).append(ms)
    mean_ms = {k: round(sum(v) / len(v)) for k, v in phases.items()}
    if not found:
        return {"batches": 0, "rows_per_batch": None, "spark_s": None, "postgres_s": None, "phases_ms": mean_ms}
    return {"batches": len(found), "rows_per_batch": sum(f[0] for f in found) / len(found),
            "spark_s": sum(f[1] for f in found) / len(found), "postgres_s": sum(f[2] for f in found) / len(found),
            "phases_ms": mean_ms}


def variant_args(settings: list[str]) -> list[str]:
    """``tickwire spark submit`` arguments: ``--option=value`` as is (a job option such as
    ``--dedup-window=5 seconds``), anything else as ``--conf KEY=VALUE``."""
    out = []
    for setting in settings:
        out += setting.split("=", 1) if setting.startswith("--") else ["--conf", setting]
    return out


def run_rate(args, work: Path, broker: KafkaBroker, cluster: PostgresCluster, rate: int,
             trigger: str, derived_trigger: str, partitions: int, variant: tuple[str, ...] = ()) -> dict:
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
         "--trigger", trigger, "--derived-trigger", derived_trigger, "--shuffle-partitions", str(partitions),
         "--metrics-port", "auto", "--ui-port", "-1",
         "--starting-offsets", "earliest", *variant_args([*args.conf, *variant])],
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
        # the first batches carry the cold start (JIT, code generation, state stores): measure
        # the steady state, from when the Spark path is less than 3 s behind, plus the warm-up
        ingest_started = time.monotonic()
        while (behind := newest_age(writer["spark"])) is None or behind > 3.0:
            if time.monotonic() - ingest_started > args.catch_up_timeout:
                raise SystemExit(f"the Spark path is still {behind} s behind after {args.catch_up_timeout} s:\n"
                                 f"{spark_log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        cold_start = time.monotonic() - ingest_started
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
            "rate": rate, "trigger": trigger, "derived_trigger": derived_trigger, "shuffle_partitions": partitions,
            "variant": ";".join(variant), "window_s": t1 - t0,
            "cold_start_s": cold_start,
            "batches": batch_figures(spark_log, t0, t1),
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


def _variant(result: dict) -> str:
    """The variant's settings after a space, for a row's label; nothing for the defaults."""
    return f" {result['variant']}" if result.get("variant") else ""


def report(results: list[dict]) -> str:
    lines = ["| rate (trades/s) | path | trigger (candles) | shuffle partitions | committed rows/s | E→commit p50 (s) | p99 (s) "
             "| max (s) | rows | drained after stop (s) | trade batches (mean rows, Spark s, PostgreSQL s); cold start |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        for path in ("direct", "spark"):
            f = r[path]
            setting, drained, batches = "| | |", "", ""
            if path == "spark":
                b = r["batches"]
                setting = f"| {r['trigger']} ({r['derived_trigger']}){_variant(r)} | {r['shuffle_partitions']} |"
                drained = fmt(r["spark_drained_s"], ".1f")
                batches = (f"{b['batches']} ({fmt(b['rows_per_batch'], '.0f')}, {fmt(b['spark_s'], '.2f')}, "
                           f"{fmt(b['postgres_s'], '.2f')}); live after {fmt(r['cold_start_s'], '.0f')} s")
            lines.append(f"| {r['rate']:,} | {path} {setting} {f['rows_per_s']:,.0f} | {fmt(f['p50_s'])} | "
                         f"{fmt(f['p99_s'])} | {fmt(f['max_s'])} | {r[path + '_total']:,} | {drained} | {batches} |")
    lines.append("")
    for r in results:  # where a trade batch's time goes, by Spark's own account
        phases = ", ".join(f"{k} {v}" for k, v in sorted(r["batches"]["phases_ms"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['rate']:,}/s, trigger {r['trigger']} (candles {r['derived_trigger']}), "
                     f"{r['shuffle_partitions']} partitions{_variant(r)} — trade batch phases, mean ms: {phases}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,10000", help="comma-separated trades/s")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    ap.add_argument("--catch-up-timeout", type=float, default=300.0,
                    help="how long the Spark path may take to come within 3 s of live after start")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--triggers", default=DEFAULT_TRIGGER, help="comma-separated processingTime intervals")
    ap.add_argument("--derived-triggers", default=DEFAULT_DERIVED_TRIGGER, help="the candle query's, comma-separated")
    ap.add_argument("--shuffle-partitions", default=str(DEFAULT_SHUFFLE_PARTITIONS), help="comma-separated")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting for the job")
    ap.add_argument("--variants", default="", metavar="K=V;K=V|K=V",
                    help="Spark setting sets compared side by side: | between sets, ; within one")
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
            settings = [(t.strip(), d.strip(), int(n), v) for t in args.triggers.split(",")
                        for d in args.derived_triggers.split(",") for n in args.shuffle_partitions.split(",")
                        for v in args.variants.split("|")]
            for trigger, derived_trigger, partitions, variant in settings:
                confs = tuple(c.strip() for c in variant.split(";") if c.strip())
                print(f"-- {rate:,} trades/s, trigger {trigger}, candles {derived_trigger}, "
                      f"{partitions} shuffle partitions {';'.join(confs)}", file=sys.stderr, flush=True)
                results.append(run_rate(args, work, broker, cluster, rate, trigger, derived_trigger, partitions, confs))
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
