"""The Binance simulator, driven through ``tickwire simulate`` with real WebSocket clients."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import subprocess
import sys
import time
import urllib.error
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate

from tickwire.plugins.binance.decimal8 import fmt8, parse8
from tickwire.plugins.binance.market import Market
from tests.fixtures.simulator import REPOSITORY

# Binance's documentation examples of every frame the project speaks (tests/data/README.md).
WIRE = {
    json.loads(line)["what"].split(" (")[0]: json.loads(line)["frame"]
    for line in (REPOSITORY / "tests" / "data" / "binance-wire-examples.jsonl").read_text().splitlines()
    if line.strip()
}
TRADE_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
TICKER_24H_KEYS = ["e", "E", "s", "p", "P", "w", "x", "c", "Q", "b", "B", "a", "A", "o", "h", "l", "v", "q", "O", "C", "F", "L", "n"]
TICKER_1H_KEYS = ["e", "E", "s", "p", "P", "o", "h", "l", "c", "w", "v", "q", "O", "C", "F", "L", "n"]
DECIMAL8 = r"^-?[0-9]+\.[0-9]{8}$"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def recv_json(ws, timeout: float = 10.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def take(url: str, n: int, **kw) -> list[dict]:
    async with websockets.connect(url, **kw) as ws:
        return [await recv_json(ws) for _ in range(n)]


def test_key_orders_match_the_documented_wire_examples():
    assert list(WIRE["trade event"]) == TRADE_KEYS
    assert list(WIRE["24h ticker event"]) == TICKER_24H_KEYS
    assert list(WIRE["rolling window ticker"]) == TICKER_1H_KEYS


def test_raw_trade_stream_frames_have_the_binance_shape(simulator):
    sim = simulator(rate=200)
    frames = run(take(sim.url("btcusdt@trade", combined=False), 20))
    ids = [f["t"] for f in frames]
    assert ids == list(range(ids[0], ids[0] + 20))  # consecutive ids
    for f in frames:
        assert list(f) == TRADE_KEYS
        assert f["e"] == "trade" and f["s"] == "BTCUSDT" and f["M"] is True
        assert isinstance(f["m"], bool) and isinstance(f["E"], int) and isinstance(f["T"], int)
        for k in "pq":
            assert re.match(DECIMAL8, f[k]), f[k]


def test_combined_streams_wrap_events_and_tickers_match_the_trades(simulator):
    sim = simulator(rate=300, ticker_interval=0.2)
    url = sim.url("btcusdt@trade", "ethusdt@ticker", "solusdt@ticker_1h")

    async def collect():
        seen: dict[str, dict] = {}
        async with websockets.connect(url) as ws:
            while len(seen) < 3:
                frame = await recv_json(ws)
                assert list(frame) == ["stream", "data"]
                seen.setdefault(frame["stream"], frame["data"])
        return seen

    seen = run(collect())
    assert list(seen["btcusdt@trade"]) == TRADE_KEYS
    assert list(seen["ethusdt@ticker"]) == TICKER_24H_KEYS
    assert list(seen["solusdt@ticker_1h"]) == TICKER_1H_KEYS
    for stream, event in (("ethusdt@ticker", seen["ethusdt@ticker"]), ("solusdt@ticker_1h", seen["solusdt@ticker_1h"])):
        symbol = stream.split("@")[0].upper()
        assert event["s"] == symbol
        trades = [t for t in sim.trades(symbol) if event["F"] <= t["id"] <= event["L"]]
        assert len(trades) == event["n"] == event["L"] - event["F"] + 1
        prices = [Decimal(t["price"]) for t in trades]
        assert Decimal(event["o"]) == prices[0] and Decimal(event["c"]) == prices[-1]
        assert Decimal(event["h"]) == max(prices) and Decimal(event["l"]) == min(prices)
        volume = sum(Decimal(t["qty"]) for t in trades)
        quote = sum(Decimal(t["price"]) * Decimal(t["qty"]) for t in trades)
        assert Decimal(event["v"]) == volume
        assert abs(Decimal(event["q"]) - quote) <= Decimal("0.000000005")
        assert abs(Decimal(event["w"]) - quote / volume) <= Decimal("0.000000005")
        assert Decimal(event["p"]) == prices[-1] - prices[0]
        assert event["O"] % 60_000 == 0 and event["C"] == event["E"]
        assert all(event["O"] <= t["time"] <= event["C"] for t in trades)


def test_subscribe_list_unsubscribe_and_error_replies(simulator):
    sim = simulator(rate=200)

    async def session():
        async with websockets.connect(f"{sim.ws_url}/stream") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@ticker_1h"], "id": 1}))
            assert await recv_json(ws) == {"result": None, "id": 1}
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
            reply = await recv_json(ws)
            while "id" not in reply:
                reply = await recv_json(ws)
            assert reply == {"result": ["btcusdt@trade", "btcusdt@ticker_1h"], "id": 3}
            await asyncio.sleep(1.1)  # stay under 5 messages a second
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["BTCUSDT@trade"], "id": 4}))
            await ws.send(json.dumps({"method": "NOPE", "id": 5}))
            await ws.send("{not json")
            replies = []
            while len(replies) < 3:
                frame = await recv_json(ws)
                if "stream" not in frame:
                    replies.append(frame)
            assert replies == [
                {"error": {"code": 2, "msg": "Invalid request"}, "id": 4},
                {"error": {"code": 2, "msg": "Invalid request"}, "id": 5},
                {"error": {"code": 3, "msg": "Invalid JSON"}, "id": None},
            ]
            await asyncio.sleep(1.1)
            await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@ticker_1h"], "id": 6}))
            while (frame := await recv_json(ws)).get("id") != 6:
                pass
            assert frame == {"result": None, "id": 6}
            with pytest.raises(asyncio.TimeoutError):  # nothing more arrives
                await asyncio.wait_for(ws.recv(), 0.5)

    run(session())


def test_raw_endpoint_with_subscribe_sends_unwrapped_events(simulator):
    sim = simulator(rate=200)

    async def session():
        async with websockets.connect(f"{sim.ws_url}/ws") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["xrpusdt@trade"], "id": 7}))
            assert await recv_json(ws) == {"result": None, "id": 7}
            event = await recv_json(ws)
            assert event["e"] == "trade" and event["s"] == "XRPUSDT"  # any symbol works

    run(session())


def test_more_than_five_messages_a_second_disconnects(simulator):
    sim = simulator(rate=10)

    async def session():
        async with websockets.connect(sim.url()) as ws:
            for i in range(5):  # five is allowed
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            await asyncio.sleep(1.2)
            for i in range(7):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10 + i}))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            return closed.value

    closed = run(session())
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    stats = sim.stats()
    conn = stats["connections"][0]
    assert conn["max_client_msg_rate"] == 6 and conn["close_reason"] == "Too many requests"
    assert stats["limit_violation_counts"] == {"message-rate": 1}


def test_stream_limit_per_connection(simulator):
    sim = simulator(rate=50)
    streams = [f"s{i:04d}usdt@trade" for i in range(1025)]

    async def session():
        with pytest.raises(InvalidStatus) as rejected:
            async with websockets.connect(f"{sim.ws_url}/stream?streams={'/'.join(streams)}"):
                pass
        assert rejected.value.response.status_code == 400
        async with websockets.connect(f"{sim.ws_url}/stream") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": streams[:1024], "id": 1}))
            assert await recv_json(ws) == {"result": None, "id": 1}
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": streams[1024:], "id": 2}))
            while (reply := await recv_json(ws)).get("id") != 2:
                pass
            assert reply["error"]["code"] == 2
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)

    run(session())
    stats = sim.stats()
    assert stats["limit_violation_counts"]["too-many-streams"] == 2 and stats["internal_errors"] == 0


def test_ping_is_sent_and_a_missing_pong_closes(simulator):
    sim = simulator(rate=5, ping_interval=0.3, pong_timeout=1.0)

    async def session():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(sim.url(), autoping=False) as ws:  # answers pings
                pings = 0
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    msg = await ws.receive(timeout=2)
                    if msg.type is aiohttp.WSMsgType.PING:
                        pings += 1
                        await ws.pong(msg.data)
                assert pings >= 4 and not ws.closed
            async with http.ws_connect(sim.url(), autoping=False) as ws:  # never answers
                start = time.monotonic()
                while (msg := await ws.receive(timeout=5)).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    pass
                return msg, time.monotonic() - start

    msg, waited = run(session())
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008 and msg.extra == "pong timeout"
    assert 1.0 <= waited < 5.0
    assert sim.stats()["limit_violation_counts"] == {"pong-timeout": 1}


def test_connection_max_age(simulator):
    sim = simulator(rate=5, max_age=1)

    async def session():
        start = time.monotonic()
        async with websockets.connect(sim.url()) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
        return closed.value, time.monotonic() - start

    closed, waited = run(session())
    assert closed.rcvd.code == 1000 and 0.9 <= waited < 5


def test_historical_trades_rest(simulator):
    sim = simulator(rate=500)
    time.sleep(1.0)
    first = sim.stats()["symbols"]["BTCUSDT"]["first_trade_id"]
    rows = sim.get("/api/v3/historicalTrades", symbol="BTCUSDT", fromId=first, limit=100)
    assert [r["id"] for r in rows] == list(range(first, first + 100))
    assert rows == sim.trades("BTCUSDT", from_id=first, limit=100)
    for r in rows:
        assert list(r) == ["id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"]
        assert Decimal(r["quoteQty"]) == Decimal(r["price"]) * Decimal(r["qty"])
    recent = sim.get("/api/v3/historicalTrades", symbol="BTCUSDT", limit=5)
    assert len(recent) == 5 and recent[-1]["id"] - recent[0]["id"] == 4
    assert sim.get("/api/v3/ping") == {}
    for query, code in (({"symbol": "NOPEUSDT"}, -1121), ({"symbol": "BTCUSDT", "limit": 1001}, -1130), ({}, -1102)):
        with pytest.raises(urllib.error.HTTPError) as err:
            sim.get("/api/v3/historicalTrades", **query)
        assert err.value.code == 400 and json.load(err.value)["code"] == code


def test_rest_429_fault_has_retry_after(simulator):
    sim = simulator(rate=10, rest_429_every=2, retry_after=3)
    assert sim.get("/api/v3/ping") == {}
    with pytest.raises(urllib.error.HTTPError) as err:
        sim.get("/api/v3/ping")
    assert err.value.code == 429 and err.value.headers["Retry-After"] == "3"
    assert sim.stats()["rest_429"] == 1


def test_market_runs_while_disconnected_and_rest_fills_the_gap(simulator):
    sim = simulator(rate=300)
    url = sim.url("btcusdt@trade", combined=False)
    before = run(take(url, 5))
    time.sleep(0.5)
    after = run(take(url, 1))
    gap_from, gap_to = before[-1]["t"] + 1, after[0]["t"] - 1
    assert gap_to >= gap_from
    filled = sim.get("/api/v3/historicalTrades", symbol="BTCUSDT", fromId=gap_from, limit=1000)
    assert [r["id"] for r in filled if r["id"] <= gap_to] == list(range(gap_from, gap_to + 1))


@pytest.mark.parametrize("offer, no_takeover, window", [
    (None, False, 15),  # websockets' default offer
    (ClientPerMessageDeflateFactory(server_max_window_bits=9), False, 9),
    (ClientPerMessageDeflateFactory(server_no_context_takeover=True, server_max_window_bits=10), True, 10),
], ids=["default-offer", "9-bit-window", "no-context-takeover-10-bits"])
def test_deflate_compresses_every_frame_on_the_terms_offered(simulator, offer, no_takeover, window):
    sim = simulator(rate=1000, compression="deflate")
    kw = {"extensions": [offer]} if offer else {}

    async def session():
        async with websockets.connect(sim.url(), compression="deflate", **kw) as ws:
            frames = [await recv_json(ws) for _ in range(300)]
            return frames, ws.response.headers.get("Sec-WebSocket-Extensions"), ws.protocol.extensions

    frames, header, extensions = run(session())
    assert header.split(";")[0] == "permessage-deflate"
    [ext] = extensions
    assert isinstance(ext, PerMessageDeflate)
    # the client inflates with the window and context rules it asked for: a message that refers
    # back past them fails to inflate and websockets closes the connection with 1007
    assert (ext.remote_no_context_takeover, ext.remote_max_window_bits) == (no_takeover, window)
    trades = [f["data"] for f in frames if f["stream"].endswith("@trade")]
    assert len(trades) == len(frames) == 300
    for t in trades:
        assert list(t) == TRADE_KEYS and re.match(DECIMAL8, t["p"]) and re.match(DECIMAL8, t["q"])
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        ids = [t["t"] for t in trades if t["s"] == symbol]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        sent = {r["id"]: r for r in sim.trades(symbol, from_id=ids[0], limit=len(ids))}
        assert all((t["p"], t["q"]) == (sent[t["t"]]["price"], sent[t["t"]]["qty"]) for t in trades if t["s"] == symbol)
    [conn] = sim.stats()["connections"]
    assert conn["compression"] == "permessage-deflate"
    # what went over the wire is compressed: well under the JSON the client got back
    plain = sum(len(orjson.dumps(f)) + 2 for f in frames)
    assert conn["bytes_sent"] / conn["frames_sent"] < 0.9 * plain / len(frames)


def test_without_the_option_deflate_offers_are_refused(simulator):
    sim = simulator(rate=200)

    async def session():
        async with websockets.connect(sim.url(), compression="deflate") as ws:
            await recv_json(ws)
            return ws.response.headers.get("Sec-WebSocket-Extensions"), ws.protocol.extensions

    assert run(session()) == (None, [])
    assert sim.stats()["connections"][0]["compression"] is None


async def read_until_closed(sim) -> tuple[list, ConnectionClosed]:
    """Every frame of one combined connection until the server ends it, and how it ended."""
    got = []
    async with websockets.connect(sim.url()) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(await recv_json(ws))
    return got, closed.value


def test_drop_every_closes_without_a_close_frame(simulator):
    sim = simulator(rate=300, drop_every=5)

    got, closed = run(read_until_closed(sim))
    assert len(got) == 5 and closed.rcvd is None  # abnormal closure (1006)
    stats = sim.stats()
    assert stats["drops"] == 1 and stats["internal_errors"] == 0


def test_shutdown_every_sends_server_shutdown_then_closes(simulator):
    sim = simulator(rate=300, shutdown_every=5)

    got, closed = run(read_until_closed(sim))
    assert len(got) == 6
    assert list(got[-1]) == ["stream", "data"] and got[-1]["stream"] == "!serverShutdown"
    assert list(got[-1]["data"]) == ["e", "E"] and got[-1]["data"]["e"] == "serverShutdown"
    assert closed.rcvd.code == 1001


def test_malformed_frames_cycle_and_consume_no_trade_ids(simulator):
    sim = simulator(rate=300, malformed_every=2)

    async def session():
        frames = []
        async with websockets.connect(sim.url("btcusdt@trade"), max_size=None) as ws:
            while len(frames) < 15:
                frames.append(await asyncio.wait_for(ws.recv(), 10))
        return frames

    frames = run(session())
    kinds, trades = [], []
    for i, frame in enumerate(frames):
        if i % 3 < 2:  # two good events, then one bad frame
            trades.append(json.loads(frame)["data"])
            continue
        if isinstance(frame, bytes):
            kinds.append("binary")
            continue
        try:
            obj = json.loads(frame)
        except json.JSONDecodeError:
            kinds.append("truncated")
            continue
        data = obj["data"]
        if len(frame) > 2**20:
            kinds.append("oversized")
        elif data["e"] != "trade":
            kinds.append("unknown_event")
        else:
            assert data["p"] == "abc" and data["t"] == trades[-1]["t"]
            kinds.append("bad_trade")
    assert kinds == ["truncated", "binary", "oversized", "unknown_event", "bad_trade"]
    ids = [t["t"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    stats = sim.stats()
    assert all(n >= 1 for n in stats["malformed_sent"].values())  # more may go out before our close lands
    assert stats["internal_errors"] == 0


def test_same_seed_same_market(simulator):
    a, b, c = simulator(rate=400, seed=42), simulator(rate=400, seed=42), simulator(rate=400, seed=43)
    time.sleep(1.0)

    def head(sim):
        return [(t["id"], t["price"], t["qty"], t["isBuyerMaker"]) for t in sim.trades("ETHUSDT", from_id=0, limit=50)]

    assert len(head(a)) == 50 and head(a) == head(b)
    assert head(a) != head(c)


def test_sim_drop_endpoint_and_clean_sigterm(simulator):
    sim = simulator(rate=100)

    async def session():
        async with websockets.connect(sim.url()) as ws:
            await recv_json(ws)
            assert await asyncio.to_thread(sim.drop) == 1
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()

    run(session())
    assert sim.stop() == 0
    assert "simulator stopped:" in sim.log


def test_record_then_replay(simulator, tmp_path):
    sim = simulator(rate=300, ticker_interval=0.2)
    capture = tmp_path / "capture.jsonl.gz"
    streams = "btcusdt@trade,ethusdt@trade,btcusdt@ticker"
    out = subprocess.run(
        [sys.executable, "-m", "tickwire.framework.cli", "record", "--url", sim.ws_url, "--streams", streams,
         "--out", str(capture), "--max-frames", "60", "--duration", "20"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "recorded 60 frames" in out.stdout
    with gzip.open(capture, "rt") as fh:
        lines = [json.loads(line) for line in fh]
    assert lines[0]["tickwire_capture"] == 1 and len(lines) == 61
    recorded = [json.loads(line["text"]) for line in lines[1:]]

    replay = simulator(replay=str(capture), speed=0)
    got = run(take(replay.url(*streams.split(",")), 60))
    assert got == recorded
    raw = run(take(replay.url("btcusdt@trade", combined=False), 3))
    assert raw == [f["data"] for f in recorded if f["stream"] == "btcusdt@trade"][:3]
    first = raw[0]["t"]
    rows = replay.get("/api/v3/historicalTrades", symbol="BTCUSDT", fromId=first, limit=3)
    assert [r["id"] for r in rows] == [first, first + 1, first + 2]


def test_replay_of_the_committed_sample_keeps_original_timing(simulator):
    sample = REPOSITORY / "tests" / "data" / "sample-capture.jsonl.gz"
    with gzip.open(sample, "rt") as fh:
        lines = [json.loads(line) for line in fh][1:]
    streams = sorted({line["stream"] for line in lines if line["stream"]})
    span = (lines[-1]["ns"] - lines[0]["ns"]) / 1e9
    replay = simulator(replay=str(sample), speed=4)
    start = time.monotonic()
    got = run(take(replay.url(*streams), len(lines)))
    took = time.monotonic() - start
    assert [orjson.dumps(f) for f in got] == [orjson.dumps(json.loads(line["text"])) for line in lines]
    assert span / 4 * 0.8 <= took <= span / 4 + 3



def test_replay_serves_clients_that_subscribe_after_connecting_from_each_streams_first_frame(simulator):
    """As tickwire connects: /stream, then SUBSCRIBE (here in two requests, a second apart). The
    replay clock starts with the first subscription; the stream subscribed later first gets the
    frames the replay already passed, then the rest — every frame of both, in captured order."""
    sample = REPOSITORY / "tests" / "data" / "sample-capture.jsonl.gz"
    with gzip.open(sample, "rt") as fh:
        lines = [json.loads(line) for line in fh][1:]
    first, later = "btcusdt@trade", "ethusdt@trade"
    want = {s: [json.loads(l["text"]) for l in lines if l["stream"] == s] for s in (first, later)}
    replay = simulator(replay=str(sample), speed=1)

    async def subscribe_in_two_steps() -> dict[str, list]:
        got: dict[str, list] = {first: [], later: []}
        async with websockets.connect(replay.ws_url + "/stream") as ws:
            await asyncio.sleep(0.5)  # connected, nothing subscribed: the replay waits
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": [first], "id": 1}))
            assert await recv_json(ws) == {"result": None, "id": 1}
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": [later], "id": 2}))
            while len(got[first]) < len(want[first]) or len(got[later]) < len(want[later]):
                msg = await recv_json(ws)
                if "stream" in msg:
                    got[msg["stream"]].append(msg)
        return got

    got = run(subscribe_in_two_steps())
    assert got == want


# -- the market model itself (no server) ---------------------------------------------------

def test_decimal_helpers():
    assert fmt8(4301257000000) == "43012.57000000"
    assert fmt8(-1500000) == "-0.01500000"
    assert parse8("43012.57") == 4301257000000 and parse8("0.00000001") == 1
    with pytest.raises(ValueError):
        parse8("abc")


def test_tickers_are_exact_over_many_minutes():
    market = Market(["BTCUSDT"], seed=5)
    st = market.symbols["BTCUSDT"]
    t0 = 1_700_000_000_000
    trades = [st.trade(t0 + i * 500) for i in range(20_000)]  # ~2.8 h of trades
    now = t0 + 20_000 * 500
    for window, event in ((3_600_000, market.ticker_1h(st, now)), (86_400_000, market.ticker_24h(st, now))):
        start = (now - window) - (now - window) % 60_000
        inside = [t for t in trades if t[3] >= start]
        assert event["O"] == start and event["F"] == inside[0][0] and event["L"] == inside[-1][0]
        assert event["n"] == len(inside)
        assert parse8(event["h"]) == max(t[1] for t in inside) and parse8(event["l"]) == min(t[1] for t in inside)
        assert parse8(event["v"]) == sum(t[2] for t in inside)
