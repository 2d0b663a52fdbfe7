"""The live status table `tickwire run` shows on a terminal, rendered from an engine snapshot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console

from tickwire.framework.config import load_config
from tickwire.framework.metrics import Metrics
from tickwire.framework.plugins import PluginManager
from tickwire.framework.status import Progress, StatusView, summary_lines
from tickwire.framework.timestamps import iso_ms


class SnapshotEngine:
    """Stands in for the engine: the view only reads ``snapshot()``."""

    def __init__(self):
        self.received = 0

    def snapshot(self) -> dict:
        return {
            "elapsed_s": 12.0,
            "streams": {
                "trade": {"received": self.received * 400, "written": {"sqlite": self.received * 400}, "invalid": 0,
                          "dead_letters": 2, "last_price": "43012.57000000", "lag_s": 0.004},
                "ticker": {"received": self.received * 2, "written": {"sqlite": self.received * 2}, "invalid": 1,
                           "dead_letters": 1, "last_price": None, "lag_s": None},
            },
            "sources": {"binance": {"connections": 1, "reconnects": 3}},
            "sinks": {"sqlite": {"pending": 0, "commits": 10, "commit_seconds": 0.02}},
        }


@pytest.fixture
def trade_stream_and_metrics():
    config = load_config(Path(__file__).resolve().parent.parent / "streams.yaml", PluginManager())
    return config.streams["trade"], Metrics(CollectorRegistry())


def render(view: StatusView) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(view.render())
    return console.export_text()


def test_the_table_shows_rates_prices_lag_and_connections(monkeypatch):
    engine = SnapshotEngine()
    view = StatusView(engine, title="tickwire run (local)")
    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr("tickwire.framework.status.time.monotonic", lambda: next(clock))
    for engine.received in (1, 2):
        text = render(view)
    assert "tickwire run (local) — 12s" in text
    trade = next(line for line in text.splitlines() if "trade" in line)
    assert "400" in trade and "43012.57000000" in trade and "4 ms" in trade
    ticker = next(line for line in text.splitlines() if "ticker" in line)
    assert " 2.0 " in ticker and "–" in ticker  # a slow stream's rate keeps its decimal
    assert "source binance: 1 connection, 3 reconnects" in text
    assert "sink sqlite: 0 queued, 10 commits, 2.0 ms/commit" in text


def test_the_table_shows_event_to_commit_p50_and_p99_per_stream(trade_stream_and_metrics):
    """Real latency metrics behind the view: commits observed 40 ms and 900 ms after the event."""
    stream, metrics = trade_stream_and_metrics
    engine = SnapshotEngine()
    engine.metrics = metrics
    engine.received = 1
    view = StatusView(engine)
    now = time.time_ns() // 1_000_000
    fast = [{"event_time": iso_ms(now - 40), "ingested_at": iso_ms(now - 30)}] * 98
    slow = [{"event_time": iso_ms(now - 900), "ingested_at": iso_ms(now - 890)}] * 2
    for record in fast + slow:  # one write each: every record read
        metrics.latency.commits.committed(stream, "sqlite", [record])
    text = render(view)
    header = next(line for line in text.splitlines() if "commit p50" in line)
    trade = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("trade"))
    cells = [c.strip() for c in trade.split("│")]
    columns = [c.strip() for c in header.split("┃")]
    p50, p99 = cells[columns.index("commit p50")], cells[columns.index("commit p99")]
    assert p50.endswith(" ms") and 25 <= float(p50.split()[0]) <= 50  # (0.025, 0.05] bucket
    assert p99.endswith(" ms") and 500 <= float(p99.split()[0]) <= 1000  # (0.5, 1] bucket
    ticker = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("ticker"))
    assert ticker.count("–") >= 3  # no price, no commits measured yet


def test_progress_lines_carry_the_same_quantiles(trade_stream_and_metrics):
    stream, metrics = trade_stream_and_metrics
    engine = SnapshotEngine()
    engine.metrics = metrics
    events = []

    class Log:
        def info(self, event, **fields):
            events.append(fields)

    now = time.time_ns() // 1_000_000
    metrics.latency.commits.committed(stream, "sqlite", [{"event_time": iso_ms(now - 3), "ingested_at": iso_ms(now - 2)}])
    Progress(engine, Log()).emit()
    trade = events[0]["streams"]["trade"]
    assert 2 <= trade["commit_p50_ms"] <= trade["commit_p99_ms"] <= 5
    assert events[0]["streams"]["ticker"]["commit_p99_ms"] is None


def test_the_exit_summary_counts_messages_once_and_says_what_a_derived_stream_is():
    """Candles receive the trade stream's records: the total is the messages that arrived, not
    twice the trades."""
    stream = {"written": {"sqlite": 3}, "invalid": 0, "dead_letters": 0, "last_price": None, "lag_s": None}
    snapshot = {
        "elapsed_s": 10.0, "sources": {}, "sinks": {}, "dead_letters_unrouted": 0,
        "streams": {"trade": {**stream, "received": 3000, "written": {"sqlite": 3000}, "derived_from": None},
                    "candles_1m": {**stream, "received": 3000, "derived_from": "trade"}},
    }
    lines = summary_lines(snapshot)
    assert lines[0] == "ran 10.0s: 3,000 messages received (300/s)"
    assert lines[2] == "  candles_1m: derived from trade (3,000 records in), row updates written 3 to sqlite"


def test_on_an_80_column_terminal_names_and_numbers_are_not_cut(monkeypatch):
    engine = SnapshotEngine()
    engine.received = 3
    console = Console(width=80, record=True, color_system=None)
    console.print(StatusView(engine, title="tickwire run (local)").render())
    text = console.export_text()
    assert "…" not in text, text
    header = next(line for line in text.splitlines() if "stream" in line)
    assert all(name in header for name in ("msg/s", "stored", "price", "p50", "p99", "dead")), text
    assert "43012.57000000" in text and "1,200" in text and "ticker" in text
    assert max(len(line) for line in text.splitlines()) <= 80
