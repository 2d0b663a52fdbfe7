"""Nothing lost across restarts (profile local, SQLite): `tickwire run` is stopped — SIGKILL,
SIGTERM or the end of --duration — and started again ~3 s later; the stores then hold every
trade of the simulator's own record between the first and the last one stored, once. A range the
simulator no longer serves over REST is recorded in trade_gaps, counted and logged instead."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


class LocalRun:
    """`tickwire run` (profile local) against a simulator, its SQLite file kept across runs."""

    def __init__(self, sim, tmp_path: Path):
        self.sim = sim
        self.db = tmp_path / "tickwire.db"
        self.tmp_path = tmp_path
        self.runs = 0
        self.processes: list[subprocess.Popen] = []

    def kill_leftovers(self) -> None:
        """After a failed assertion: no `tickwire run` outlives its test."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def start(self, *extra: str) -> subprocess.Popen:
        self.runs += 1
        self.log_path = self.tmp_path / f"run-{self.runs}.log"
        env = {
            **os.environ,
            "TICKWIRE_BINANCE_URL": self.sim.ws_url,
            "TICKWIRE_BINANCE_REST_URL": self.sim.rest_url,
            "TICKWIRE_SQLITE_PATH": str(self.db),
            "TICKWIRE_DEAD_LETTER_PATH": str(self.tmp_path / "dead-letter.jsonl"),
        }
        with open(self.log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tickwire.framework.cli", "run", "--log-format", "json", "--metrics-port", "auto", *extra],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.processes.append(proc)
        return proc

    def log(self) -> list[dict]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"event": line})
        return lines

    def rows(self, sql: str) -> list:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()

    def newest_ids(self) -> dict[str, int]:
        try:
            return dict(self.rows("select symbol, max(trade_id) from trades group by symbol"))
        except sqlite3.OperationalError:  # not created yet
            return {}

    def wait_until_every_symbol_passes(self, proc: subprocess.Popen, ids: dict[str, int], timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, self.log_path.read_text()[-3000:]
            newest = self.newest_ids()
            if all(newest.get(s, -1) > ids.get(s, -1) for s in SYMBOLS):
                return
            assert time.monotonic() < deadline, f"stored ids did not pass {ids} in time (have {newest})"
            time.sleep(0.2)

    def metric(self, name: str) -> dict[str, float]:
        url = next(e["metrics"] for e in self.log() if e.get("event") == "starting" and e.get("metrics"))
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)}


@pytest.fixture
def local_run(simulator, tmp_path):
    """``local_run(sim)``: a :class:`LocalRun`; its processes are killed after the test."""
    runs: list[LocalRun] = []

    def make(sim) -> LocalRun:
        runs.append(LocalRun(sim, tmp_path))
        return runs[-1]

    yield make
    for run in runs:
        run.kill_leftovers()


def stop(proc: subprocess.Popen, how: str) -> None:
    if how == "duration":
        proc.wait(timeout=40)
        assert proc.returncode == 0
        return
    proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    proc.wait(timeout=40)
    assert proc.returncode == (-signal.SIGKILL if how == "sigkill" else 0)


def assert_every_trade_once(run: LocalRun, sim) -> dict[str, tuple[int, int]]:
    """Per symbol: every id between the first and the last stored is there once, equal to the
    simulator's record (exact strings). Returns symbol → (first, last)."""
    spans = {}
    for symbol, low, high, count, distinct in run.rows(
            "select symbol, min(trade_id), max(trade_id), count(*), count(distinct trade_id) from trades group by symbol"):
        assert count == distinct, f"{symbol}: {count - distinct} duplicates"
        assert high - low + 1 == count, f"{symbol}: {high - low + 1 - count} trade ids missing between {low} and {high}"
        record = {t["id"]: (t["price"], t["qty"]) for t in sim.trades(symbol, from_id=low, limit=count)}
        stored = {tid: (p, q) for tid, p, q in run.rows(f"select trade_id, price, quantity from trades where symbol = '{symbol}'")}
        assert stored == record
        spans[symbol] = (low, high)
    assert set(spans) == set(SYMBOLS)
    return spans


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "duration"])
def test_restart_after_a_stop_resumes_with_zero_missing_and_zero_duplicates(simulator, local_run, how):
    sim = simulator(rate=300)
    run = local_run(sim)
    first = run.start(*(["--duration", "4"] if how == "duration" else []))
    run.wait_until_every_symbol_passes(first, {s: 0 for s in SYMBOLS})
    if how != "duration":
        time.sleep(2)
    stop(first, how)
    held = run.newest_ids()
    time.sleep(3)  # the downtime: ~100 trades per symbol and second happen meanwhile
    downtime_last = {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items()}
    assert all(downtime_last[s] - held[s] > 200 for s in SYMBOLS), "the downtime must hold trades to fill"

    second = run.start()
    run.wait_until_every_symbol_passes(second, downtime_last)
    time.sleep(1)
    stop(second, "sigterm")

    spans = assert_every_trade_once(run, sim)
    assert all(spans[s][1] > downtime_last[s] for s in SYMBOLS)
    resumed = [e["event"] for e in run.log() if str(e.get("event", "")).startswith("resuming trade:")]
    assert len(resumed) == 1
    for symbol in SYMBOLS:
        # the least complete store (the only one here) decides; after SIGKILL the file holds
        # what was committed, which is what the run read back
        assert f"{symbol} from id {held[symbol]} (sqlite)" in resumed[0]
    assert run.rows("select count(*) from trade_gaps") == [(0,)]


def test_a_range_rest_no_longer_serves_is_recorded_counted_and_logged(simulator, local_run):
    # The simulator keeps only the newest 300 trades of each symbol for REST; 3 s of downtime
    # at ~200 trades per symbol and second leave the oldest part of the hole unservable.
    sim = simulator(rate=600, history=300)
    run = local_run(sim)
    first = run.start()
    run.wait_until_every_symbol_passes(first, {s: 0 for s in SYMBOLS})
    stop(first, "sigkill")
    held = run.newest_ids()
    time.sleep(3)
    downtime_last = {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items()}

    second = run.start()
    run.wait_until_every_symbol_passes(second, downtime_last)
    deadline = time.monotonic() + 20
    while run.rows("select count(distinct symbol) from trade_gaps") != [(3,)]:
        assert time.monotonic() < deadline, "no trade_gaps rows"
        time.sleep(0.2)
    lost_metric = run.metric("tickwire_trade_gap_trades_lost_total{")
    stop(second, "sigterm")

    gaps = run.rows("select stream, symbol, first_id, last_id, count, reason, detected_at from trade_gaps order by symbol")
    for stream, symbol, first_id, last_id, count, reason, detected_at in gaps:
        assert (stream, reason) == ("trade", "not_served")
        assert first_id == held[symbol] + 1, "the loss starts right after what the store held"
        assert count == last_id - first_id + 1 > 0
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", detected_at)
        stored = {i for (i,) in run.rows(f"select trade_id from trades where symbol = '{symbol}'")}
        low, high = min(stored), max(stored)
        # every id from the first to the last stored is either stored or recorded as lost, never both
        assert stored.isdisjoint(range(first_id, last_id + 1))
        assert stored | set(range(first_id, last_id + 1)) == set(range(low, high + 1))
        key = f'tickwire_trade_gap_trades_lost_total{{reason="not_served",stream="trade",symbol="{symbol}"}}'
        assert lost_metric[key] == count
        warnings = [e for e in run.log() if e.get("level") == "warning" and e.get("reason") == "not_served"
                    and e.get("symbol") == symbol]
        assert len(warnings) == 1 and f"ids {first_id}..{last_id}" in warnings[0]["event"]
