"""Trade-id bookkeeping: which trades were seen, which are missing, which are duplicates.

Binance numbers the trades of a symbol 1, 2, 3, … without holes. :class:`TradeIdTracker` knows,
per symbol, exactly which ids it has seen within a bounded window below the highest one, and
classifies every new id:

* the next id in sequence, or a jump forward that leaves a hole (the hole is a *gap*, filled
  over REST by the source);
* an id inside a hole: a late arrival, accepted (a reconnect, or a connection that is behind
  another one during rotation); an unseen id below the first one seen, inside the window: also
  accepted (a frame that overtook an earlier one at start-up);
* an id already seen: a duplicate, counted and dropped;
* an id older than the window (or below the hole the tracker had to give up, see
  ``max_ranges``): it cannot be told apart from a duplicate, so it is dead-lettered with a
  reason — after ids restarted lower, every new trade is either stored or explained;
* an id further ahead of the highest one than any reconnect explains (``max_jump``, measured
  from the higher of the highest id seen and the latest id REST vouched for): dead-lettered,
  and the window does not move, so one bogus id cannot make every real trade after it look old.

It is checked in two steps so a record marks its id as seen only once the engine accepted it:
:meth:`check` classifies without changing anything, :meth:`commit` records the verdict.

Memory: the seen ids are the complement of the holes (sorted ranges), so a symbol streaming in
order costs nothing per trade; at most ``max_ranges`` holes and ``window`` early ids are kept.

:class:`RecentKeys` does the same job for events without a sequence (tickers): an event whose
``E`` was seen recently on the same channel is a duplicate.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from operator import itemgetter
from typing import Hashable

NEW = 0  # next in sequence (or the first one seen)
GAP = 1  # accepted, and it opens a new missing range below it
LATE = 2  # accepted: it was missing, or it is an unseen id below the first one, inside the window
DUPLICATE = 3  # already seen: drop it
TOO_OLD = 4  # below the window: cannot tell whether it was seen; dead-letter it
TOO_FAR = 5  # implausibly far ahead: dead-letter it, the window stays where it is

ACCEPTED = (NEW, GAP, LATE)

DEFAULT_WINDOW = 100_000
DEFAULT_MAX_JUMP = 100_000
DEFAULT_MAX_RANGES = 4096

_lo = itemgetter(0)


class TradeIdTracker:
    """Per-symbol trade-id state. Not thread-safe; one event loop owns it.

    The seen ids are: every id in ``[start, last]`` that is not in ``missing``, plus the ids in
    ``early`` (accepted below ``start``). Ids below :attr:`lowest` are not tracked any more.

    ``window``: how far below the highest id an unseen id is still accepted and a repeat still
    recognised. ``max_jump``: largest plausible step forward. ``max_ranges``: holes kept; when
    there are more, the oldest is given up (counted in ``abandoned``, kept in ``given_up`` until
    the source reports it lost) and the tracker stops
    speaking about ids at or below it (they become TOO_OLD instead of being taken for repeats).
    """

    __slots__ = (
        "last", "last_payload", "missing", "start", "early", "floor", "known_latest",
        "window", "max_jump", "max_ranges", "abandoned", "given_up", "_early_cap",
    )

    def __init__(self, max_ranges: int = DEFAULT_MAX_RANGES, *, window: int = DEFAULT_WINDOW, max_jump: int = DEFAULT_MAX_JUMP):
        self.last: int | None = None  # highest id accepted
        self.last_payload: dict | None = None  # the payload of ``last`` when the router knows it
        # sorted, disjoint, inclusive [lo, hi] ranges of ids below ``last`` not seen yet
        self.missing: list[list[int]] = []
        self.start: int | None = None  # ids in [start, last] outside ``missing`` are seen
        self.early: set[int] = set()  # ids accepted below ``start`` (inside the window)
        self.floor = 0  # nothing below this is tracked (rises when a hole is given up)
        self.known_latest: int | None = None  # latest id Binance's REST API showed us
        self.window = max(1, int(window))
        self.max_jump = max(1, int(max_jump))
        self.max_ranges = max_ranges
        self.abandoned = 0  # ids given up because too many ranges were open
        self.given_up: list[tuple[int, int]] = []  # those ranges, until the source reports them
        self._early_cap = 1024

    # -- classification --------------------------------------------------------------------

    @property
    def lowest(self) -> int:
        """The lowest id the tracker still speaks about (holes below it excepted)."""
        last = self.last
        return self.floor if last is None else max(self.floor, last - self.window + 1)

    def check(self, t: int) -> int:
        """Classify trade id ``t`` without recording it: NEW, GAP, LATE, DUPLICATE, TOO_OLD or
        TOO_FAR. Call :meth:`commit` with the verdict once the record was accepted."""
        last = self.last
        if last is None:
            known = self.known_latest
            return TOO_FAR if known is not None and t - known > self.max_jump else NEW
        if t > last:
            known = self.known_latest
            top = last if known is None or known < last else known
            if t - top > self.max_jump:
                return TOO_FAR
            return NEW if t == last + 1 else GAP
        if self.missing and self.is_missing(t):
            return LATE
        if t < self.lowest:
            return TOO_OLD
        if t >= self.start:
            return DUPLICATE
        return DUPLICATE if t in self.early else LATE

    def commit(self, t: int, verdict: int) -> None:
        """Record ``t``, classified ``verdict`` by :meth:`check` (NEW, GAP or LATE) just before."""
        last = self.last
        if verdict == NEW:
            self.last = t
            if last is None:
                self.start = t
        elif verdict == GAP:
            missing = self.missing
            missing.append([last + 1, t - 1])
            self.last = t
            if len(missing) > self.max_ranges:
                lo, hi = missing.pop(0)
                self.abandoned += hi - lo + 1
                self.given_up.append((lo, hi))
                self.floor = max(self.floor, hi + 1)
        elif verdict == LATE:
            if not self.take(t):
                self._remember_early(t)

    def accept(self, t: int) -> int:
        """:meth:`check` and, when the verdict accepts ``t``, :meth:`commit`; returns the verdict."""
        verdict = self.check(t)
        if verdict in ACCEPTED:
            self.commit(t, verdict)
        return verdict

    def reason(self, t: int, verdict: int) -> str:
        """Why a TOO_OLD or TOO_FAR id is not stored, for the dead letter."""
        if verdict == TOO_FAR:
            known, last = self.known_latest, self.last
            if known is None or (last is not None and known <= last):
                top, what = last, "the highest trade id seen"
            else:
                top, what = known, "the latest trade id Binance's REST API showed"
            return (
                f"trade id {t} is {t - top} ahead of {what} ({top}); more than max_id_jump={self.max_jump} is "
                "implausible, so it is not stored and does not move the dedupe window (checked against REST)"
            )
        return (
            f"trade id {t} is older than the dedupe window (ids {self.lowest}..{self.last} are tracked, "
            f"dedupe_window={self.window}): it cannot be told apart from a trade already stored "
            "(did the exchange's ids go backwards?)"
        )

    # -- seeding ----------------------------------------------------------------------------

    def resume_from(self, last_id: int) -> None:
        """Start as if every id up to ``last_id`` had been stored (the sinks already hold them):
        those are duplicates from now on, and the first trade above ``last_id + 1`` opens a gap
        that is filled over REST. Meant for start-up; later it marks ids up to ``last_id`` seen."""
        last_id = int(last_id)
        if self.last is None or last_id >= self.last:
            self.last = last_id
            self.last_payload = None
            self.missing = []
        else:
            self.missing = [[lo, hi] for lo, hi in self.missing if hi > last_id]
            if self.missing and self.missing[0][0] <= last_id:
                self.missing[0][0] = last_id + 1
        self.start = 0
        self.early.clear()

    def vouch(self, latest_id: int) -> None:
        """Binance's REST API showed trade ``latest_id``: ids up to ``max_jump`` beyond it are
        plausible even if the stream has not reached them yet (a long downtime)."""
        if self.known_latest is None or latest_id > self.known_latest:
            self.known_latest = int(latest_id)

    def _remember_early(self, t: int) -> None:
        early = self.early
        early.add(t)
        if len(early) > self._early_cap:
            lowest = self.lowest
            self.early = {i for i in early if i >= lowest}
            self._early_cap = max(1024, 2 * len(self.early))

    # -- holes (used by the gap filler) -----------------------------------------------------

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
    """The last ``size`` distinct keys seen; ``key in keys`` asks, ``add`` records and says
    whether the key was new."""

    __slots__ = ("_seen", "_order", "_size")

    def __init__(self, size: int = 512):
        self._seen: set = set()
        self._order: deque = deque()
        self._size = size

    def __contains__(self, key: Hashable) -> bool:
        return key in self._seen

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
