"""The live status table `tickwire run` shows on a terminal, rendered from an engine snapshot."""

from __future__ import annotations

from rich.console import Console

from tickwire.framework.status import StatusView


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
