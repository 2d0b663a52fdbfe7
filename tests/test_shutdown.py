"""Bounded shutdown with PostgreSQL unreachable: simulator → `tickwire run --profile postgres`,
a real subprocess, a real PostgreSQL stopped under it.

SIGTERM, SIGINT and the end of `--duration` stop the run within `engine.shutdown_timeout_s`
(default 15 s) even while every write is failing; what was not committed is reported with
counts per sink and stream in one log line, the run exits 3; a second SIGINT exits 130 at once
with the same kind of line. stderr stays JSON lines throughout, with no traceback.
"""

from __future__ import annotations

import json
import signal
import time

from tickwire.framework.engine import EngineSettings
from tickwire.framework.testing import assert_clean_json_log
from tests.test_postgres_end_to_end import start_pipeline, wait_for_trades

EXIT_ABANDONED = 3
EXIT_FORCED = 130
MARGIN_S = 3.0  # process start-up of the interpreter is not part of the bound; scheduling noise is


def wait_for_line(log_path, text: str, process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text(errors="replace"):
        assert process.poll() is None, f"tickwire run exited {process.returncode}:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)


def abandoned_line(lines: list[dict]) -> dict:
    found = [line for line in lines if "abandoned_total" in line]
    assert len(found) == 1, f"expected one line reporting the abandoned records, got {found}"
    return found[0]


def test_sigterm_with_postgresql_down_stops_within_the_default_bound(postgres_tables, simulator, tmp_path) -> None:
    cluster = postgres_tables.db.cluster
    sim = simulator(rate=200, symbols="BTCUSDT,ETHUSDT")
    log_path = tmp_path / "run.log"
    run = start_pipeline(sim, postgres_tables.writer_dsn, None, log_path)
    try:
        assert wait_for_trades(postgres_tables.dsn, at_least=200, timeout=30) >= 200
        cluster.stop(mode="immediate")
        wait_for_line(log_path, "postgres unavailable; retrying", run)
        time.sleep(2)  # writes keep failing, records pile up in the engine's queue
        sent = time.monotonic()
        run.send_signal(signal.SIGTERM)
        code = run.wait(EngineSettings().shutdown_timeout_s + 30)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        cluster.start()
    text = log_path.read_text()
    assert EngineSettings().shutdown_timeout_s == 15
    assert took <= 15 + MARGIN_S, f"took {took:.1f}s to stop:\n{text[-3000:]}"
    assert code == EXIT_ABANDONED, text[-3000:]
    lines = assert_clean_json_log(text)
    report = abandoned_line(lines)
    assert report["level"] == "error" and "shutdown_timeout_s (15s) reached" in report["event"]
    assert report["abandoned_total"] > 0
    assert set(report["abandoned"]) <= {"postgres/trade", "postgres/ticker", "postgres/ticker_1h", "postgres/candles_1m",
                                        "postgres/dead_letters"}
    assert report["abandoned"].get("postgres/trade", 0) > 0
    assert sum(report["abandoned"].values()) == report["abandoned_total"]
    assert f"{report['abandoned_total']:,} records were not committed" in report["event"]
    summary = [line for line in lines if line["event"] == "summary"]
    assert summary, "the run still ends with its summary"


def test_postgresql_down_at_start_the_run_waits_to_know_where_to_resume_and_duration_stops_it(
        postgres_tables, simulator, tmp_path) -> None:
    """With PostgreSQL down at start the run cannot know the last trade id the table holds, so it
    keeps asking (with backoff) before it subscribes: streaming first would only fill the bounded
    queues, while waiting lets the downtime be fetched over REST once the store answers. The
    wait is still stoppable: --duration ends it within the bound, with nothing to abandon."""
    cluster = postgres_tables.db.cluster
    sim = simulator(rate=200, symbols="BTCUSDT,ETHUSDT")
    log_path = tmp_path / "run.log"
    cluster.stop(mode="fast")
    try:
        started = time.monotonic()
        run = start_pipeline(sim, postgres_tables.writer_dsn, 4, log_path, "engine.shutdown_timeout_s=3")
        try:
            code = run.wait(60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        took = time.monotonic() - started
    finally:
        cluster.start()
    text = log_path.read_text()
    lines = assert_clean_json_log(text)
    assert "postgres unreachable at start" in text and "postgres unavailable; retrying" in text
    assert not any(line["event"] == "starting" for line in lines), "no source starts before the store answers"
    assert code == 0, text[-3000:]
    assert took <= 4 + 3 + MARGIN_S + 3, f"took {took:.1f}s"  # start-up, --duration, shutdown_timeout_s
    # the retries back off: far fewer attempts than seconds × 10
    retries = [line for line in lines if line["event"] == "postgres unavailable; retrying"]
    assert 2 <= len(retries) <= 20, len(retries)


def test_a_second_sigint_exits_at_once_and_says_what_was_abandoned(postgres_tables, simulator, tmp_path) -> None:
    cluster = postgres_tables.db.cluster
    sim = simulator(rate=200, symbols="BTCUSDT,ETHUSDT")
    log_path = tmp_path / "run.log"
    run = start_pipeline(sim, postgres_tables.writer_dsn, None, log_path)
    try:
        assert wait_for_trades(postgres_tables.dsn, at_least=100, timeout=30) >= 100
        cluster.stop(mode="immediate")
        wait_for_line(log_path, "postgres unavailable; retrying", run)
        run.send_signal(signal.SIGINT)
        wait_for_line(log_path, "SIGINT: stopping", run)
        time.sleep(0.5)
        assert run.poll() is None, "the first SIGINT waits for the writes (up to shutdown_timeout_s)"
        sent = time.monotonic()
        run.send_signal(signal.SIGINT)
        code = run.wait(10)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        cluster.start()
    text = log_path.read_text()
    assert code == EXIT_FORCED and took < 2, (code, took)
    lines = assert_clean_json_log(text)
    forced = [line for line in lines if line["event"].startswith("forced exit on second SIGINT")]
    assert len(forced) == 1 and forced[0]["abandoned_total"] > 0, forced
    assert forced[0]["abandoned"].get("postgres/trade", 0) > 0
    assert json.dumps(forced[0]["abandoned_total"]) in forced[0]["event"].replace(",", "")
