"""The main job as the README runs it: the shipped streams.yaml, profile local, pointed at our
simulator through TICKWIRE_BINANCE_URL / TICKWIRE_BINANCE_REST_URL, with faults switched on."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_run(sim, tmp_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "TICKWIRE_BINANCE_URL": sim.ws_url,
        "TICKWIRE_BINANCE_REST_URL": sim.rest_url,
        "TICKWIRE_SQLITE_PATH": str(tmp_path / "tickwire.db"),
        "TICKWIRE_DEAD_LETTER_PATH": str(tmp_path / "dead-letter.jsonl"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tickwire.framework.cli", "run", "--log-format", "json", "--metrics-port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(db: Path, sql: str) -> list:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:  # a reader beside the writer (WAL)
        return conn.execute(sql).fetchall()


def wait_for_trades(db: Path, proc: subprocess.Popen, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"fewer than {n} trades stored in time"
        try:
            if rows(db, "select count(*) from trades")[0][0] >= n:
                return
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.2)


def test_drops_shutdowns_and_invalid_events_lose_nothing_valid(simulator, tmp_path):
    sim = simulator(rate=400, ticker_interval=0.05, shutdown_every=1100,
                    malformed_every=25, malformed_kinds="invalid_event,truncated,binary")
    proc = start_run(sim, tmp_path)
    db = tmp_path / "tickwire.db"
    wait_for_trades(db, proc, 1500)
    assert sim.drop() >= 1  # every connection cut without a close frame, as a network failure does
    wait_for_trades(db, proc, 4000)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]

    stats = sim.stats()
    assert stats["shutdown_notices"] >= 1, "the serverShutdown fault must have happened"
    # every symbol's stored trade ids are one unbroken range: gaps after each drop were filled over REST
    for symbol, low, high, count in rows(db, "select symbol, min(trade_id), max(trade_id), count(*) from trades group by symbol"):
        assert high - low + 1 == count, f"{symbol}: {high - low + 1 - count} trade ids missing"
        history = {t["id"]: t for t in sim.trades(symbol, from_id=low, limit=count)}
        for trade_id, price, quantity in rows(db, f"select trade_id, price, quantity from trades where symbol = '{symbol}'"):
            assert (price, quantity) == (history[trade_id]["price"], history[trade_id]["qty"])  # exact strings
    for table in ("ticker_1h", "ticker_1d"):
        stored = rows(db, f"select symbol, count(*), count(distinct event_time) from {table} group by symbol")
        assert {s for s, *_ in stored} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
        assert all(n == distinct for _, n, distinct in stored), "one row per ticker event"
        assert all(Decimal(p) > 0 for (p,) in rows(db, f"select last_price from {table}"))

    letters = [json.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    by_plugin = {}
    for letter in letters:
        by_plugin.setdefault(letter["plugin"], []).append(letter)
    # invalid tickers fail schema validation; their reason names the field and the column
    assert by_plugin["validate"] and all(
        l["reason"] == "field 'c' (last_price): 'abc' does not match decimal pattern" and l["stream"] in ("ticker", "ticker_1h")
        for l in by_plugin["validate"])
    reasons = {l["reason"].split(": ", 1)[-1] for l in by_plugin["binance-source"]}
    assert {"trade without an integer trade id 't'"} <= reasons
    assert any("malformed JSON" in l["reason"] for l in by_plugin["binance-source"])
    assert any("binary frame" in l["reason"] for l in by_plugin["binance-source"])
    assert rows(db, "select count(*) from dead_letters") == [(0,)]  # the local profile keeps them in JSON lines


def test_a_hangup_stops_the_run_as_cleanly_as_sigterm(simulator, tmp_path):
    """The terminal closed or the SSH session dropped: SIGHUP flushes and commits like SIGTERM,
    where it used to kill the run with its buffers."""
    sim = simulator(rate=300)
    proc = start_run(sim, tmp_path)
    db = tmp_path / "tickwire.db"
    wait_for_trades(db, proc, 300)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGHUP: stopping" in err and '"summary"' in err, err[-3000:]
    for symbol, low, high, count in rows(db, "select symbol, min(trade_id), max(trade_id), count(*) from trades group by symbol"):
        assert high - low + 1 == count, f"{symbol}: {high - low + 1 - count} trade ids missing"
