"""Active-active redundancy (docs/redundancy.md): two `tickwire run --profile postgres` ingest the
same symbols at once and are SIGKILLed alternately under load, the killed one started again at
once, so one is always subscribed. PostgreSQL must end with every trade once, no gap in the
trade ids, nothing in trade_gaps or dead_letters, and every ticker either instance received.
Two instances on one SQLite file (one machine) must leave the same: SQLite's locks take turns.

Which tickers "either instance received": the simulator renders each ticker once and sends it to
every subscriber of its stream (plugins/binance/sim_feed.py), as Binance does. A third
subscriber, the witness below, records them all; every ticker sent while an instance was
subscribed must be in PostgreSQL once, with the witness's values, and nothing else may be.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from websockets.sync.client import connect

import tickwire.plugins.postgres_sink as postgres_sink
import tickwire.plugins.sqlite_sink as sqlite_sink
from tickwire.framework.components import GAP_TOO_LARGE, TradeGap
from tickwire.framework.resume import unstored_parts
from tickwire.framework.testing import assert_clean_json_log, make_context, stream_spec
from tests.test_postgres_end_to_end import SYMBOLS, assert_every_trade_stored_once_and_exactly, start_pipeline
from tests.test_restart_resume import LocalRun, assert_every_trade_once, stop
from tests.test_resume_points import held_after, trades

TICKER_TABLES = {"ticker": "ticker_1d", "ticker_1h": "ticker_1h"}  # channel suffix → table (streams.yaml)
STREAMS_PER_INSTANCE = len(SYMBOLS) * 3  # trade, ticker, ticker_1h
CHAOS_SECONDS = 32


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TickerWitness:
    """A subscriber of every ticker stream, in a thread: ``tickers`` maps (table, symbol, E)
    to the payload, for every ticker the simulator sent."""

    def __init__(self, sim):
        channels = [f"{s.lower()}@{suffix}" for s in SYMBOLS for suffix in TICKER_TABLES]
        self.url = sim.url(*channels)
        self.tickers: dict[tuple[str, str, int], dict] = {}
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="ticker-witness", daemon=True)

    def __enter__(self) -> "TickerWitness":
        self._thread.start()
        assert self._connected.wait(10), "the witness could not connect to the simulator"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _listen(self) -> None:
        with connect(self.url) as ws:
            self._connected.set()
            while not self._stop.is_set():
                try:
                    frame = json.loads(ws.recv(timeout=0.2))
                except TimeoutError:
                    continue
                table = TICKER_TABLES[frame["stream"].split("@", 1)[1]]
                data = frame["data"]
                self.tickers[(table, data["s"], data["E"])] = data


class Instance:
    """One redundant `tickwire run --profile postgres`, named via TICKWIRE_INSTANCE; every start
    is a new process with its own log."""

    def __init__(self, name: str, sim, writer_dsn: str, tmp_path, monkeypatch):
        self.name, self.sim, self.writer_dsn, self.tmp_path, self.monkeypatch = name, sim, writer_dsn, tmp_path, monkeypatch
        self.runs: list[tuple[object, object]] = []  # (process, log path)

    @property
    def proc(self):
        return self.runs[-1][0]

    def start(self) -> None:
        """Start a new process and return once the simulator streams to it (all its streams)."""
        newest = max((c["id"] for c in self.sim.stats()["connections"]), default=0)
        log_path = self.tmp_path / f"{self.name}-{len(self.runs) + 1}.log"
        self.monkeypatch.setenv("TICKWIRE_INSTANCE", self.name)
        self.runs.append((start_pipeline(self.sim, self.writer_dsn, None, log_path), log_path))
        deadline = time.monotonic() + 40
        while not any(c["id"] > newest and c["open"] and c["streams"] == STREAMS_PER_INSTANCE and c["messages_sent"]
                      for c in self.sim.stats()["connections"]):
            assert self.proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> dict:
        """SIGTERM; the run must end cleanly. Returns its summary (JSON log event)."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(40) == 0, self.runs[-1][1].read_text()[-3000:]
        return next(line for line in self.log_lines(self.runs[-1][1]) if line.get("event") == "summary")

    def log_lines(self, log_path) -> list[dict]:
        text = log_path.read_text()
        if not text.endswith("\n"):  # SIGKILL may cut the last line short
            text = text.rsplit("\n", 1)[0]
        return assert_clean_json_log(text)

    def kill_leftovers(self) -> None:
        for proc, _ in self.runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def last_trade_ids(sim) -> dict[str, int]:
    return {s: v["last_trade_id"] for s, v in sim.stats()["symbols"].items() if s in SYMBOLS}


@pytest.mark.postgres
def test_two_instances_killed_alternately_leave_every_event_exactly_once(postgres_tables, simulator, tmp_path, monkeypatch):
    sim = simulator(rate=300, symbols=",".join(SYMBOLS))
    a, b = (Instance(name, sim, postgres_tables.writer_dsn, tmp_path, monkeypatch) for name in ("east", "west"))
    try:
        with TickerWitness(sim) as witness:
            a.start()
            covered_from_ms, first_live = now_ms(), last_trade_ids(sim)
            b.start()
            victim, survivor, kills = a, b, 0
            chaos_ends = time.monotonic() + CHAOS_SECONDS
            while time.monotonic() < chaos_ends:
                time.sleep(2)  # both run side by side: every event is written twice
                victim.kill()  # mid-batch, under load
                kills += 1
                victim.start()  # resumes from what PostgreSQL holds; the survivor never stopped
                victim, survivor = survivor, victim
            time.sleep(2)  # the last one started receives tickers too before the clean stops
            east_summary = a.stop()  # one stops cleanly while the other still runs
            covered_to_ms, last_live = now_ms(), last_trade_ids(sim)
            time.sleep(1.0)  # what was sent up to covered_to_ms has reached west
            west_summary = b.stop()
        assert kills >= 5

        with psycopg.connect(postgres_tables.dsn) as conn:
            stored = assert_every_trade_stored_once_and_exactly(conn, sim)  # one unbroken id range per symbol
            for symbol, low, high in conn.execute("SELECT symbol, min(trade_id), max(trade_id) FROM trades GROUP BY symbol"):
                assert low <= first_live[symbol] and high >= last_live[symbol], f"{symbol}: stored {low}..{high}"
            assert conn.execute("SELECT count(*) FROM trade_gaps").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
            tickers = {
                (table, symbol, int(event_time.timestamp() * 1000)): (last_price, volume, last_trade_id)
                for table in TICKER_TABLES.values()
                for symbol, event_time, last_price, volume, last_trade_id in conn.execute(
                    f"SELECT symbol, event_time, last_price, volume, last_trade_id FROM {table}")
            }
        assert stored > 300 * CHAOS_SECONDS * 0.8

        sent_while_covered = {key for key in witness.tickers if covered_from_ms < key[2] <= covered_to_ms}
        assert len(sent_while_covered) >= len(SYMBOLS) * len(TICKER_TABLES) * (CHAOS_SECONDS - 2)
        assert sorted(sent_while_covered - tickers.keys()) == [], "tickers sent while an instance was subscribed are missing"
        assert sorted(tickers.keys() - witness.tickers.keys()) == [], "stored tickers the simulator never sent"
        for key, (last_price, volume, last_trade_id) in tickers.items():
            sent = witness.tickers[key]
            assert (last_price, volume, last_trade_id) == (Decimal(sent["c"]), Decimal(sent["v"]), sent["L"]), key

        # The repeats of the other instance were written (ON CONFLICT DO NOTHING), neither
        # rejected, dead-lettered nor left behind.
        for summary in (east_summary, west_summary):
            for stream, counts in summary["streams"].items():
                assert counts["received"] > 0 and counts["written"] == {"postgres": counts["received"]}, (stream, counts)
                assert counts["invalid"] == counts["dead_letters"] == 0, (stream, counts)
        for instance in (a, b):
            for proc, log_path in instance.runs:
                lines = instance.log_lines(log_path)
                assert {line.get("instance") for line in lines} == {instance.name}, log_path
                # a restart fills what came in while it was down: the only warnings
                assert not [line for line in lines if line["level"] in ("warning", "error")
                            and not line["event"].startswith("gap detected:")], log_path
            resumed = [line["event"] for _, log_path in instance.runs[1:] for line in instance.log_lines(log_path)
                       if line["event"].startswith("resuming trade:")]
            assert len(resumed) == len(instance.runs) - 1 and all("(postgres)" in event for event in resumed), resumed
    finally:  # no `tickwire run` outlives a failed test
        a.kill_leftovers()
        b.kill_leftovers()


def wait_until_writing(run: LocalRun, proc) -> None:
    """Until this process (not only the other one) has committed trades to the shared file."""
    deadline = time.monotonic() + 40
    while True:
        assert proc.poll() is None, run.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "the instance did not start writing"
        if any(e.get("event") == "starting" for e in run.log()):
            written = run.metric("tickwire_messages_written_total{")
            if sum(v for k, v in written.items() if 'stream="trade"' in k) > 0:
                return
        time.sleep(0.2)


def test_two_instances_on_one_sqlite_file_store_every_trade_once(simulator, tmp_path):
    sim = simulator(rate=300)
    runs = []
    for name in ("east", "west"):
        (tmp_path / name).mkdir()
        runs.append(LocalRun(sim, tmp_path / name))  # its own logs and dead-letter file…
        runs[-1].db = tmp_path / "tickwire.db"  # …one database file
    east, west = runs
    try:
        east_proc = east.start()
        wait_until_writing(east, east_proc)
        west_proc = west.start()
        wait_until_writing(west, west_proc)
        time.sleep(2)  # both write every trade, taking turns at SQLite's write lock
        stop(east_proc, "sigkill")
        east_proc = east.start()
        wait_until_writing(east, east_proc)
        time.sleep(2)
        # without --instance / TICKWIRE_INSTANCE each names itself hostname-pid, in metrics and logs
        for run, proc in ((east, east_proc), (west, west_proc)):
            name = f"{socket.gethostname()}-{proc.pid}"
            assert run.metric("tickwire_instance_info") == {f'tickwire_instance_info{{name="{name}"}}': 1.0}
            assert {line.get("instance") for line in run.log()} == {name}
        stop(west_proc, "sigterm")
        stop(east_proc, "sigterm")
    finally:
        east.kill_leftovers()
        west.kill_leftovers()
    assert_every_trade_once(east, sim)
    assert east.rows("pragma integrity_check") == [("ok",)]
    assert east.rows("select count(*) from trade_gaps") == east.rows("select count(*) from dead_letters") == [(0,)]
    for run in runs:
        for log_path in run.tmp_path.glob("run-*.log"):
            assert "database is locked" not in log_path.read_text(), log_path


@pytest.mark.parametrize("name", ["two words", "-leading-dash", "x" * 101, "naïve"])
def test_an_instance_name_that_is_not_a_plain_name_is_refused(name):
    result = subprocess.run([sys.executable, "-m", "tickwire.framework.cli", "run", "--instance", name],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Invalid value for '--instance'" in result.stderr, result.stderr


def lost(first: int, last: int) -> TradeGap:
    return TradeGap("trade", "BTCUSDT", first, last, GAP_TOO_LARGE, "2026-01-01T00:00:00.000Z")


# What this instance could not fetch, while the other one stored 1..10, 12..20 and 25..30:
OTHER_INSTANCE_STORED = [trades([*range(1, 11), *range(12, 21), *range(25, 31)])]
COULD_NOT_FETCH = [lost(5, 8), lost(9, 14), lost(18, 26)]
REALLY_LOST = [("trade", "BTCUSDT", 11, 11, 1, "too_large"), ("trade", "BTCUSDT", 21, 24, 4, "too_large")]


def test_the_unstored_parts_of_a_lost_range():
    assert unstored_parts(lost(5, 8), range(1, 20)) == []
    assert unstored_parts(lost(5, 8), []) == [lost(5, 8)]
    assert unstored_parts(lost(5, 12), [1, 5, 7, 8, 11, 13]) == [lost(6, 6), lost(9, 10), lost(12, 12)]


def test_sqlite_records_as_lost_only_the_trades_no_instance_stored(tmp_path):
    stream = stream_spec("trade", symbols=["BTCUSDT"])
    sink = sqlite_sink.SQLiteSink("sqlite", {"path": "t.db"}, make_context([stream], tmp_path))
    _, after = asyncio.run(held_after(sink, stream, OTHER_INSTANCE_STORED, COULD_NOT_FETCH))
    assert after == {"BTCUSDT": 30}  # every hole is explained
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("select stream, symbol, first_id, last_id, count, reason from trade_gaps"
                            " order by first_id").fetchall() == REALLY_LOST


@pytest.mark.postgres
def test_postgres_records_as_lost_only_the_trades_no_instance_stored(postgres_tables):
    stream = stream_spec("trade", symbols=["BTCUSDT"])
    sink = postgres_sink.PostgresSink("postgres", {"dsn": postgres_tables.writer_dsn}, make_context([stream]))
    _, after = asyncio.run(held_after(sink, stream, OTHER_INSTANCE_STORED, COULD_NOT_FETCH))
    assert after == {"BTCUSDT": 30}
    with psycopg.connect(postgres_tables.dsn) as conn:
        assert conn.execute("SELECT stream, symbol, first_id, last_id, count, reason FROM trade_gaps"
                            " ORDER BY first_id").fetchall() == REALLY_LOST


class WarningsSeen:
    """A sink's logger that keeps its warnings."""

    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, event: str, **fields) -> None:
        self.warnings.append(f"{event} {fields}")

    def info(self, event: str, **fields) -> None:
        pass

    debug = info


@pytest.mark.postgres
def test_two_instances_writing_the_same_keys_at_once_do_not_deadlock(postgres_tables):
    # Two instances' batches hold the same keys, not always in the same order (a restarted one
    # fills older trades while both receive live ones). Each insert waits for the other's
    # uncommitted row of a key they share: taken in different orders, that is a deadlock,
    # which PostgreSQL breaks by aborting one batch (retried, but as a reconnect).
    stream = stream_spec("trade", symbols=["BTCUSDT", "ETHUSDT"])
    logs = [WarningsSeen(), WarningsSeen()]
    sinks = [postgres_sink.PostgresSink(f"pg-{i}", {"dsn": postgres_tables.writer_dsn, "retry_initial_seconds": 0.05},
                                        make_context([stream], log=log)) for i, log in enumerate(logs)]

    async def both_write() -> None:
        for sink in sinks:
            await sink.open()
        try:
            for round_ in range(20):
                ids = range(round_ * 2000, round_ * 2000 + 2000)
                batch = trades(ids, "BTCUSDT") + trades(ids, "ETHUSDT")
                await asyncio.gather(sinks[0].write(stream, batch), sinks[1].write(stream, batch[::-1]))
        finally:
            for sink in sinks:
                await sink.close()

    asyncio.run(both_write())
    assert logs[0].warnings + logs[1].warnings == []
    with psycopg.connect(postgres_tables.dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (symbol, trade_id)) FROM trades").fetchone() == (80_000, 80_000)
