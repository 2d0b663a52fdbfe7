"""How a Binance connection ends, against small real WebSocket servers that misbehave on purpose.

The simulator behaves like Binance; these servers do what Binance should not: ignore our
keepalive pings, close with a code, drop the TCP connection, refuse the handshake."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType, web

from tickwire.plugins.binance.connection import Connection, ConnectionLost, HandshakeRefused
from tests.fixtures.simulator import serve_stream


class Router:
    """Stands in for the FrameRouter: collects text frames."""

    def __init__(self):
        self.frames: list[str] = []

    def handle_nowait(self, raw, received_ns, conn):
        raw = raw.decode() if isinstance(raw, bytes) else raw
        if '"result"' in raw:
            return conn.on_reply({"result": None, "id": 1}, raw)
        self.frames.append(raw)
        return None


async def serve(behaviour, autoclose: bool = True) -> tuple[web.AppRunner, str]:
    """A WebSocket server on a free port; ``behaviour(ws)`` runs after the SUBSCRIBE is answered.
    ``autoclose=False``: the behaviour answers our close frame itself."""

    async def handler(request: web.Request):
        if behaviour == "refuse":
            return web.Response(status=429, headers={"Retry-After": "7"}, text="Too many requests")
        ws = web.WebSocketResponse(autoping=False, autoclose=autoclose)
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type is WSMsgType.TEXT and "SUBSCRIBE" in msg.data
        await ws.send_str('{"result":null,"id":1}')
        await ws.send_str('{"stream":"btcusdt@trade","data":{"e":"trade","t":1}}')
        await behaviour(ws, request)
        return ws

    return await serve_stream(handler)


async def connect_and_read(behaviour, **options) -> tuple[Connection, BaseException | None]:
    runner, url = await serve(behaviour)
    conn = Connection(conn_id="t#0", url=url, channels=["btcusdt@trade"], router=Router(), log=None, **options)
    try:
        await conn.connect()
        conn.task = asyncio.create_task(conn.run())
        try:
            await asyncio.wait_for(conn.task, 10)
            ended = None
        except Exception as exc:  # noqa: BLE001 - how it ended is what the tests look at
            ended = exc
        await conn.close(drain_timeout=0)
        return conn, ended
    finally:
        await runner.cleanup()


async def ignore_pings(ws, _request):
    async for _msg in ws:  # reads our pings and never answers
        pass


async def close_with_code(ws, _request):
    await ws.close(code=1008, message=b"Too many requests")


async def drop_tcp(_ws, request):
    request.transport.abort()


def test_a_ping_without_pong_ends_the_connection_and_says_so():
    conn, ended = asyncio.run(connect_and_read(ignore_pings, ping_interval=0.2, ping_timeout=0.3))
    assert isinstance(ended, ConnectionLost)
    assert ended.describe() == "no pong within 0.3s of our ping"
    assert conn.router.frames == ['{"stream":"btcusdt@trade","data":{"e":"trade","t":1}}']


def test_a_close_frame_is_reported_with_its_code_and_reason():
    _conn, ended = asyncio.run(connect_and_read(close_with_code, ping_interval=None))
    assert isinstance(ended, ConnectionLost) and ended.code == 1008
    assert ended.describe() == "server closed the connection (code 1008: Too many requests)"


def test_a_dropped_tcp_connection_is_reported_as_such():
    _conn, ended = asyncio.run(connect_and_read(drop_tcp, ping_interval=None))
    assert isinstance(ended, ConnectionLost) and ended.code is None
    assert ended.describe() == "connection dropped without a close frame"


def test_a_refused_handshake_carries_the_status_and_retry_after():
    async def scenario():
        runner, url = await serve("refuse")
        conn = Connection(conn_id="t#0", url=url, channels=["btcusdt@trade"], router=Router(), log=None)
        try:
            with pytest.raises(HandshakeRefused) as refused:
                await conn.connect()
            assert conn.session.closed  # nothing left open after a failed connect
            return refused.value
        finally:
            await runner.cleanup()

    refused = asyncio.run(scenario())
    assert refused.status == 429 and refused.headers.get("Retry-After") == "7"
    assert str(refused) == "HTTP 429 during the WebSocket handshake"


def test_close_hands_over_every_frame_sent_before_the_servers_answer():
    async def three_more_then_answer(ws, _request):
        while (await ws.receive()).type is not WSMsgType.CLOSE:
            pass
        for t in (2, 3, 4):  # frames already on their way when our close frame arrived
            await ws.send_str(f'{{"stream":"btcusdt@trade","data":{{"e":"trade","t":{t}}}}}')
        await ws.close()

    async def scenario():
        runner, url = await serve(three_more_then_answer, autoclose=False)
        conn = Connection(conn_id="t#0", url=url, channels=["btcusdt@trade"], router=Router(), log=None)
        try:
            await conn.connect()
            conn.task = asyncio.create_task(conn.run())
            await asyncio.wait_for(conn.ready.wait(), 5)
            await conn.close()
            return conn
        finally:
            await runner.cleanup()

    conn = asyncio.run(scenario())
    assert conn.task.done() and conn.task.exception() is None  # run() returned: our close, no error
    assert [f.split('"t":')[1].rstrip("}") for f in conn.router.frames] == ["1", "2", "3", "4"]
    assert conn.session.closed
