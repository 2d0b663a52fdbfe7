"""Trade-id bookkeeping: which trades were seen, which are missing, which are duplicates.

Binance numbers the trades of a symbol 1, 2, 3, … without holes. :class:`TradeIdTracker` keeps
the highest id seen and the ranges below it that have not arrived yet (a reconnect, or a
connection that is behind another one during rotation). A trade inside a missing range is a late
arrival and is accepted; any other trade at or below the highest id is a duplicate.

:class:`RecentKeys` does the same job for events without a sequence (tickers): an event whose
``E`` was seen recently on the same channel is a duplicate.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from operator import itemgetter
from typing import Hashable

NEW = 0  # next in sequence (or the first one seen)
GAP = 1  # accepted, and it opened a new missing range below it
LATE = 2  # accepted: it was missing
DUPLICATE = 3  # already seen: drop it

_lo = itemgetter(0)


class TradeIdTracker:
    """Per-symbol trade-id state. Not thread-safe; one event loop owns it."""

    __slots__ = ("last", "missing", "max_ranges", "abandoned")

    def __init__(self, max_ranges: int = 256):
        self.last: int | None = None
        # sorted, disjoint, inclusive [lo, hi] ranges of ids below ``last`` not seen yet
        self.missing: list[list[int]] = []
        self.max_ranges = max_ranges
        self.abandoned = 0  # ids forgotten because too many ranges were open

    def resume_from(self, last_id: int) -> None:
        """Start as if every id <= ``last_id`` had been stored (what the sinks hold at start-up):
        the next id expected is ``last_id + 1``; a later one opens a gap below it."""
        self.last = last_id
        self.missing = []

    def accept(self, t: int) -> int:
        """Classify trade id ``t`` and record it. Returns NEW, GAP, LATE or DUPLICATE."""
        last = self.last
        if last is None or t == last + 1:
            self.last = t
            return NEW
        if t > last:
            self.missing.append([last + 1, t - 1])
            self.last = t
            if len(self.missing) > self.max_ranges:
                lo, hi = self.missing.pop(0)
                self.abandoned += hi - lo + 1
            return GAP
        return LATE if self.take(t) else DUPLICATE

    def take(self, t: int) -> bool:
        """If ``t`` is missing, mark it as seen and return True."""
        missing = self.missing
        if not missing:
            return False
        i = bisect_right(missing, t, key=_lo) - 1
        if i < 0:
            return False
        rng = missing[i]
        lo, hi = rng
        if t > hi:
            return False
        if lo == hi:
            del missing[i]
        elif t == lo:
            rng[0] = lo + 1
        elif t == hi:
            rng[1] = hi - 1
        else:
            rng[1] = t - 1
            missing.insert(i + 1, [t + 1, hi])
        return True

    def is_missing(self, t: int) -> bool:
        i = bisect_right(self.missing, t, key=_lo) - 1
        return i >= 0 and self.missing[i][1] >= t

    def missing_in(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The still-missing ranges clipped to ``[lo, hi]``."""
        out = []
        for a, b in self.missing:
            if b < lo:
                continue
            if a > hi:
                break
            out.append((max(a, lo), min(b, hi)))
        return out

    def count_missing(self, lo: int | None = None, hi: int | None = None) -> int:
        if lo is None or hi is None:
            return sum(b - a + 1 for a, b in self.missing)
        return sum(b - a + 1 for a, b in self.missing_in(lo, hi))

    def forget(self, lo: int, hi: int) -> int:
        """Stop waiting for ids in ``[lo, hi]`` (they cannot be fetched); return how many."""
        n = 0
        kept: list[list[int]] = []
        for a, b in self.missing:
            if b < lo or a > hi:
                kept.append([a, b])
                continue
            n += min(b, hi) - max(a, lo) + 1
            if a < lo:
                kept.append([a, lo - 1])
            if b > hi:
                kept.append([hi + 1, b])
        self.missing = kept
        return n


class RecentKeys:
    """The last ``size`` distinct keys seen; ``add`` says whether a key is new."""

    __slots__ = ("_seen", "_order", "_size")

    def __init__(self, size: int = 512):
        self._seen: set = set()
        self._order: deque = deque()
        self._size = size

    def add(self, key: Hashable) -> bool:
        seen = self._seen
        if key in seen:
            return False
        seen.add(key)
        order = self._order
        order.append(key)
        if len(order) > self._size:
            seen.discard(order.popleft())
        return True
