"""What ``tickwire run`` shows while it runs and when it ends.

* :class:`StatusView` — a rich live table (terminal only): per stream messages/s, total
  received and committed, last price, event-time lag, p50/p99 of event time → commit over
  the last 30 s (framework/latency.py), invalid, dead-lettered; per source
  connections and reconnects; per sink queue depth and mean commit time.
* :class:`Progress` — the same numbers as one structured log line every N seconds, for
  non-terminal runs (JSON logs).
* :func:`summary_lines` — the exit summary.

All read :meth:`Engine.snapshot`; nothing here touches the hot path.
"""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tickwire.framework.latency import RecentQuantiles


class Rates:
    """Messages/s per stream from successive snapshots (smoothed over a few seconds)."""

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha
        self._last: dict[str, tuple[float, int]] = {}
        self.rates: dict[str, float] = {}

    def update(self, snapshot: dict) -> dict[str, float]:
        now = time.monotonic()
        for name, s in snapshot["streams"].items():
            prev = self._last.get(name)
            self._last[name] = (now, s["received"])
            if prev is None or now - prev[0] <= 0:
                continue
            inst = (s["received"] - prev[1]) / (now - prev[0])
            old = self.rates.get(name)
            self.rates[name] = inst if old is None else self.alpha * inst + (1 - self.alpha) * old
        return self.rates


def _lag(lag: float | None) -> str:
    if lag is None:
        return "–"
    return f"{lag * 1000:.0f} ms" if abs(lag) < 10 else f"{lag:.1f} s"


def _commit_latency(engine: Any) -> RecentQuantiles | None:
    """Event → commit quantiles of the engine's metrics (None for an engine without them)."""
    metrics = getattr(engine, "metrics", None)
    latency = getattr(metrics, "latency", None)
    return RecentQuantiles(latency.event_to_commit) if latency is not None else None


def _corrected(engine: Any, stream: str, lag: float | None) -> float | None:
    """The last sampled event lag minus the clock offset measured by the stream's source."""
    latency = getattr(getattr(engine, "metrics", None), "latency", None)
    if lag is None or latency is None:
        return lag
    return lag - latency.offsets.by_stream.get(stream, 0.0)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else _lag(seconds)


def _int(n: float) -> str:
    return f"{int(n):,}"


class StatusView:
    """``rich.live.Live(get_renderable=view.render)``."""

    def __init__(self, engine: Any, title: str = "tickwire"):
        self.engine = engine
        self.title = title
        self.rates = Rates()
        self.latency = _commit_latency(engine)

    def render(self):
        snap = self.engine.snapshot()
        rates = self.rates.update(snap)
        latency = self.latency.update() if self.latency is not None else {}
        rows = []
        for name, s in snap["streams"].items():
            committed = min(s["written"].values()) if s["written"] else 0
            rows.append((
                name,
                _rate(rates.get(name, 0.0)),
                _int(s["received"]),
                _int(committed),
                str(s["last_price"] or "–"),
                _lag(_corrected(self.engine, name, s["lag_s"])),
                *(_ms(q) for q in latency.get(name, (None, None))),
                Text(_int(s["invalid"]), style="yellow" if s["invalid"] else ""),
                Text(_int(s["dead_letters"]), style="yellow" if s["dead_letters"] else ""),
            ))
        parts = []
        for sid, s in snap["sources"].items():
            style = "green" if s["connections"] else "red"
            parts.append(Text.assemble(f"source {sid}: ", (_count(s["connections"], "connection"), style), f", {_count(s['reconnects'], 'reconnect')}"))
        for sid, s in snap["sinks"].items():
            mean = s["commit_seconds"] / s["commits"] * 1000 if s["commits"] else 0.0
            parts.append(Text(f"sink {sid}: {_int(s['pending'])} queued, {_int(s['commits'])} commits, {mean:.1f} ms/commit"))
        return Group(_StreamTable(f"{self.title} — {snap['elapsed_s']:.0f}s", rows), *parts)


# (header, short header, justify, kept on a narrow terminal)
_COLUMNS = (
    ("stream", "stream", "left", True), ("msg/s", "msg/s", "right", True), ("received", "recv", "right", False),
    ("committed", "stored", "right", True), ("last price", "price", "right", True), ("lag", "lag", "right", True),
    ("commit p50", "p50", "right", True), ("commit p99", "p99", "right", True), ("invalid", "bad", "right", False),
    ("dead letters", "dead", "right", True),
)
WIDE_TERMINAL = 120  # every column with its full header fits from here


class _StreamTable:
    """The stream table, laid out for the terminal's width when it is drawn: on a narrow one,
    short headers and no received/invalid columns, so stream names and numbers are never cut."""

    def __init__(self, title: str, rows: list[tuple]):
        self.title = title
        self.rows = rows

    def __rich_console__(self, console, options):
        wide = options.max_width >= WIDE_TERMINAL
        kept = [i for i, column in enumerate(_COLUMNS) if wide or column[3]]
        table = Table(title=self.title, title_justify="left", expand=False,
                      **({} if wide else {"box": box.SIMPLE_HEAD, "padding": 0}))
        for i in kept:
            header, short, justify, _ = _COLUMNS[i]
            table.add_column(header if wide else short, justify=justify, no_wrap=True)
        for row in self.rows:
            table.add_row(*(row[i] for i in kept))
        yield table


class Progress:
    """One log line per ``interval`` seconds with the same numbers."""

    def __init__(self, engine: Any, log: Any, interval: float = 10.0):
        self.engine = engine
        self.log = log
        self.interval = interval
        self.rates = Rates(alpha=1.0)
        self.latency = _commit_latency(engine)

    def emit(self) -> None:
        snap = self.engine.snapshot()
        rates = self.rates.update(snap)
        latency = self.latency.update() if self.latency is not None else {}
        streams = {
            name: {
                "rate": round(rates.get(name, 0.0), 1),
                "received": s["received"],
                "written": s["written"],
                "invalid": s["invalid"],
                "dead_letters": s["dead_letters"],
                "lag_ms": None if s["lag_s"] is None else round(_corrected(self.engine, name, s["lag_s"]) * 1000),
                "last_price": s["last_price"],
                **_latency_fields(latency.get(name, (None, None))),
            }
            for name, s in snap["streams"].items()
        }
        self.log.info("progress", elapsed_s=round(snap["elapsed_s"], 1), streams=streams, sources=snap["sources"],
                      queued={k: v["pending"] for k, v in snap["sinks"].items()})


def summary_lines(snapshot: dict) -> list[str]:
    elapsed = snapshot["elapsed_s"] or 0.0
    total = sum(s["received"] for s in snapshot["streams"].values() if not s.get("derived_from"))
    lines = [f"ran {elapsed:.1f}s: {total:,} messages received ({total / elapsed if elapsed else 0:,.0f}/s)"]
    for name, s in snapshot["streams"].items():
        written = ", ".join(f"{_int(n)} to {sink}" for sink, n in s["written"].items()) or "no sink"
        if s.get("derived_from"):
            lines.append(f"  {name}: derived from {s['derived_from']} ({_int(s['received'])} records in), "
                         f"row updates written {written}")
            continue
        lines.append(
            f"  {name}: {_int(s['received'])} received, committed {written}, {_int(s['invalid'])} invalid, "
            f"{_int(s['dead_letters'])} dead letters"
        )
    if snapshot.get("dead_letters_unrouted"):
        lines.append(f"  (no stream): {_int(snapshot['dead_letters_unrouted'])} dead letters")
    for sid, s in snapshot["sinks"].items():
        if s["pending"]:
            lines.append(f"  sink {sid}: {_int(s['pending'])} records NOT committed")
    return lines


def _latency_fields(quantiles: tuple[float | None, float | None]) -> dict:
    p50, p99 = quantiles
    return {"commit_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "commit_p99_ms": None if p99 is None else round(p99 * 1000, 1)}


def _rate(per_second: float) -> str:
    # tickers arrive about once a second per symbol: show them as 1.7, not 0
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.1f}"


def _count(n: float, noun: str) -> str:
    return f"{int(n)} {noun}{'' if int(n) == 1 else 's'}"
