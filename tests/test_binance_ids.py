"""Trade ids per symbol: what is stored, what is a duplicate, what is dead-lettered and why.

Pure logic (the tracker, the frame router in front of the engine's real validate + normalize
chain), first as examples that read like the rules, then as property-based tests (hypothesis):
any sequence of ids — duplicates, reorders, restarts lower, far-ahead bogus ids, garbage
frames — ends with every valid in-window id accepted exactly once and every other frame
counted as a duplicate or dead-lettered with a reason, never an exception.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.framework.components import Rejected
from tickwire.framework.engine import Engine
from tickwire.framework.plugins import PluginManager
from tickwire.framework.testing import stream_spec
from tickwire.plugins.binance.frames import FrameRouter, build_channels
from tickwire.plugins.binance.gaps import DUPLICATE, GAP, LATE, NEW, TOO_FAR, TOO_OLD, TradeIdTracker

# -- helpers ------------------------------------------------------------------------------------

STREAMS = [
    stream_spec("trade", "trade.schema.json", symbols=["BTCUSDT"], source="binance"),
    stream_spec("ticker_1h", "ticker_1h.schema.json", symbols=["BTCUSDT"], source="binance"),
]
_TRANSFORMS = dict(PluginManager().transforms)


class EngineCollector:
    """The engine's own Emitter (validate + normalize, as in production) in front of a list:
    what it accepts is kept in ``records``, what it rejects lands in ``dead`` with the reason."""

    def __init__(self):
        engine = Engine(streams=STREAMS, sources={}, sinks={}, transforms=_TRANSFORMS)
        engine.dead_letters.add = self._engine_dead_letter  # the engine's dead letters, with their reasons
        self.inner = engine.emitter("binance", "binance")
        self.records: list[tuple[str, dict]] = []
        self.dead: list[tuple[str | None, str, object]] = []

    async def _engine_dead_letter(self, stream, reason, plugin, raw, received_ns=None):
        self.dead.append((stream, reason, raw))

    def record_nowait(self, stream, payload, received_ns):
        pending = self.inner.record_nowait(stream, payload, received_ns)
        if pending is None or type(pending) is not Rejected:
            self.records.append((stream, payload))
        return pending

    async def record(self, stream, payload, received_ns) -> bool:
        pending = self.record_nowait(stream, payload, received_ns)
        if pending is not None:
            await pending
        return pending is None or type(pending) is not Rejected

    async def dead_letter(self, stream, reason, raw):
        self.dead.append((stream, reason, raw))


def trade(t, *, symbol="BTCUSDT", price="100.5", time_ms=None, **override) -> dict:
    ms = 1_700_000_000_000 + (t if time_ms is None else time_ms)
    return {"e": "trade", "E": ms, "s": symbol, "t": t, "p": price, "q": "0.25", "T": ms, "m": False, "M": True} | override


def frame(data, channel="btcusdt@trade") -> bytes:
    return orjson.dumps({"stream": channel, "data": data})


def make_router(**tracker_options):
    channels = build_channels(STREAMS, "binance", **tracker_options)
    emit, gaps, too_far = EngineCollector(), [], []
    router = FrameRouter(channels, emit, 1 << 20, gaps.append, lambda ch, t: too_far.append(t))
    return router, emit, channels["btcusdt@trade"], gaps, too_far


def feed(router, frames) -> None:
    async def go():
        for raw in frames:
            await router.handle(raw, 0, None)

    asyncio.run(go())


def stored_ids(emit) -> list[int]:
    return [p["t"] for s, p in emit.records if s == "trade"]


# -- the tracker, example by example ----------------------------------------------------------


def test_in_order_ids_are_new_and_a_jump_opens_a_gap():
    tr = TradeIdTracker()
    assert [tr.accept(t) for t in (10, 11, 12)] == [NEW, NEW, NEW]
    assert tr.accept(15) == GAP and tr.missing == [[13, 14]]
    assert tr.accept(13) == LATE and tr.missing == [[14, 14]]


def test_a_repeat_is_a_duplicate_only_once_it_was_committed():
    tr = TradeIdTracker()
    tr.accept(10)
    assert tr.check(11) == NEW
    assert tr.check(11) == NEW  # checking does not mark it seen: the engine may still reject it
    tr.commit(11, NEW)
    assert tr.check(11) == DUPLICATE


def test_unseen_ids_inside_the_window_are_accepted_in_any_order():
    tr = TradeIdTracker(window=1000)
    tr.accept(5000)
    assert tr.accept(4990) == LATE  # below the first id seen, inside the window: stored
    assert tr.accept(4990) == DUPLICATE
    assert tr.accept(3000) == TOO_OLD  # 2000 below: older than the window


def test_ids_that_restart_lower_are_stored_or_explained_never_silently_dropped():
    tr = TradeIdTracker(window=1000)
    for t in range(100_000, 100_500):
        tr.accept(t)
    verdicts = [tr.accept(t) for t in range(1, 51)]  # the exchange restarts its ids at 1
    assert verdicts == [TOO_OLD] * 50
    assert "older than the dedupe window" in tr.reason(1, TOO_OLD)


def test_one_bogus_id_far_ahead_does_not_move_the_window():
    tr = TradeIdTracker(max_jump=100_000)
    tr.accept(500)
    assert tr.accept(500 + 1_000_000) == TOO_FAR
    assert tr.last == 500 and tr.missing == []  # no gap opened, nothing moved
    assert [tr.accept(t) for t in range(501, 521)] == [NEW] * 20
    assert "ahead of the highest trade id seen (520)" in tr.reason(1_000_500, TOO_FAR)


def test_a_jump_rest_vouched_for_is_accepted():
    tr = TradeIdTracker(max_jump=1000)
    tr.accept(500)
    assert tr.check(50_000) == TOO_FAR
    tr.vouch(49_990)  # REST showed trade 49,990: the stream really is that far ahead
    assert tr.accept(50_000) == GAP and tr.missing == [[501, 49_999]]


def test_resume_from_counts_every_stored_id_as_seen_and_the_rest_as_a_gap():
    tr = TradeIdTracker(window=1000)
    tr.resume_from(7000)
    assert tr.check(7000) == DUPLICATE and tr.check(6500) == DUPLICATE and tr.check(5000) == TOO_OLD
    assert tr.accept(7010) == GAP and tr.missing == [[7001, 7009]]


def test_too_many_holes_give_up_the_oldest_and_its_ids_become_too_old_not_duplicates():
    tr = TradeIdTracker(max_ranges=2)
    for t in (1, 3, 5, 7):  # holes at 2, 4, 6: the first is given up
        tr.accept(t)
    assert tr.missing == [[4, 4], [6, 6]] and tr.abandoned == 1 and tr.given_up == [(2, 2)]
    assert tr.accept(2) == TOO_OLD  # it was never seen: not a duplicate
    assert tr.accept(4) == LATE


# -- the router, one hostile case at a time --------------------------------------------------


def test_an_invalid_frame_does_not_use_up_the_id_of_the_real_trade():
    router, emit, ch, _, _ = make_router()
    feed(router, [frame(trade(1)), frame(trade(2, price="not a price")), frame(trade(2))])
    assert stored_ids(emit) == [1, 2]
    assert len(emit.dead) == 1 and emit.dead[0][0] == "trade"
    assert ch.duplicates == 0


def test_a_trade_of_another_symbol_on_the_channel_is_a_dead_letter():
    router, emit, ch, _, _ = make_router()
    feed(router, [frame(trade(1)), frame(trade(2, symbol="ETHUSDT")), frame(trade(2))])
    assert stored_ids(emit) == [1, 2]
    (stream, reason, _), = emit.dead
    assert stream == "trade" and "'ETHUSDT'" in reason and "'BTCUSDT'" in reason


def test_a_ticker_with_a_non_integer_event_time_is_a_dead_letter():
    router, emit, _, _, _ = make_router()
    ticker = {"e": "1hTicker", "E": [1, 2], "s": "BTCUSDT"}
    feed(router, [frame(ticker, "btcusdt@ticker_1h")])
    (stream, reason, _), = emit.dead
    assert stream == "ticker_1h" and "event time 'E' is not an integer" in reason


@pytest.mark.parametrize(
    "data, why",
    [
        (trade(1) | {"t": True}, "integer trade id"),
        (trade(1) | {"s": 5}, "symbol 5"),
        (trade(1) | {"p": {"nested": [None, {"x": []}]}}, ""),
        (trade(1) | {"E": [1, 2]}, ""),
        (trade(1) | {"T": "soon"}, ""),
    ],
)
def test_wrong_json_types_anywhere_are_dead_letters(data, why):
    router, emit, _, _, _ = make_router()
    feed(router, [frame(data), frame(trade(1))])
    assert stored_ids(emit) == [1]  # the real trade 1 after it is stored
    (_, reason, _), = emit.dead
    assert why in reason and reason


def test_invalid_utf8_is_a_dead_letter_with_the_frame_kept():
    router, emit, _, _, _ = make_router()
    bad = b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTC\xff\xfeUSDT"}}'
    feed(router, [bad])
    (stream, reason, raw), = emit.dead
    assert stream == "trade" and "invalid UTF-8" in reason and raw == bad


def test_an_unexpected_error_while_routing_becomes_a_dead_letter():
    router, emit, ch, _, _ = make_router()

    class Exploding(dict):
        def get(self, key, default=None):
            raise RuntimeError("boom")

    ch.trades = None  # force the ticker path, whose dedupe set then fails
    ch.recent = Exploding()
    feed(router, [frame(trade(1))])
    (_, reason, _), = emit.dead
    assert reason.startswith("frame handling failed: ") or "frame handling failed" in reason


def test_ids_that_restart_lower_are_all_kept_or_dead_lettered():
    router, emit, ch, _, _ = make_router(window=1000)
    feed(router, [frame(trade(t)) for t in range(100_000, 100_200)])
    feed(router, [frame(trade(t, time_ms=200_000 + t)) for t in range(1, 51)])
    assert len(emit.records) == 200 and len(emit.dead) == 50
    assert all("older than the dedupe window" in r for _, r, _ in emit.dead)


def test_ids_that_restart_inside_the_window_are_not_taken_for_duplicates():
    """Reused ids newer than the newest trade cannot be repeats: dead letters, not duplicates."""
    router, emit, ch, _, _ = make_router()
    feed(router, [frame(trade(t)) for t in range(1000, 1100)])
    feed(router, [frame(trade(t, time_ms=5000 + t)) for t in range(1050, 1100)])  # same ids, later times
    assert len(emit.dead) == 50 and ch.duplicates == 0
    assert "went backwards" in emit.dead[0][1]


def test_one_bogus_id_a_million_ahead_then_20_real_trades_are_all_stored():
    router, emit, ch, gaps, too_far = make_router()
    feed(router, [frame(trade(t)) for t in range(1, 11)])
    feed(router, [frame(trade(10 + 1_000_000))])
    feed(router, [frame(trade(t)) for t in range(11, 31)])
    assert stored_ids(emit) == list(range(1, 31))
    (_, reason, _), = emit.dead
    assert "1000000 ahead" in reason and "max_id_jump=100000" in reason
    assert too_far == [1_000_010] and gaps == [] and ch.trades.missing == []


def test_repeats_from_a_rotation_overlap_are_counted_as_duplicates():
    router, emit, ch, _, _ = make_router()
    feed(router, [frame(trade(t)) for t in range(1, 21)] + [frame(trade(t)) for t in range(15, 21)])
    assert stored_ids(emit) == list(range(1, 21)) and ch.duplicates == 6 and emit.dead == []


# -- properties -------------------------------------------------------------------------------

WINDOW = 64
MAX_JUMP = 200


class Model:
    """What the tracker must do, written the slow and obvious way (sets)."""

    def __init__(self, resumed: int | None):
        self.seen: set[int] = set()
        self.resumed = resumed
        self.first: int | None = None
        self.high: int | None = resumed

    def is_seen(self, t: int) -> bool:
        return t in self.seen or (self.resumed is not None and t <= self.resumed)

    def verdict(self, t: int) -> int:
        high = self.high
        if high is None:
            return NEW
        if t > high:
            return TOO_FAR if t - high > MAX_JUMP else (NEW if t == high + 1 else GAP)
        lowest = self.resumed if self.resumed is not None else self.first
        if lowest is not None and lowest < t < high and not self.is_seen(t):
            return LATE  # a hole: still awaited by the gap filler, however old
        if t < max(0, high - WINDOW + 1):
            return TOO_OLD
        return DUPLICATE if self.is_seen(t) else LATE

    def accept(self, t: int) -> None:
        self.seen.add(t)
        if self.first is None:
            self.first = t
        if self.high is None or t > self.high:
            self.high = t

    def holes(self) -> set[int]:
        if self.high is None:
            return set()
        lowest = self.first if self.resumed is None else self.resumed
        if lowest is None:
            return set()
        return {t for t in range(lowest + 1, self.high) if not self.is_seen(t)}


def id_sequences():
    """Mostly in order, with repeats, reorders, restarts lower, and bogus jumps far ahead."""
    step = st.one_of(
        st.just(1).map(lambda d: ("next", d)),
        st.integers(-WINDOW * 3, WINDOW).map(lambda d: ("rel", d)),  # back (repeat, late, too old) or a short jump
        st.integers(MAX_JUMP + 1, 10 * MAX_JUMP).map(lambda d: ("rel", d)),  # bogus, far ahead
        st.integers(0, 50).map(lambda a: ("abs", a)),  # restart low
    )
    return st.tuples(st.one_of(st.none(), st.integers(0, 2000)), st.integers(0, 2000), st.lists(step, max_size=120))


@settings(max_examples=300, deadline=None)
@given(id_sequences())
def test_tracker_matches_the_set_model(case):
    resumed, start, steps = case
    tr = TradeIdTracker(max_ranges=10_000, window=WINDOW, max_jump=MAX_JUMP)
    model = Model(resumed)
    if resumed is not None:
        tr.resume_from(resumed)
    cur = start
    for kind, d in steps:
        cur = max(0, cur + d if kind != "abs" else d)
        want = model.verdict(cur)
        got = tr.check(cur)
        assert got == want, (cur, got, want)
        if got in (NEW, GAP, LATE):
            tr.commit(cur, got)
            model.accept(cur)
        missing = {t for lo, hi in tr.missing for t in range(lo, hi + 1)}
        assert missing == model.holes()
        assert all(a[1] < b[0] for a, b in zip(tr.missing, tr.missing[1:]))  # sorted, disjoint


int64 = st.integers(-(2**63), 2**63 - 1)
garbage = st.one_of(
    st.binary(max_size=40),
    st.just(b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTC\xffUSDT"}}'),
    st.builds(lambda v: frame(trade(7) | {"t": v}), st.one_of(st.booleans(), st.text(max_size=3), st.floats(), st.none())),
    st.builds(lambda v: frame(trade(7) | {"s": v}), st.one_of(int64, st.just("ETHUSDT"), st.lists(int64, max_size=2))),
    st.builds(lambda v: frame(trade(7) | {"E": v}), st.one_of(st.lists(int64, max_size=2), st.text(max_size=3))),
    st.builds(lambda v: frame(trade(7) | {"p": v}), st.one_of(st.just("abc"), st.dictionaries(st.text(max_size=2), st.none(), max_size=2))),
    st.builds(lambda v: frame(v), st.recursive(st.none() | int64 | st.text(max_size=3), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8)),
)


id_step = st.one_of(
    st.just(("rel", 1)),
    st.integers(-WINDOW * 3, WINDOW).map(lambda d: ("rel", d)),
    st.integers(MAX_JUMP + 1, 10 * MAX_JUMP).map(lambda d: ("rel", d)),
    st.integers(0, 50).map(lambda a: ("abs", a)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1000, 5000),
    st.lists(
        st.one_of(
            st.tuples(id_step, st.booleans()),  # True: an invalid frame with the same id comes first
            garbage.map(lambda g: (("garbage", g), False)),
        ),
        max_size=80,
    ),
)
def test_router_stores_each_valid_in_window_id_once_and_explains_every_other_frame(start, steps):
    router, emit, ch, _, _ = make_router(window=WINDOW, max_jump=MAX_JUMP)
    model = Model(None)
    cur, expect_stored, frames = start, [], []
    for (kind, v), invalid_first in steps:
        if kind == "garbage":
            frames.append(v)
            continue
        cur = max(0, cur + v if kind == "rel" else v)
        verdict = model.verdict(cur)
        if invalid_first and verdict != DUPLICATE:  # the schema rejects it: it must not use up the id
            frames.append(frame(trade(cur, price="abc")))
        if verdict in (NEW, GAP, LATE):
            model.accept(cur)
            expect_stored.append(cur)
        frames.append(frame(trade(cur)))
    feed(router, frames)  # never raises
    stored = stored_ids(emit)
    assert sorted(stored) == sorted(expect_stored) and len(stored) == len(set(stored))
    ticker_records = [r for s, r in emit.records if s != "trade"]
    assert len(stored) + len(ticker_records) + ch.duplicates + len(emit.dead) == len(frames)
    assert all(reason for _, reason, _ in emit.dead)
