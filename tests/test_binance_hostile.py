"""The Binance source against servers that misbehave on purpose, over real sockets.

A small aiohttp server plays Binance (``/stream`` answers the SUBSCRIBE, then plays the test's
script; ``/api/v3/historicalTrades`` serves the trades the test says exist), and the records go
through the engine's real validate + normalize chain. What must hold: every frame is stored,
counted as a duplicate or dead-lettered with a reason; the connection stays up; reconnect
delays grow when a server keeps closing on us; a Retry-After is honoured up to a cap.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import WSMsgType, web

from tickwire.plugins.binance.source import BinanceSource
from tests.test_binance_ids import STREAMS, EngineCollector, trade
from tests.test_binance_source import Ctx, run_source


class HostileBinance:
    """``script(ws)`` runs after each SUBSCRIBE is answered; ``rest_ids`` are the trade ids the
    REST API has (rows shaped like ``trade(id)``). Every handshake time lands in ``handshakes``."""

    def __init__(self, script, rest_ids=(), refuse: dict | None = None):
        self.script = script
        self.rest_ids = set(rest_ids)
        self.refuse = refuse  # headers of a 429 answer to every handshake
        self.handshakes: list[float] = []
        self.rest_requests: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> HostileBinance:
        app = web.Application()
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/api/v3/historicalTrades", self._historical)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def source(self, **options) -> BinanceSource:
        opts = {"url": self.url.replace("http", "ws"), "rest_url": self.url, "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 1.0, "gap_fill_grace_seconds": 0.1, **options}
        return BinanceSource("binance", opts, Ctx(STREAMS))

    async def _stream(self, request: web.Request):
        self.handshakes.append(time.monotonic())
        if self.refuse is not None:
            return web.Response(status=429, headers=self.refuse, text="Too many requests")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type is WSMsgType.TEXT and "SUBSCRIBE" in msg.data
        await ws.send_str(orjson.dumps({"result": None, "id": orjson.loads(msg.data)["id"]}).decode())
        await self.script(ws)
        return ws

    async def _historical(self, request: web.Request):
        q = request.query
        self.rest_requests.append(dict(q))
        start, limit = int(q["fromId"]), int(q.get("limit", 500))
        rows = []
        for t in range(start, start + limit):
            if t in self.rest_ids:
                p = trade(t)
                rows.append({"id": t, "price": p["p"], "qty": p["q"], "quoteQty": "1", "time": p["T"],
                             "isBuyerMaker": p["m"], "isBestMatch": True})
        return web.Response(body=orjson.dumps(rows), content_type="application/json")


def send(ws, data, channel="btcusdt@trade"):
    return ws.send_bytes(b"") if data is None else ws.send_str(orjson.dumps({"stream": channel, "data": data}).decode())


async def stay_open(ws):
    async for _ in ws:
        pass


def stored(emit) -> list[int]:
    return [p["t"] for s, p in emit.records if s == "trade"]


def test_a_ticker_with_E_as_a_list_and_an_invalid_utf8_frame_are_dead_letters_and_the_connection_stays():
    async def script(ws):
        await send(ws, {"e": "1hTicker", "E": [1, 2], "s": "BTCUSDT"}, "btcusdt@ticker_1h")
        await ws.send_frame(b'{"stream":"btcusdt@trade","data":{"s":"BTC\xff\xfeUSDT"}}', WSMsgType.TEXT)
        for t in range(1, 6):
            await send(ws, trade(t))
        await stay_open(ws)

    async def go():
        async with HostileBinance(script) as server:
            src, emit = server.source(), EngineCollector()
            await run_source(src, emit, 1.5, until=lambda: len(emit.records) >= 5)
            return src, emit, server

    src, emit, server = asyncio.run(go())
    assert stored(emit) == [1, 2, 3, 4, 5]
    reasons = [r for _, r, _ in emit.dead]
    assert len(reasons) == 2
    assert "event time 'E' is not an integer: [1, 2]" in reasons[0]
    assert "invalid UTF-8 in a text frame" in reasons[1]
    assert emit.dead[1][2] == b'{"stream":"btcusdt@trade","data":{"s":"BTC\xff\xfeUSDT"}}'  # the bytes are kept
    assert len(server.handshakes) == 1 and src.stats["reconnects"] == 0  # the connection stayed up


def test_an_eth_trade_on_the_btc_channel_is_a_dead_letter_and_the_btc_trade_with_that_id_is_kept():
    async def script(ws):
        await send(ws, trade(1))
        await send(ws, trade(2, symbol="ETHUSDT"))
        await send(ws, trade(2))
        await stay_open(ws)

    async def go():
        async with HostileBinance(script) as server:
            src, emit = server.source(), EngineCollector()
            await run_source(src, emit, 1.5, until=lambda: len(emit.records) >= 2)
            return emit

    emit = asyncio.run(go())
    assert stored(emit) == [1, 2] and [p["s"] for _, p in emit.records] == ["BTCUSDT", "BTCUSDT"]
    (_, reason, _), = emit.dead
    assert "'ETHUSDT'" in reason and "'BTCUSDT'" in reason


def test_one_bogus_id_a_million_ahead_then_20_real_trades_are_all_stored():
    async def script(ws):
        for t in range(1, 11):
            await send(ws, trade(t))
        await send(ws, trade(1_000_010))
        for t in range(11, 31):
            await send(ws, trade(t))
        await stay_open(ws)

    async def go():
        async with HostileBinance(script, rest_ids=range(1, 31)) as server:
            src, emit = server.source(), EngineCollector()
            await run_source(src, emit, 3.0, until=lambda: len(emit.records) >= 30 and server.rest_requests)
            await asyncio.sleep(0.2)
            return src, emit, server

    src, emit, server = asyncio.run(go())
    assert stored(emit) == list(range(1, 31))
    (_, reason, _), = emit.dead
    assert "trade id 1000010 is 1000000 ahead" in reason
    assert server.rest_requests == [{"symbol": "BTCUSDT", "fromId": "1000010", "limit": "1"}]  # checked once
    assert "Binance's REST API does not have it" in src.ctx.log.text("warning")
    assert src.stats["gaps_detected"] == 0


def test_a_real_jump_beyond_max_id_jump_is_confirmed_over_rest_and_nothing_is_lost():
    """After a long downtime the stream really is far ahead: REST confirms the id, and the
    trades dead-lettered meanwhile are fetched again as part of the gap."""

    async def script(ws):
        for t in range(1, 11):
            await send(ws, trade(t))
        for t in range(5011, 5041):
            await send(ws, trade(t))
            await asyncio.sleep(0.02)
        await stay_open(ws)

    async def go():
        async with HostileBinance(script, rest_ids=range(1, 5041)) as server:
            src, emit = server.source(max_id_jump=1000), EngineCollector()
            await run_source(src, emit, 5.0, until=lambda: len(set(stored(emit))) >= 5040)
            return src, emit

    src, emit = asyncio.run(go())
    ids = stored(emit)
    assert sorted(ids) == list(range(1, 5041))  # each once
    assert emit.dead and all("max_id_jump=1000" in r for _, r, _ in emit.dead)
    assert "exists on Binance (REST)" in src.ctx.log.text("warning")
    assert src.stats["gap_trades_lost"] == 0


def test_repeated_policy_closes_reconnect_with_growing_delays():
    async def close_1008(ws):
        await send(ws, trade(1))
        await ws.close(code=1008, message=b"Policy violation")

    async def go():
        async with HostileBinance(close_1008) as server:
            src = server.source(backoff_initial_seconds=0.05, backoff_max_seconds=0.8)
            task = asyncio.create_task(src.run(EngineCollector()))
            await asyncio.sleep(3.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return src, server.handshakes

    src, stamps = asyncio.run(go())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # delays drawn from [d/2, d] with d = 0.05, 0.1, 0.2, 0.4, 0.8, 0.8…: each at least the last
    # one's base, so they never shrink (a fresh 0.025-0.05 s each time would give ~70 attempts)
    assert 5 <= len(stamps) <= 14, gaps
    assert all(later >= earlier * 0.9 for earlier, later in zip(gaps, gaps[1:4])), gaps
    assert gaps[3] >= 0.2
    assert "code 1008" in src.ctx.log.text("warning")


def test_a_handshake_retry_after_longer_than_the_cap_waits_the_cap_and_warns_once():
    async def never(ws):
        raise AssertionError("refused handshakes never get here")

    async def go():
        async with HostileBinance(never, refuse={"Retry-After": "100000"}) as server:
            src = server.source(retry_after_max_seconds=0.4)
            task = asyncio.create_task(src.run(EngineCollector()))
            await asyncio.sleep(1.9)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return src, server.handshakes

    src, stamps = asyncio.run(go())
    assert 3 <= len(stamps) <= 5
    assert all(b - a >= 0.4 for a, b in zip(stamps, stamps[1:]))
    warnings = src.ctx.log.text("warning")
    assert warnings.count("waiting at most retry_after_max_seconds=0.4s") == 1
    assert "Retry-After: 100000s" in warnings


def test_a_rest_retry_after_beyond_the_cap_reports_the_gap_lost_and_streaming_goes_on(simulator):
    sim = simulator(rate=300, drop_every=300, rest_429_every=1, retry_after=100000)
    src, emit = BinanceSource("binance", {"url": sim.ws_url, "rest_url": sim.rest_url, "backoff_initial_seconds": 0.05,
                                          "backoff_max_seconds": 0.2}, Ctx(STREAMS[:1])), EngineCollector()

    async def go():
        task = asyncio.create_task(src.run(emit))
        t0 = time.monotonic()
        while src.stats["gap_trades_lost"] == 0 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        lost_at, n_at = time.monotonic() - t0, len(emit.records)
        await asyncio.sleep(1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return lost_at, n_at

    lost_at, n_at = asyncio.run(go())
    assert src.stats["gap_trades_lost"] > 0 and lost_at < 5  # reported, not waited 27.8 h for
    assert len(emit.records) > n_at + 100  # the WebSocket kept streaming
    assert sim.stats()["rest_429"] == 1  # no request sent while banned
    warnings = src.ctx.log.text("warning")
    assert warnings.count("more than retry_after_max_seconds=300") == 1
    assert "gap only partly filled" in warnings
