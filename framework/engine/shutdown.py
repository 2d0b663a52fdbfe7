"""Shutdown accounting: what was received but not committed when the run ended.

Counted per (sink, stream) — buffered in a lane, queued, in a write that did not return, or
refused by a sink that stopped with a PermanentError — and reported once: one error line,
``tickwire_records_abandoned_total`` and :attr:`Engine.abandoned` (``tickwire run`` exits 3)."""

from __future__ import annotations

from typing import Any, Iterable

from tickwire.framework.engine.dead_letters import DeadLetters
from tickwire.framework.engine.routing import Route
from tickwire.framework.engine.runner import NOTHING, SinkRunner, label


def take_uncommitted(routes: Iterable[Route], runners: Iterable[SinkRunner], dead_letters: DeadLetters) -> dict[tuple[str, str], int]:
    """Records received but not committed, per (sink, stream). Empties the buffers' and
    queues' bookkeeping: only for a run that is over (the shutdown deadline, a forced exit)."""
    counts: dict[tuple[str, str], int] = {}
    for route in routes:
        for lane in route.lanes:
            if lane.buf:
                _add(counts, lane.runner.id, lane.stream, len(lane.buf))
    if dead_letters.buffer and dead_letters.runner is not None:
        _add(counts, dead_letters.runner.id, None, len(dead_letters.buffer))
    for runner in runners:
        items = [] if runner.carry is NOTHING else [runner.carry]
        runner.carry = NOTHING
        while not runner.queue.empty():
            items.append(runner.queue.get_nowait())
        for item in items:
            if item is not None:
                _add(counts, runner.id, item[0], len(item[1]))
        for stream, n in runner.writing.values():
            _add(counts, runner.id, stream, n)
        runner.writing.clear()
        for name, n in runner.lost.items():
            _add(counts, runner.id, name, n)
        runner.lost.clear()
    return counts


def describe_uncommitted(counts: dict[tuple[str, str], int]) -> str:
    """One sentence for a log line: how many records were abandoned, where."""
    where = "; ".join(f"sink {sink!r}, {stream}: {n:,}" for (sink, stream), n in sorted(counts.items()))
    return (f"{sum(counts.values()):,} records were not committed and are abandoned ({where}); a source "
            "that can replay (Binance REST) fills them on the next start")


def uncommitted_fields(counts: dict[tuple[str, str], int]) -> dict:
    """The same counts as structured log fields."""
    return {"abandoned_total": sum(counts.values()),
            "abandoned": {f"{sink}/{stream}": n for (sink, stream), n in sorted(counts.items())}}


def _add(counts: dict[tuple[str, str], int], sink: str, stream: Any, n: int) -> None:
    key = (sink, label(stream))
    counts[key] = counts.get(key, 0) + n
