"""The Binance source: pure logic first, then against the real simulator (``tickwire simulate``
in a subprocess, see tests/fixtures/simulator.py). The emitter here only collects what the
source hands over; the source under test talks to the simulator over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

import jsonschema
import orjson
import pytest

from tickwire.framework.metrics import Metrics
from tickwire.framework.testing import stream_spec
from tickwire.plugins.binance.connection import combined_stream_url, send_rate
from tickwire.plugins.binance.frames import FrameRouter, ServerShutdown, build_channels
from tickwire.plugins.binance.gaps import DUPLICATE, GAP, LATE, NEW, RecentKeys, TradeIdTracker
from tickwire.framework.backoff import Backoff
from tickwire.plugins.binance.ratelimit import SlidingWindowLimiter, TokenBucket
from tickwire.plugins.binance.rest import BinanceRest, rest_trade_to_event
from tickwire.plugins.binance.source import CONFIG_SCHEMA, BinanceSource
from tickwire.plugins.binance.subscriptions import split_evenly
from tests.fixtures.simulator import serve_stream

# -- helpers ------------------------------------------------------------------------------------


class Collector:
    """The Emitter the engine would give the source: keeps everything it gets."""

    def __init__(self):
        self.records: list[tuple[str, dict, int]] = []
        self.dead: list[tuple[str | None, str, str | bytes]] = []

    def record_nowait(self, stream: str, payload: dict, received_ns: int) -> None:
        self.records.append((stream, payload, received_ns))  # accepted, nothing to wait for

    async def record(self, stream: str, payload: dict, received_ns: int) -> bool:
        self.record_nowait(stream, payload, received_ns)
        return True

    async def dead_letter(self, stream, reason, raw) -> None:
        self.dead.append((stream, reason, raw))


class LogRecorder:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def _log(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))

    def __getattr__(self, level):
        return self._log(level)

    def text(self, level: str | None = None) -> str:
        return "\n".join(e for lv, e, _ in self.lines if level is None or lv == level)


class Ctx:
    """The fields of RunContext a source reads, with a log that keeps every line."""

    def __init__(self, streams):
        self.streams = streams
        self.metrics = Metrics()
        self.log = LogRecorder()
        self.config = None
        self.config_dir = None
        self.resume: dict[str, dict[str, int]] = {}
        self.report_gap = None
        self.shard = None


def specs(symbols, kinds=("trade",)):
    schema = {"trade": "trade.schema.json", "ticker_1h": "ticker_1h.schema.json", "ticker": "ticker_24h.schema.json"}
    return [stream_spec(k, schema.get(k, "trade.schema.json"), symbols=list(symbols), source="binance") for k in kinds]


def make_source(sim, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"), kinds=("trade",), **options) -> BinanceSource:
    opts = {
        "url": sim.ws_url if sim else "ws://127.0.0.1:9",
        "rest_url": sim.rest_url if sim else "http://127.0.0.1:9",
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 1.0,
        "gap_fill_grace_seconds": 0.3,
        **options,
    }
    return BinanceSource("binance", opts, Ctx(specs(symbols, kinds)))


def quiet(src: BinanceSource) -> bool:
    """No trade id is missing and no gap filler is busy."""
    return not src.gaps.busy and all(not ch.trades.missing for ch in src.channels.values() if ch.trades)


async def run_source(src: BinanceSource, emit: Collector, seconds: float, settle: float = 10.0, until=None):
    """Run the source ``seconds``, then until it is quiet (no missing ids), then snapshot.

    Returns a copy of the records taken at a quiet moment (faults keep happening meanwhile)."""
    task = asyncio.create_task(src.run(emit))
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if task.done():
                task.result()
            if until is not None and until():
                break
            await asyncio.sleep(0.05)
        end = time.monotonic() + settle
        snapshot = None
        while time.monotonic() < end:
            if task.done():
                task.result()
            if quiet(src):
                snapshot = list(emit.records)
                break
            await asyncio.sleep(0.01)
        assert snapshot is not None, f"source never quiet: missing={[ch.trades.missing for ch in src.channels.values() if ch.trades]}"
        return snapshot
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def trade_ids(records) -> dict[str, list[int]]:
    ids = defaultdict(list)
    for stream, p, _ in records:
        if p.get("e") == "trade":
            ids[p["s"]].append(p["t"])
    return ids


def assert_consecutive(records, min_per_symbol: int = 20):
    ids = trade_ids(records)
    assert ids, "no trades received"
    for symbol, got in ids.items():
        assert len(got) == len(set(got)), f"{symbol}: duplicate trade ids {[i for i, n in Counter(got).items() if n > 1][:5]}"
        lo, hi = min(got), max(got)
        missing = sorted(set(range(lo, hi + 1)) - set(got))
        assert not missing, f"{symbol}: {len(missing)} trade ids missing, e.g. {missing[:5]}"
        assert len(got) >= min_per_symbol, f"{symbol}: only {len(got)} trades"
    return ids


def no_violations(stats: dict) -> None:
    assert stats["limit_violation_counts"] == {}, stats["limit_violations"][:5]


# -- pure logic ------------------------------------------------------------------------------------


def test_trade_id_tracker_sequence_gap_late_duplicate():
    tr = TradeIdTracker()
    assert [tr.accept(i) for i in (10, 11, 12)] == [NEW, NEW, NEW]
    assert tr.accept(12) == DUPLICATE
    assert tr.accept(17) == GAP  # 13..16 missing
    assert tr.missing == [[13, 16]]
    assert tr.accept(15) == LATE  # splits the range
    assert tr.missing == [[13, 14], [16, 16]]
    assert tr.accept(15) == DUPLICATE
    assert tr.accept(16) == LATE and tr.missing == [[13, 14]]
    assert tr.accept(13) == LATE and tr.accept(14) == LATE and tr.missing == []
    assert tr.accept(18) == NEW
    assert tr.accept(9) == LATE  # below the first id seen, unseen, inside the window: kept
    assert tr.accept(9) == DUPLICATE


def test_trade_id_tracker_ranges_take_forget_and_cap():
    tr = TradeIdTracker(max_ranges=2)
    tr.accept(1)
    tr.accept(5)  # 2..4
    tr.accept(10)  # 6..9
    assert tr.missing_in(3, 7) == [(3, 4), (6, 7)]
    assert tr.count_missing() == 7 and tr.count_missing(3, 7) == 4
    assert tr.take(8) and not tr.take(8) and not tr.take(5)
    assert tr.is_missing(9) and not tr.is_missing(8)
    assert tr.forget(3, 6) == 3 and tr.missing == [[2, 2], [7, 7], [9, 9]]
    tr.accept(20)  # a fourth range: the oldest is abandoned (cap 2 + the one just opened)
    assert len(tr.missing) <= 3 and tr.abandoned >= 1


def test_holes_the_tracker_drops_are_reported_lost_with_their_reason():
    """More holes open at once than the tracker keeps: the oldest is given up, and the source
    hands it to the engine as lost (trade_gaps, metric, warning) at its next metrics flush."""
    src = make_source(None, symbols=["BTCUSDT"])
    lost = []
    src.ctx.report_gap = lost.append
    ch = src.channels["btcusdt@trade"]
    ch.trades.max_ranges = 2
    for t in (1, 3, 5, 7):
        ch.trades.accept(t)
    src._flush_metrics()
    assert [(g.symbol, g.first_id, g.last_id, g.reason) for g in lost] == [("BTCUSDT", 2, 2, "too_many_gaps")]
    src._flush_metrics()
    assert len(lost) == 1, "each range is reported once"


def test_recent_keys_window():
    rk = RecentKeys(size=3)
    assert rk.add(1) and rk.add(2) and not rk.add(1)
    assert rk.add(3) and rk.add(4)  # evicts 1
    assert rk.add(1) and not rk.add(4)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_token_bucket_spaces_sends():
    clock = FakeClock()
    tb = TokenBucket(4.0, capacity=1.0, clock=clock)
    assert tb.try_take() == 0.0
    assert tb.try_take() == pytest.approx(0.25)
    clock.t += 0.25
    assert tb.try_take() == 0.0
    clock.t += 10  # never saves more than capacity
    assert tb.try_take() == 0.0 and tb.try_take() > 0


def test_token_bucket_async_rate():
    async def go():
        tb = TokenBucket(20.0, capacity=1.0)
        stamps = []
        for _ in range(11):
            await tb.take()
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(go())
    assert stamps[-1] - stamps[0] >= 0.5 - 0.01  # 10 intervals of 1/20 s
    assert min(b - a for a, b in zip(stamps, stamps[1:])) >= 0.05 - 0.005


def test_token_bucket_charge_delays_the_next_send():
    clock = FakeClock()
    tb = TokenBucket(4.0, capacity=1.0, clock=clock)
    tb.charge()  # a pong went out: the bucket is empty
    assert tb.try_take() == pytest.approx(0.25)
    tb.charge()  # another one: in debt
    assert tb.try_take() == pytest.approx(0.5)


def test_send_rate_leaves_room_for_pongs():
    assert send_rate(5) < 4.0  # so no 1 s window holds more than 4 of ours
    assert 1 / send_rate(5) > 0.25
    assert send_rate(1) > 0


def test_sliding_window_limiter():
    clock = FakeClock()
    lim = SlidingWindowLimiter(3, 300.0, clock=clock)
    assert [lim.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.try_acquire() == pytest.approx(300.0)
    clock.t += 299.0
    assert lim.try_acquire() == pytest.approx(1.0)
    clock.t += 1.0
    assert lim.try_acquire() == 0.0


def test_backoff_grows_caps_and_jitters():
    import random

    b = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for d, base in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert base * 0.5 <= d <= base
    b.reset()
    assert b.next_delay() <= 1.0


def test_split_evenly_respects_max():
    assert [len(g) for g in split_evenly(list(range(1500)), 1024)] == [750, 750]
    assert [len(g) for g in split_evenly(list(range(2048)), 1024)] == [1024, 1024]
    assert [len(g) for g in split_evenly(list(range(1025)), 1024)] == [513, 512]
    assert split_evenly([], 1024) == []
    assert sum(split_evenly(list(range(10)), 3), []) == list(range(10))


def test_combined_stream_url():
    assert combined_stream_url("wss://stream.binance.com:9443") == "wss://stream.binance.com:9443/stream"
    assert combined_stream_url("ws://127.0.0.1:1/") == "ws://127.0.0.1:1/stream"
    assert combined_stream_url("ws://h/ws") == "ws://h/stream"
    assert combined_stream_url("ws://h/stream") == "ws://h/stream"


def test_rest_trade_to_event_matches_wire_example():
    row = {"id": 28457, "price": "4.00000100", "qty": "12.00000000", "quoteQty": "48.000012",
           "time": 1499865549590, "isBuyerMaker": True, "isBestMatch": True}
    assert rest_trade_to_event("BNBBTC", row) == {
        "e": "trade", "E": 1499865549590, "s": "BNBBTC", "t": 28457, "p": "4.00000100",
        "q": "12.00000000", "T": 1499865549590, "m": True, "M": True,
    }


def test_options_schema_defaults_and_registration():
    jsonschema.Draft202012Validator.check_schema(CONFIG_SCHEMA)
    defaults = {key: prop["default"] for key, prop in CONFIG_SCHEMA["properties"].items()}
    jsonschema.validate(defaults, CONFIG_SCHEMA)
    assert defaults["max_streams_per_connection"] == 1024
    assert defaults["max_messages_per_second"] == 5
    assert defaults["rotate_after_seconds"] == 23.5 * 3600
    assert defaults["max_connection_attempts_per_5min"] == 300
    for key, prop in CONFIG_SCHEMA["properties"].items():
        assert prop.get("description"), f"option {key} has no description"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"max_streams_per_connection": 2000}, CONFIG_SCHEMA)

    from tickwire.framework.plugins import PluginManager

    pm = PluginManager()
    assert pm.sources["binance"].factory is BinanceSource


class FakeConn:
    def __init__(self):
        self.replies = []

    async def on_reply(self, msg, raw):
        self.replies.append(msg)


def test_router_routes_dedups_and_dead_letters():
    streams = specs(["BTCUSDT"], kinds=("trade", "ticker_1h"))
    channels = build_channels(streams, "binance")
    assert set(channels) == {"btcusdt@trade", "btcusdt@ticker_1h"}
    emit, gaps, conn = Collector(), [], FakeConn()
    router = FrameRouter(channels, emit, max_frame_bytes=2048, on_gap=gaps.append)

    def trade(t):
        return orjson.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "t": t,
                            "p": "1.0", "q": "1.0", "T": 1, "m": True, "M": True}}).decode()

    def ticker(e):
        return orjson.dumps({"stream": "btcusdt@ticker_1h", "data": {"e": "1hTicker", "E": e, "s": "BTCUSDT"}}).decode()

    async def go():
        for frame in [trade(1), trade(2), trade(2), trade(5), trade(3), ticker(100), ticker(100), ticker(101)]:
            await router.handle(frame, 7, conn)
        await router.binary_nowait(b'{"stream":"btcusdt@trade","data":{}}', 7, conn)  # a binary frame
        bad = [
            '{"stream":"btcusdt@trade","data":{"e":"trade"',  # truncated
            '{"stream":"btcusdt@trade","data":{"e":"trade","pad":"' + "x" * 3000 + '"}}',  # oversized
            '{"stream":"xrpusdt@trade","data":{"e":"trade"}}',  # unknown stream
            '{"stream":"btcusdt@trade","data":{"e":"mysteryEvent"}}',  # unknown event type
            '{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":"7"}}',  # no integer id
            '{"stream":"btcusdt@trade","data":[1]}',  # data not an object
            "[1,2]",
            '{"hello":1}',
        ]
        for frame in bad:
            await router.handle(frame, 7, conn)
        await router.handle('{"result":null,"id":1}', 7, conn)
        with pytest.raises(ServerShutdown):
            await router.handle('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}', 7, conn)

    asyncio.run(go())
    trades = [p["t"] for s, p, _ in emit.records if s == "trade"]
    assert trades == [1, 2, 5, 3]  # duplicate 2 dropped, late 3 accepted
    assert [p["E"] for s, p, _ in emit.records if s == "ticker_1h"] == [100, 101]
    assert channels["btcusdt@trade"].duplicates == 1 and channels["btcusdt@ticker_1h"].duplicates == 1
    assert gaps == [channels["btcusdt@trade"]] and channels["btcusdt@trade"].trades.missing == [[4, 4]]
    reasons = [r for _, r, _ in emit.dead]
    assert len(reasons) == 9
    expected = ["binary frame", "malformed JSON", "oversized frame", "unknown stream 'xrpusdt@trade'",
                "unexpected event type 'mysteryEvent'", "without an integer trade id", "'data' is missing or not",
                "a JSON list", "neither a combined-stream event nor a request reply"]
    for want, got in zip(expected, reasons):
        assert want in got, (want, got)
    assert [s for s, _, _ in emit.dead][:3] == ["trade", "trade", "trade"]  # stream found from the prefix
    assert conn.replies == [{"result": None, "id": 1}]


def test_channel_used_twice_is_an_error():
    streams = specs(["BTCUSDT"]) + [stream_spec("trade", symbols=["BTCUSDT"], source="binance")]
    streams[1].name = "trade_again"
    with pytest.raises(ValueError, match="btcusdt@trade"):
        build_channels(streams, "binance")


# -- against the simulator -------------------------------------------------------------------------


def test_drop_every_gaps_are_filled_over_rest(simulator):
    sim = simulator(rate=300, drop_every=300)
    src = make_source(sim)
    emit = Collector()
    records = asyncio.run(run_source(src, emit, 6.0))
    ids = assert_consecutive(records, min_per_symbol=100)
    st = sim.stats()
    assert st["drops"] >= 2
    assert src.stats["reconnects"] >= 2
    assert src.stats["gaps_filled"] >= 1 and src.stats["gap_trades_filled"] >= 1
    assert src.stats["gap_trades_lost"] == 0
    m = src.ctx.metrics
    assert m.value("tickwire_reconnects_total", source="binance") == src.stats["reconnects"]
    assert sum(m.value("tickwire_gap_trades_filled_total", symbol=s) for s in ids) == src.stats["gap_trades_filled"]
    assert sum(m.value("tickwire_gaps_detected_total", symbol=s) for s in ids) == src.stats["gaps_detected"]
    log = src.ctx.log.text()
    assert "gap detected: " in log and "gap filled: " in log and "connection lost" in log
    # the REST-filled payloads are the trades the simulator made
    sym, got = next(iter(ids.items()))
    truth = {r["id"]: r for r in sim.trades(sym, from_id=min(got), limit=len(got))}
    for _, p, _ in records:
        if p.get("s") == sym and p["t"] in truth:
            assert p == rest_trade_to_event(sym, truth[p["t"]]) | {"E": p["E"]}
    no_violations(st)


@pytest.mark.parametrize("sim_compression, negotiated", [("deflate", "permessage-deflate"), ("none", None)])
def test_deflate_delivers_every_trade_once_with_exact_decimals(simulator, sim_compression, negotiated):
    """compression: deflate against a simulator that compresses every frame, and against one that
    refuses the offer (then the frames simply come uncompressed): every trade, once, as sent."""
    sim = simulator(rate=2000, symbols="BTCUSDT", malformed_every=97, compression=sim_compression)
    src = make_source(sim, symbols=("BTCUSDT",), compression="deflate")
    emit = Collector()
    records = asyncio.run(run_source(src, emit, 3.0))
    ids = assert_consecutive(records, min_per_symbol=2000)["BTCUSDT"]
    sent = {t["id"]: t for t in sim.trades("BTCUSDT", from_id=min(ids), limit=len(ids))}
    for _, p, _ in records:
        t = sent[p["t"]]
        assert (p["p"], p["q"], p["m"], p["T"]) == (t["price"], t["qty"], t["isBuyerMaker"], t["time"])
    st = sim.stats()
    assert st["connections_total"] == 1 and st["connections"][0]["compression"] == negotiated
    assert src.stats["reconnects"] == 0 and src.stats["gaps_detected"] == 0
    # the malformed frames (binary and oversized ones too) arrive inflated and become dead letters
    assert emit.dead and sum(st["malformed_sent"].values()) >= len(emit.dead)
    assert any("oversized frame" in r for _, r, _ in emit.dead)
    no_violations(st)


def test_server_shutdown_reconnects_at_once(simulator):
    sim = simulator(rate=200, shutdown_every=150)
    src = make_source(sim, backoff_initial_seconds=5.0)  # a shutdown must not wait for backoff
    emit = Collector()
    records = asyncio.run(run_source(src, emit, 4.0))
    assert_consecutive(records, min_per_symbol=50)
    st = sim.stats()
    assert st["shutdown_notices"] >= 2
    assert src.stats["reconnects"] >= 2
    assert "serverShutdown" in src.ctx.log.text("warning") and "reconnecting now" in src.ctx.log.text("warning")
    no_violations(st)


def test_malformed_frames_become_dead_letters_and_connection_survives(simulator):
    sim = simulator(rate=100, malformed_every=15)
    # "depth" is a channel the simulator refuses: its SUBSCRIBE gets an error reply
    src = make_source(sim, symbols=("BTCUSDT", "ETHUSDT"), kinds=("trade", "ticker_1h", "depth"), subscribe_chunk_size=2)
    emit = Collector()
    records = asyncio.run(run_source(src, emit, 4.0))
    st = sim.stats()
    assert st["connections_total"] == 1  # never reconnected
    assert st["connections"][0]["close_reason"] == "client closed"  # we closed it when stopping
    assert src.stats["reconnects"] == 0
    sent = st["malformed_sent"]
    reasons = [r for _, r, _ in emit.dead]
    kinds = {
        "truncated": "malformed JSON",
        "binary": "binary frame",
        "oversized": "oversized frame",
        "unknown_event": "unexpected event type 'mysteryEvent'",
    }
    for kind, text in kinds.items():
        assert sent[kind] >= 1
        assert sum(text in r for r in reasons) == sent[kind], (kind, sent, reasons[:10])
    # chunks of 2 sorted channels: [btc@depth, btc@ticker_1h] [btc@trade, eth@depth] [eth@ticker_1h, eth@trade];
    # the two refused chunks are split, and only the depth channels stay refused
    refused = [r for r in reasons if "Binance refused request" in r]
    assert len(refused) == 4
    errors = src.ctx.log.text("error")
    assert "Binance refused to subscribe btcusdt@depth" in errors and "Binance refused to subscribe ethusdt@depth" in errors
    assert sorted(src.connections[0].refused) == ["btcusdt@depth", "ethusdt@depth"]
    got = {(s, p["s"]) for s, p, _ in records}
    assert got == {(k, sym) for k in ("trade", "ticker_1h") for sym in ("BTCUSDT", "ETHUSDT")}
    # bad_trade frames repeat an event already delivered (same id / same E): dropped as duplicates
    assert sent["bad_trade"] >= 1 and src.stats["duplicates_dropped"] + sum(c.duplicates for c in src.channels.values()) >= sent["bad_trade"]
    assert all(p.get("p") != "abc" and p.get("c") != "abc" for _, p, _ in records)
    assert_consecutive(records)
    no_violations(st)


def test_1500_streams_use_two_connections_within_the_message_rate(simulator):
    sim = simulator(rate=20)
    symbols = [f"S{i:03d}USDT" for i in range(500)]
    src = make_source(sim, symbols=symbols, kinds=("trade", "ticker_1h", "ticker"), subscribe_chunk_size=50)
    emit = Collector()

    def subscribed():
        conns = list(src.connections.values())
        return len(conns) == 2 and all(c.ready.is_set() for c in conns)

    t0 = time.monotonic()
    asyncio.run(run_source(src, emit, 30.0, until=subscribed))
    elapsed = time.monotonic() - t0
    assert [len(g) for g in src.groups] == [750, 750]
    st = sim.stats()
    conns = st["connections"]
    assert len(conns) == 2, conns
    assert sorted(c["streams"] for c in conns) == [750, 750]
    assert all(c["client_messages"] >= 15 for c in conns)  # 15 SUBSCRIBEs of 50 each
    assert max(c["max_client_msg_rate"] for c in conns) <= 4  # below 5/s, one spare for pongs
    assert elapsed >= 14 / 4  # 15 requests paced below 4/s take at least 3.5 s
    assert src.ctx.metrics.value("tickwire_connections_open", source="binance") == 0  # after stop
    no_violations(st)


def test_pongs_share_the_message_budget(simulator):
    # the simulator pings every second (Binance: every 20 s) while we send 18 SUBSCRIBEs
    sim = simulator(rate=20, ping_interval=1)
    symbols = [f"P{i:02d}USDT" for i in range(60)]
    src = make_source(sim, symbols=symbols, kinds=("trade", "ticker_1h", "ticker"), subscribe_chunk_size=10)
    emit = Collector()

    def subscribed():
        return bool(src.connections) and src.connections[0].ready.is_set()

    asyncio.run(run_source(src, emit, 30.0, until=subscribed))
    st = sim.stats()
    assert len(st["connections"]) == 1 and src.connections[0].pings_answered >= 3
    assert st["connections"][0]["max_client_msg_rate"] <= 5
    no_violations(st)


def test_rotation_overlaps_without_gaps_or_duplicates(simulator):
    sim = simulator(rate=200, ticker_interval=0.2)
    src = make_source(
        sim, symbols=("BTCUSDT", "ETHUSDT"), kinds=("trade", "ticker_1h"),
        rotate_after_seconds=1.5, rotate_overlap_seconds=0.3,
    )
    emit = Collector()
    records = asyncio.run(run_source(src, emit, 7.0))
    assert_consecutive(records, min_per_symbol=200)
    tickers = [(p["s"], p["E"]) for s, p, _ in records if s == "ticker_1h"]
    assert len(tickers) == len(set(tickers)) and tickers
    assert src.stats["rotations"] >= 2
    assert src.stats["reconnects"] == 0
    assert src.stats["gaps_detected"] == 0 and src.stats["gap_trades_filled"] == 0
    src._flush_metrics()
    assert src.stats["duplicates_dropped"] >= 1  # the overlap delivered twice, once kept
    assert src.ctx.metrics.value("tickwire_duplicates_dropped_total", stream="trade") >= 1
    st = sim.stats()
    assert st["connections_total"] >= 3 and st["rest_requests"] == st["rest_time_requests"]  # only clock checks
    assert all(c["close_reason"] in (None, "client closed") for c in st["connections"])
    no_violations(st)


def test_rest_429_is_honoured(simulator):
    sim = simulator(rate=50, rest_429_every=2, retry_after=1)

    async def go():
        import aiohttp

        async with aiohttp.ClientSession() as session:
            seen = []
            rest = BinanceRest(sim.rest_url, session, on_rate_limited=lambda status, s: seen.append((status, s)))
            await asyncio.sleep(0.5)  # let the market make some trades
            first = await rest.fetch("BTCUSDT", 1, 5)
            t0 = time.monotonic()
            second = await rest.fetch("BTCUSDT", first[0]["id"], 5)  # 2nd request: 429, then retried
            return first, second, time.monotonic() - t0, seen, rest

    first, second, elapsed, seen, rest = asyncio.run(go())
    assert first and second and second[0]["id"] == first[0]["id"]
    assert seen == [(429, 1.0)] and rest.requests == 3
    assert elapsed >= 1.0  # waited as Retry-After said
    assert sim.stats()["rest_429"] == 1


def test_gap_fill_survives_rest_429(simulator):
    sim = simulator(rate=300, drop_every=1500, rest_429_every=2, retry_after=1)
    src = make_source(sim)
    emit = Collector()
    records = asyncio.run(run_source(src, emit, 6.0, settle=20.0))
    assert_consecutive(records, min_per_symbol=100)
    assert sim.stats()["rest_429"] >= 1 and src.rest.rate_limited >= 1
    assert "Retry-After" in src.ctx.log.text("warning")
    assert src.stats["gap_trades_lost"] == 0


def test_gap_fill_off_reports_but_does_not_fetch(simulator):
    sim = simulator(rate=300, drop_every=300)
    src = make_source(sim, gap_fill=False)
    emit = Collector()

    async def go():
        task = asyncio.create_task(src.run(emit))
        await asyncio.sleep(4.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    assert src.stats["gaps_detected"] >= 1 and src.stats["gap_trades_filled"] == 0
    assert "gap_fill is off" in src.ctx.log.text("warning")
    assert sim.stats()["rest_requests"] == sim.stats()["rest_time_requests"]  # no trades fetched, only clock checks


def test_unreachable_binance_is_said_plainly_and_retried():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = BinanceSource(
        "binance",
        {"url": f"ws://127.0.0.1:{port}", "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
        Ctx(specs(["BTCUSDT"])),
    )

    async def go():
        task = asyncio.create_task(src.run(Collector()))
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    lines = [(lv, e, kw) for lv, e, kw in src.ctx.log.lines if "cannot reach Binance" in e]
    assert len(lines) >= 3  # kept retrying, one line per attempt
    for lv, event, kw in lines:
        assert lv == "warning" and "exc_info" not in kw
        assert "retrying in" in event and "tickwire simulate" in event and "TICKWIRE_BINANCE_URL" in event
        assert "Traceback" not in event
    assert src.stats["connects"] == 0


def test_handshake_429_waits_for_retry_after():
    """Binance answers the WebSocket handshake with 429/418 + Retry-After when we connect too
    often; the simulator has no such mode, so a one-route aiohttp server plays that part."""
    from aiohttp import web

    attempts = []

    async def refuse(request):
        attempts.append(time.monotonic())
        return web.Response(status=429, headers={"Retry-After": "1"}, text="Too many requests")

    async def go():
        runner, url = await serve_stream(refuse)
        src = BinanceSource("binance", {"url": url, "backoff_initial_seconds": 0.01}, Ctx(specs(["BTCUSDT"])))
        task = asyncio.create_task(src.run(Collector()))
        await asyncio.sleep(2.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        return src

    src = asyncio.run(go())
    assert 2 <= len(attempts) <= 3
    assert all(b - a >= 1.0 for a, b in zip(attempts, attempts[1:]))
    assert "HTTP 429" in src.ctx.log.text("warning") and "Retry-After" in src.ctx.log.text("warning")


def test_stop_reports_trades_still_missing():
    src = make_source(None, symbols=("BTCUSDT",))
    tracker = src.channels["btcusdt@trade"].trades
    tracker.accept(10)
    tracker.accept(15)
    src.gaps.report_unfilled()
    warnings = src.ctx.log.text("warning")
    assert "stopping with 4 BTCUSDT trades not fetched yet: ids 11..14" in warnings
