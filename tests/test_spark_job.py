"""The Spark job against the real services: Kafka broker → local Spark (local[2]) → PostgreSQL.

The job runs as a subprocess, as a user runs it, so it can be killed (SIGKILL) and restarted from
its checkpoint. Every test checks the database against values computed here in plain Python:
each valid event exactly once with exact decimals, candles equal to an independent computation,
invalid values in the dead-letter table with their reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg
import pytest

from tickwire.framework.components import DeadLetter, TradeGap
from tickwire.framework.resume import gap_dead_letter, gap_reason_text
from tickwire.plugins.kafka.dead_letters import dead_letter_messages
from tickwire.spark import testing as tw
from tickwire.spark.jars import fetch_jars
from tests.fixtures.kafka import create_topics

pytestmark = [pytest.mark.spark, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_040_000  # 2023-11-14T22:34:00Z, a minute boundary (ms)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")


@pytest.fixture(scope="session")
def spark_jars() -> list[str]:
    return [str(j) for j in fetch_jars()]


class JobProcess:
    """`tickwire spark submit` (or `python -m tickwire.spark.job`) as a subprocess, its output in a file."""

    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        env = dict(os.environ, TICKWIRE_SPARK_LOG_LEVEL="WARN", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.ps = psutil.Process(self.proc.pid)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"metrics on (http://\S+/metrics)", self.log_path.read_text(errors="replace"))
            if found:
                return found.group(1)
            time.sleep(0.5)
        raise AssertionError(f"the job printed no metrics address:\n{self.tail()}")

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the job's /metrics (0 when absent), labels in any order."""
        text = urllib.request.urlopen(self.metrics_url(), timeout=5).read().decode()
        for line in text.splitlines():
            found = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
            if found and dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) == labels:
                return float(found.group(2))
        return 0.0

    def wait_metric(self, name: str, expected: float, timeout: float = 60, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while (value := self.metric(name, **labels)) != expected:
            assert time.monotonic() < deadline, f"{name}{labels} = {value}, not {expected}:\n{self.tail()}"
            assert self.alive(), self.tail()
            time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the job; its JVM (a child) exits when its stdin pipe closes."""
        children = self.ps.children(recursive=True)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        _, alive = psutil.wait_procs(children, timeout=30)
        for p in alive:  # never leave a JVM behind, even if the above failed
            p.kill()
        assert not alive, "the JVM outlived its killed driver"
        self.log.close()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        for p in self.ps.children(recursive=True) if self.alive() else []:
            p.kill()
        self.log.close()


TICKWIRE = Path(sys.executable).parent / "tickwire"
PASSWORDS = {"TICKWIRE_PG_WRITER_PASSWORD": "writer-pw", "TICKWIRE_PG_READER_PASSWORD": "reader-pw"}


@pytest.fixture
def spark_master_args() -> list[str]:
    """Where the job runs: local Spark with two threads (tests/test_spark_cluster.py overrides
    this with a standalone cluster)."""
    return ["--master", "local[2]"]


@pytest.fixture
def pipeline(kafka_broker, postgres_db, spark_jars, spark_master_args, tmp_path):
    """A fresh topic, config, database (migrated by `tickwire db migrate`) and checkpoint folder."""
    topic = f"spark-trades-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(kafka_broker.bootstrap, topic, partitions=2))
    asyncio.run(create_topics(kafka_broker.bootstrap, f"{topic}.dead-letter", partitions=1))
    config = tmp_path / "streams.yaml"
    config.write_text(tw.config_yaml(topic))
    migrate = subprocess.run(
        [str(TICKWIRE), "-c", str(config), "db", "migrate", "--dsn", postgres_db.dsn],
        capture_output=True, text=True, env={**os.environ, **PASSWORDS}, cwd=REPO,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    writer_dsn = postgres_db.dsn_for("tickwire_writer", PASSWORDS["TICKWIRE_PG_WRITER_PASSWORD"])
    jobs: list[JobProcess] = []

    class Pipeline:
        bootstrap = kafka_broker.bootstrap
        dsn = postgres_db.dsn
        cluster = postgres_db.cluster

        def __init__(self):
            self.topic = topic

        def start(self, ui_port: int = -1, extra: tuple[str, ...] = ()) -> JobProcess:
            args = [
                str(TICKWIRE), "-c", str(config), "spark", "submit",
                "--bootstrap", kafka_broker.bootstrap, "--dsn", writer_dsn,
                "--checkpoint-dir", str(tmp_path / "checkpoints"), *spark_master_args,
                "--trigger", "1 second", "--derived-trigger", "1 second", "--shuffle-partitions", "2",
                "--metrics-port", "auto", "--ui-port", str(ui_port),
                "--retry-seconds", "180", *extra,
            ]
            job = JobProcess(args, tmp_path / f"job-{len(jobs)}.log")
            jobs.append(job)
            return job

        def wait_committed_batches(self, query: str, count: int, job: JobProcess, timeout: float = 120) -> None:
            """Wait until ``query`` has committed ``count`` micro-batches (its checkpoint says so)."""
            commits = tmp_path / "checkpoints" / query / "commits"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if commits.exists() and len([f for f in commits.iterdir() if f.name.isdigit()]) >= count:
                    return
                assert job.alive(), f"the job exited ({job.proc.returncode}):\n{job.tail()}"
                time.sleep(0.5)
            raise AssertionError(f"{query} committed fewer than {count} batches in {timeout}s:\n{job.tail()}")

        def produce(self, values) -> None:
            tw.produce(kafka_broker.bootstrap, topic, values)

        def send(self, messages) -> None:
            tw.produce_messages(kafka_broker.bootstrap, messages)

        def query(self, statement: str, params=()) -> list[tuple]:
            with psycopg.connect(postgres_db.dsn) as conn:
                return conn.execute(statement, params).fetchall()

        def wait_for(self, statement: str, expected, job: JobProcess, timeout: float = 180) -> None:
            deadline = time.monotonic() + timeout
            last = None
            while time.monotonic() < deadline:
                try:
                    last = self.query(statement)
                except psycopg.OperationalError:
                    last = "database unreachable"
                if last == expected:
                    return
                assert job.alive(), f"the job exited ({job.proc.returncode}):\n{job.tail()}"
                time.sleep(0.5)
            raise AssertionError(f"{statement!r} gave {last!r}, not {expected!r}, after {timeout}s:\n{job.tail()}")

    yield Pipeline()
    for job in jobs:
        if not job.log.closed:
            job.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trades(first_id: int, count: int, start_ms: int, step_ms: int, symbols=SYMBOLS) -> list[dict]:
    """Trades with 8-decimal prices and quantities, times increasing by step_ms."""
    out = []
    for i in range(count):
        n = first_id + i
        out.append(tw.trade_record(
            symbols[n % len(symbols)], n,
            price=f"{30000 + (n * 7919) % 1000}.{(n * 104729) % 10**8:08d}",
            quantity=f"0.{(n * 15485863) % 10**8:08d}",
            trade_ms=start_ms + i * step_ms,
            buyer_is_maker=bool(n % 2),
        ))
    return out


def assert_trades_exact(p, expected: list[dict]) -> None:
    rows = p.query("SELECT symbol, trade_id, price, quantity, trade_time, buyer_is_maker FROM trades")
    got = {(r[0], r[1]): r for r in rows}
    want = {(t["symbol"], t["trade_id"]): t for t in expected}
    assert len(rows) == len(want) and set(got) == set(want)
    for key, t in want.items():
        row = got[key]
        assert row[2] == Decimal(t["price"]) and row[3] == Decimal(t["quantity"]), key
        assert row[4] == tw.parse_iso(t["trade_time"]) and row[5] == t["buyer_is_maker"], key


def assert_candles(p, trades_for_candles: list[dict]) -> None:
    expected = tw.expected_candles(trades_for_candles)
    rows = p.query(
        "SELECT symbol, window_start, window_end, open, high, low, close, volume, quote_volume, "
        "trade_count, vwap FROM candles_1m"
    )
    got = {(r[0], r[1]): r for r in rows}
    assert set(got) == set(expected)
    for key, c in expected.items():
        r = got[key]
        assert (r[2], r[3], r[4], r[5], r[6]) == (c["window_end"], c["open"], c["high"], c["low"], c["close"]), key
        assert (r[7], r[8], r[9]) == (c["volume"], c["quote_volume"], c["trade_count"]), key
        assert abs(r[10] - c["vwap"]) <= Decimal("1e-18"), key


def test_events_once_candles_and_dead_letters(pipeline):
    p = pipeline
    # three minutes of trades, every trade sent twice (a producer retry), plus invalid values
    batch = trades(1, 300, T0, 600)  # T0 .. T0 + 179.4 s
    invalid = [
        "{not json",
        json.dumps(dict(batch[0], trade_id=10_000, price="12,5")),
        json.dumps({k: v for k, v in dict(batch[1], trade_id=10_001).items() if k != "symbol"}),
        json.dumps(dict(batch[2], trade_id=10_002, trade_time="yesterday")),
        json.dumps(dict(batch[3], trade_id=10_003, symbol="BT\x00C")),
        b"\x00\x01 binary garbage",
    ]
    p.produce(batch + batch[:120] + invalid)
    # what ingest could not store, on the Kafka sink's dead-letter topic: a frame that failed
    # validation, and a range of trades lost for good (twice: a producer retry)
    gap = TradeGap("trade", "ETHUSDT", 501, 540, "not_served", "2026-11-29T10:00:00.000Z")
    rejected = DeadLetter("trade", "p: not a decimal", "validate", '{"e":"trade","p":"x"}', "2026-11-29T10:00:01.500Z")
    p.send(dead_letter_messages([rejected, gap_dead_letter(gap, "kafka:kafka")] * 2, p.topic + ".dead-letter"))
    ui_port = free_port()
    job = p.start(ui_port=ui_port)
    p.wait_for("SELECT count(*) FROM trades", [(300,)], job)
    p.wait_for("SELECT count(*) FROM dead_letters WHERE plugin = 'spark'", [(6,)], job)
    p.wait_for("SELECT count(*) FROM trade_gaps", [(1,)], job)
    # the lost range once, as ingest recorded it; every dead-letter record, with the plugin that made it
    assert p.query("SELECT stream, symbol, first_id, last_id, count, reason, detected_at FROM trade_gaps") == [
        ("trade", "ETHUSDT", 501, 540, 40, "not_served", datetime(2026, 11, 29, 10, 0, tzinfo=timezone.utc))]
    copied = p.query("SELECT stream, plugin, reason, payload, received_at FROM dead_letters WHERE plugin <> 'spark' ORDER BY id")
    assert [row[:3] for row in copied] == [("trade", "validate", "p: not a decimal"),
                                           ("trade", "kafka:kafka", gap_reason_text(gap))] * 2
    assert copied[0][3:] == ('{"e":"trade","p":"x"}', datetime(2026, 11, 29, 10, 0, 1, 500000, tzinfo=timezone.utc))
    p.wait_for("SELECT count(*) FROM candles_1m", [(len(tw.expected_candles(batch)),)], job)
    # Spark drops a row as late against the watermark its previous batch ran with (and runs no
    # batch without data, spark_conf): after the first batch, one more trade, so that the
    # watermark of the first batch is in force for the next
    p.wait_committed_batches("candles_1m", 1, job)
    newest = T0 + 299 * 600
    one_more = tw.trade_record("ETHUSDT", 20_002, "2000.00000001", "0.10000000", newest)
    p.produce([one_more])
    p.wait_for("SELECT count(*) FROM trades", [(301,)], job)
    p.wait_committed_batches("candles_1m", 2, job)
    # a late trade within the 30 s watermark corrects its candle; one past it is stored, not counted
    late = tw.trade_record("BTCUSDT", 20_000, "99999.00000001", "1.50000000", newest - 25_000)
    too_late = tw.trade_record("BTCUSDT", 20_001, "1.00000000", "1.00000000", T0 + 1_000)
    p.produce([late, too_late, late])
    p.wait_for("SELECT count(*) FROM trades", [(303,)], job)
    p.wait_for(
        "SELECT high FROM candles_1m WHERE symbol = 'BTCUSDT' AND window_start = to_timestamp(%d)" % ((newest - 25_000) // 60_000 * 60),
        [(Decimal("99999.00000001"),)], job,
    )
    assert_trades_exact(p, batch + [one_more, late, too_late])
    assert_candles(p, batch + [one_more, late])
    job.wait_metric("tickwire_spark_late_rows_dropped_total", 1, stream="trade", query="candles_1m")
    reasons = sorted(r[0] for r in p.query("SELECT reason FROM dead_letters WHERE stream = 'trade' AND plugin = 'spark'"))
    assert len(reasons) == 6
    assert sum(r.startswith("malformed JSON") for r in reasons) == 2, reasons
    assert any("symbol: contains a NUL" in r for r in reasons), reasons
    assert any("price: cannot parse" in r for r in reasons), reasons
    assert any("symbol: missing" in r for r in reasons), reasons
    assert any("trade_time: cannot parse" in r for r in reasons), reasons
    payloads = [r[0] for r in p.query("SELECT payload FROM dead_letters")]
    assert "{not json" in payloads
    # metrics: the listener's gauges and the end-to-end latency histogram
    text = urllib.request.urlopen(job.metrics_url(), timeout=5).read().decode()
    assert re.search(r'tickwire_e2e_latency_seconds_count\{query="trade"\} [1-9]', text), text
    # the copies (of the first 120 trades, of the late one) were dropped by the key and counted
    assert job.metric("tickwire_spark_duplicates_dropped_total", stream="trade", query="trade") == 121
    # one latency observation per row written: the 303 distinct trades, not the copies
    assert job.metric("tickwire_spark_event_to_commit_seconds_count", stream="trade", query="trade") == 303
    assert 'tickwire_spark_input_rows_per_second{query="trade"}' in text
    assert 'tickwire_spark_kafka_offset_lag{query="candles_1m"}' in text
    # Spark's own metrics through its PrometheusServlet (metrics.properties, spark.ui.prometheus.enabled)
    for path in ("/metrics/prometheus", "/metrics/executors/prometheus"):
        body = urllib.request.urlopen(f"http://127.0.0.1:{ui_port}{path}", timeout=10).read().decode()
        assert "spark_" in body or "metrics_" in body, (path, body[:500])
    job.stop()
    assert job.proc.returncode == 0, job.tail()


@pytest.mark.parametrize("dedup_window", ["30 seconds", "0 seconds"])
def test_active_active_copies_are_stored_once_and_counted_once_in_candles(pipeline, dedup_window):
    """Two ingest instances on the same symbols: Kafka holds every trade twice, each copy from its
    own producer with its own ``ingested_at``. Instance B lags A by one chunk, so most copies reach
    Spark in a later micro-batch than the first (the de-duplication state must remember the key),
    some in the same one; all within the candles' 30 s watermark and the 30 s dedup window. With a
    zero dedup window the trade query keeps no state: PostgreSQL's key drops the copies, and the
    writer counts them the same."""
    p = pipeline
    unique = trades(1, 400, T0, 200)  # 80 s of trade time, 40 per chunk = 8 s of trade time
    copies = [dict(t, ingested_at=tw.iso_ms(T0 + i * 200 + 57)) for i, t in enumerate(unique)]
    chunks = [(unique[i:i + 40], copies[i:i + 40]) for i in range(0, 400, 40)]
    job = p.start(extra=("--dedup-window", dedup_window))
    p.wait_for("SELECT count(*) FROM trades", [(0,)], job)
    p.wait_committed_batches("trade", 1, job)
    previous_copies: list[dict] = []
    for i, (first, copy) in enumerate(chunks):
        if i % 3 == 2:  # now and then B catches up: both copies of a chunk in one batch
            p.produce(previous_copies + first + copy)
            previous_copies = []
        else:
            p.produce(first)  # instance A
            p.produce(previous_copies)  # instance B, a chunk behind
            previous_copies = copy
        time.sleep(1.2)
    p.produce(previous_copies)
    p.wait_for("SELECT count(*) FROM trades", [(400,)], job)
    p.wait_for("SELECT count(*) FROM candles_1m", [(len(tw.expected_candles(unique)),)], job)
    job.wait_metric("tickwire_spark_duplicates_dropped_total", 400, stream="trade", query="trade")
    # the candle query's copies are dropped by its own key state (none was late)
    job.wait_metric("tickwire_spark_duplicates_dropped_total", 400, stream="trade", query="candles_1m")
    assert job.metric("tickwire_spark_late_rows_dropped_total", stream="trade", query="candles_1m") == 0
    time.sleep(3)  # a stray extra batch would land now
    assert_trades_exact(p, unique)
    assert_candles(p, unique)  # volume, quote volume, trade count from the 400 distinct trades
    total = p.query("SELECT sum(trade_count), sum(volume) FROM candles_1m")[0]
    assert total == (400, sum(Decimal(t["quantity"]) for t in unique))
    assert p.query("SELECT count(*) FROM dead_letters") == [(0,)]
    job.stop()
    assert job.proc.returncode == 0, job.tail()
    if dedup_window == "0 seconds":
        return
    # restarted with the defaults (no window): Spark cannot drop the checkpoint's de-duplication
    # state, so the trade query keeps a window, says so, and goes on exactly once
    more = trades(401, 40, T0 + 80_000, 200)
    p.produce(more + more[:10])
    job = p.start()
    p.wait_for("SELECT count(*) FROM trades", [(440,)], job)
    assert "query trade: its checkpoint holds de-duplication state" in job.log_path.read_text(), job.tail()
    assert_trades_exact(p, unique + more)
    job.stop()


def test_killed_job_restarts_from_checkpoint_without_duplicates(pipeline):
    p = pipeline
    first = trades(1, 200, T0, 500)
    p.produce(first + ["{bad 1"])
    job = p.start()
    p.wait_for("SELECT count(*) FROM trades", [(200,)], job)
    # keep producing while the job runs, kill it in the middle
    second = trades(201, 400, T0 + 100_000, 500)
    for i in range(0, 200, 50):
        p.produce(second[i:i + 50])
        time.sleep(0.7)
    job.kill()
    p.produce(second[200:] + ["{bad 2"] + second[:100])  # a replayed stretch too
    job = p.start()
    p.wait_for("SELECT count(*) FROM trades", [(600,)], job)
    p.wait_for("SELECT count(*) FROM dead_letters", [(2,)], job)
    expected_candle_rows = len(tw.expected_candles(first + second))
    p.wait_for("SELECT count(*) FROM candles_1m", [(expected_candle_rows,)], job)
    time.sleep(3)  # a replayed batch, if any, would land now
    assert_trades_exact(p, first + second)
    assert_candles(p, first + second)
    assert p.query("SELECT count(*) FROM dead_letters") == [(2,)]
    assert "its checkpoint" not in job.log_path.read_text(), job.tail()
    job.stop()


def test_postgres_outage_is_retried_without_loss(pipeline):
    p = pipeline
    first = trades(1, 150, T0, 400)
    p.produce(first)
    job = p.start()
    p.wait_for("SELECT count(*) FROM trades", [(150,)], job)
    p.cluster.stop()
    try:
        second = trades(151, 300, T0 + 60_000, 400)
        for i in range(0, 300, 60):
            p.produce(second[i:i + 60])
            time.sleep(5)
        time.sleep(5)  # ~30 s down in all
        assert job.alive(), job.tail()
    finally:
        p.cluster.start()
    p.wait_for("SELECT count(*) FROM trades", [(450,)], job)
    p.wait_for("SELECT count(*) FROM candles_1m", [(len(tw.expected_candles(first + second)),)], job)
    assert_trades_exact(p, first + second)
    assert_candles(p, first + second)
    assert "retrying" in job.log_path.read_text()
    job.stop()
