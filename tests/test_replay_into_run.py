"""The documented replay workflow, end to end: `tickwire record` captures the simulator, `tickwire
simulate --replay` serves the capture to `tickwire run` (profile local, SQLite), which connects to
``/stream`` and SUBSCRIBEs afterwards, and SQLite ends with every captured event, value for value —
as fast as possible (``--speed 0``) and at the recorded pace (``--speed 1``)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tickwire.framework.timestamps import iso_ms
from tests.fixtures.simulator import REPOSITORY

SYMBOLS = ("btcusdt", "ethusdt", "solusdt")  # streams.yaml's symbols
STREAMS = [f"{s}@{kind}" for s in SYMBOLS for kind in ("trade", "ticker", "ticker_1h")]
TABLES = {"trade": "trades", "24hrTicker": "ticker_1d", "1hTicker": "ticker_1h"}
SCHEMAS = {"trade": "trade", "24hrTicker": "ticker_24h", "1hTicker": "ticker_1h"}


def columns(event_type: str) -> dict[str, tuple[str, str]]:
    """Wire field → (column, storage type), from the stream's JSON Schema."""
    schema = json.loads((REPOSITORY / "schemas" / f"{SCHEMAS[event_type]}.schema.json").read_text())
    return {
        field: (spec["x-tickwire"]["column"], spec["x-tickwire"]["type"])
        for field, spec in schema["properties"].items() if "x-tickwire" in spec
    }


def stored_form(value: object, kind: str) -> object:
    """How the SQLite sink stores a wire value: decimals as the exact text, times as ISO text."""
    if kind == "timestamp_ms":
        return iso_ms(value)
    if kind == "boolean":
        return int(value)
    return value


def expected_rows(events: list[dict]) -> dict[str, set[tuple]]:
    """Table → rows (in schema field order) the capture's events must become."""
    out: dict[str, set[tuple]] = {}
    for event in events:
        cols = columns(event["e"])
        out.setdefault(TABLES[event["e"]], set()).add(
            tuple(stored_form(event[field], kind) for field, (_, kind) in cols.items() if field in event))
    return out


def stored_rows(db: Path, event_type: str) -> set[tuple]:
    names = ", ".join(f'"{column}"' for column, _ in columns(event_type).values())
    if not db.exists():
        return set()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return set(conn.execute(f"select {names} from {TABLES[event_type]}").fetchall())
        except sqlite3.OperationalError:  # the table is not there yet
            return set()


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> tuple[Path, list[dict]]:
    """About five seconds of the simulator's nine streams, recorded by `tickwire record`."""
    from tests.fixtures.simulator import start_simulator

    tmp = tmp_path_factory.mktemp("capture")
    sim = start_simulator(tmp, seed=7, rate=120, ticker_interval=0.5)
    path = tmp / "capture.jsonl.gz"
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tickwire.framework.cli", "record", "--url", sim.ws_url,
             "--streams", ",".join(STREAMS), "--out", str(path), "--duration", "5"],
            cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    finally:
        sim.stop()
    assert out.returncode == 0, out.stderr
    with gzip.open(path, "rt") as fh:
        frames = [json.loads(line) for line in fh][1:]
    events = [json.loads(f["text"])["data"] for f in frames]
    assert {e["e"] for e in events} == set(TABLES) and len(events) > 500
    return path, events


@pytest.mark.parametrize("speed", [0, 1])
def test_a_recorded_capture_replayed_into_run_stores_every_event(simulator, capture, tmp_path, speed):
    path, events = capture
    replay = simulator(replay=str(path), speed=speed)
    db = tmp_path / "tickwire.db"
    env = {
        **os.environ,
        "TICKWIRE_BINANCE_URL": replay.ws_url,
        "TICKWIRE_BINANCE_REST_URL": replay.rest_url,
        "TICKWIRE_SQLITE_PATH": str(db),
        "TICKWIRE_DEAD_LETTER_PATH": str(tmp_path / "dead-letter.jsonl"),
    }
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickwire.framework.cli", "run", "--log-format", "json", "--metrics-port", "0"],
        cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL, stderr=log)
    expected = expected_rows(events)
    try:
        deadline = time.monotonic() + 60
        while True:
            stored = {TABLES[e]: stored_rows(db, e) for e in TABLES}
            if all(stored[t] >= rows for t, rows in expected.items()):
                break
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, {t: len(rows - stored[t]) for t, rows in expected.items()}
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    # nothing but the capture: the tables hold exactly its events (no gap-fill extras, no strays)
    assert {TABLES[e]: stored_rows(db, e) for e in TABLES} == expected
    assert not (tmp_path / "dead-letter.jsonl").exists() or not (tmp_path / "dead-letter.jsonl").read_text().strip()
    stats = replay.stats()
    assert stats["mode"] == "replay"
    served = [c for c in stats["connections"] if c["messages_sent"]]
    assert sum(c["messages_sent"] for c in served) == len(events)  # every frame once, to tickwire's connection
