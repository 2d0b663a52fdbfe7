"""Where a restart resumes, and how a lost range is written down: the pure logic behind
``Sink.last_sequence_ids`` and ``Sink.write_gaps`` (docs/architecture.md, "Nothing lost across
restarts"), shared by the engine and every sink.

* :func:`complete_up_to` — a sink's answer for one symbol: its highest id, lowered to just below
  the lowest hole of its recent window that no ``trade_gaps`` record explains (a process killed
  while it filled a gap leaves such a hole under newer trades).
* :func:`combine` — the engine's resume point per symbol: the minimum over the sinks that
  answered (the least complete store decides; the others drop the repeats by key).
* :func:`unstored_parts` — what of a lost range a store really lacks: with redundant instances
  (docs/redundancy.md) another writer may have stored trades this one could not fetch.
* :func:`gap_dead_letter` — a lost range as a dead letter, for stores without ``write_gaps``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from tickwire.framework.components import DeadLetter, TradeGap
from tickwire.framework.schemas import quote_identifier as q

# How many of the newest ids per symbol a sink checks for holes. A hole older than this was
# left before the last RESUME_WINDOW trades were stored, i.e. by an earlier run that already
# went on for a while: only a fill interrupted by a kill leaves a hole, and a fill is at most
# gap_fill_max_trades long (100,000 by default) — both SQL stores scan this many index entries
# per symbol only when the window is not complete (a count first).
RESUME_WINDOW = 100_000


def complete_up_to(highest: int, holes: Iterable[tuple[int, int]], recorded: Iterable[tuple[int, int]] = ()) -> int:
    """``highest`` or, when some id of a hole ``(first, last)`` is not covered by a ``recorded``
    lost range, the id just below the lowest such id."""
    covered = sorted(recorded)
    lowest = None
    for first, last in sorted(holes):
        cur = first
        for a, b in covered:
            if b < cur or a > cur:
                continue
            cur = b + 1  # ids a..b are accounted for: look at what follows
            if cur > last:
                break
        if cur <= last:
            lowest = cur
            break
    return highest if lowest is None else lowest - 1


def holes_in(ids: Iterable[int]) -> list[tuple[int, int]]:
    """The missing ranges between the smallest and the largest of ``ids``."""
    out = []
    prev = None
    for i in sorted(set(ids)):
        if prev is not None and i > prev + 1:
            out.append((prev + 1, i - 1))
        prev = i
    return out


def combine(answers: dict[str, dict[str, int] | None]) -> dict[str, tuple[int, str]]:
    """sink id → its answer (None: cannot tell) ⇒ symbol → (resume id, the sink that decided).

    A sink that answered but holds nothing of a symbol does not decide for it: it starts that
    symbol from the live stream like a first start (filling from the beginning of history is
    not what a new store asks for), and gets the other stores' refill too."""
    out: dict[str, tuple[int, str]] = {}
    for sink_id in sorted(answers):
        answer = answers[sink_id]
        if not answer:
            continue
        for symbol, last in answer.items():
            if symbol not in out or last < out[symbol][0]:
                out[symbol] = (int(last), sink_id)
    return out


# -- SQL stores (SQLite and PostgreSQL share the statements; only the placeholder differs) ---------

TRADE_GAPS_TABLE = "trade_gaps"
TRADE_GAP_COLUMNS = ("stream", "symbol", "first_id", "last_id", "count", "reason", "detected_at")


def held_sql(table: str, sequence: tuple[str, str]) -> str:
    """Per partition value: the highest id, how many ids the newest RESUME_WINDOW hold, and the
    lowest of those. ``table`` is already quoted (``"schema"."table"`` for PostgreSQL)."""
    seq, part = map(q, sequence)
    return (
        f"WITH top AS (SELECT {part} AS part, max({seq}) AS hi FROM {table} GROUP BY {part}) "
        f"SELECT top.part, top.hi, count(*), min(t.{seq}) FROM top JOIN {table} AS t "
        f"ON t.{part} = top.part AND t.{seq} > top.hi - {RESUME_WINDOW} GROUP BY top.part, top.hi"
    )


def window_ids_sql(table: str, sequence: tuple[str, str], placeholder: str) -> str:
    """The ids of one partition value from a given id on (two parameters), ascending."""
    seq, part = map(q, sequence)
    return f"SELECT {seq} FROM {table} WHERE {part} = {placeholder} AND {seq} >= {placeholder} ORDER BY {seq}"


def range_ids_sql(table: str, sequence: tuple[str, str], placeholder: str) -> str:
    """The ids of one partition value between two ids, inclusive (three parameters), ascending."""
    seq, part = map(q, sequence)
    return (
        f"SELECT {seq} FROM {table} WHERE {part} = {placeholder} "
        f"AND {seq} BETWEEN {placeholder} AND {placeholder} ORDER BY {seq}"
    )


def unstored_parts(gap: TradeGap, stored: Iterable[int]) -> list[TradeGap]:
    """The parts of ``gap`` whose ids are not in ``stored`` (the store's ids in that range):
    what the store should record as lost. Empty when another writer — a redundant instance —
    stored the whole range; recording it would claim a loss the store does not have."""
    parts = []
    first = gap.first_id
    for i in sorted({i for i in stored if gap.first_id <= i <= gap.last_id}):
        if i > first:
            parts.append(replace(gap, first_id=first, last_id=i - 1))
        first = i + 1
    if first <= gap.last_id:
        parts.append(replace(gap, first_id=first, last_id=gap.last_id))
    return parts


def stored_by_others_text(gap: TradeGap, parts: list[TradeGap]) -> str:
    """The log line of a sink that records less than ``gap`` because the store holds the rest."""
    recorded = ", ".join(f"{p.first_id}..{p.last_id}" for p in parts) or "nothing"
    return (f"trade gap {gap.symbol} ids {gap.first_id}..{gap.last_id} of stream {gap.stream!r}: "
            f"{gap.count - sum(p.count for p in parts)} of its trades are stored already (another writer, "
            f"e.g. a redundant instance); recording as lost: {recorded}")


def recorded_gaps_sql(gaps_table: str, placeholder: str) -> str:
    """Lost ranges already recorded for (stream, symbol) ending at or after an id (3 parameters)."""
    return (
        f"SELECT first_id, last_id FROM {gaps_table} WHERE stream = {placeholder} AND symbol = {placeholder} "
        f"AND last_id >= {placeholder}"
    )


def insert_gaps_sql(gaps_table: str, placeholder: str) -> str:
    """One gap row; a range already recorded (same stream, symbol, first id) is kept as it is."""
    values = ", ".join([placeholder] * len(TRADE_GAP_COLUMNS))
    return f"INSERT INTO {gaps_table} ({', '.join(TRADE_GAP_COLUMNS)}) VALUES ({values}) ON CONFLICT DO NOTHING"


def gap_row(gap: TradeGap) -> tuple:
    return (gap.stream, gap.symbol, gap.first_id, gap.last_id, gap.count, gap.reason, gap.detected_at)


def incomplete(hi: int, count: int, lowest: int) -> bool:
    """Whether a window row of :func:`held_sql` has holes (then read its ids)."""
    return count != hi - lowest + 1


def gap_dead_letter(gap: TradeGap, plugin: str = "engine") -> DeadLetter:
    """A lost range as a dead letter: the reason names the range, raw is the gap as JSON."""
    return DeadLetter(
        stream=gap.stream,
        reason=gap_reason_text(gap),
        plugin=plugin,
        raw=json.dumps(gap_as_dict(gap), sort_keys=True),
        received_at=gap.detected_at,
    )


def gap_reason_text(gap: TradeGap) -> str:
    return f"trade gap: {gap.symbol} ids {gap.first_id}..{gap.last_id} ({gap.count} trades) lost: {gap.reason}"


def gap_as_dict(gap: TradeGap) -> dict:
    return {
        "stream": gap.stream, "symbol": gap.symbol, "first_id": gap.first_id, "last_id": gap.last_id,
        "count": gap.count, "reason": gap.reason, "detected_at": gap.detected_at,
    }
