"""The simulator's WebSocket endpoints: the handshake, client requests, and Binance's limits.

  ``/ws/<stream>[/<stream>…]``   raw events          ``/ws``      raw, then SUBSCRIBE
  ``/stream?streams=a/b/c``      combined wrapper    ``/stream``  combined, then SUBSCRIBE
  Requests: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY/GET_PROPERTY ``combined``.

Limits, enforced and counted in ``/_sim/stats`` (``limit_violations``): more than
``max_streams`` streams → HTTP 400 on the URL, or an error reply and close 1008 on SUBSCRIBE;
more than ``max_client_rate`` incoming frames (text, binary, ping, pong) in any 1 s window →
close 1008; a ping every ``ping_interval`` s and close 1008 when a ping stays unanswered
``pong_timeout`` s; close 1000 at ``max_age`` s.

Compression: with ``compression="deflate"`` a client's permessage-deflate offer is accepted
(its terms as aiohttp agreed them) and the connection compresses every data frame; otherwise
every offer is refused.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

import orjson
from aiohttp import WSMsgType, hdrs, web

from tickwire.plugins.binance.sim_config import STREAM_RE, WRITE_HIGH_WATER, now_ms
from tickwire.plugins.binance.sim_connections import Connection, DeflateConnection, Hub

class ConnectionFeed(Protocol):
    """What serves one connection by itself (a replay): told each stream the connection adds,
    and run as a task while it is open."""

    def subscribed(self, streams: list[str]) -> None: ...

    async def run(self) -> None: ...


class WebSocketEndpoint:
    """The aiohttp handler of ``/ws…`` and ``/stream``; ``per_connection`` (a replay) makes a
    :class:`ConnectionFeed` for each new connection when given, the live market reaches
    connections through the hub."""

    def __init__(self, hub: Hub, per_connection: Callable[[Connection], ConnectionFeed] | None = None):
        self.hub = hub
        self.cfg = hub.cfg
        self.per_connection = per_connection

    @staticmethod
    def _bad(msg: str) -> web.Response:
        return web.Response(status=400, body=orjson.dumps({"code": 2, "msg": msg}), content_type="application/json")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        if request.path.startswith("/ws"):
            combined = False
            names = [s for s in request.match_info.get("streams", "").split("/") if s]
        else:
            combined = True
            names = [s for s in request.query.get("streams", "").split("/") if s]
        names = list(dict.fromkeys(names))
        bad = [s for s in names if not STREAM_RE.match(s)]
        if bad:
            return self._bad(f"Invalid request: invalid stream name {bad[0]!r}")
        if len(names) > self.cfg.max_streams:
            hub.violation(None, "too-many-streams", f"{len(names)} streams in the URL")
            return self._bad(f"Invalid request: too many streams ({len(names)} > {self.cfg.max_streams})")
        deflate = self.cfg.compression == "deflate"
        ws = web.WebSocketResponse(autoping=False, compress=deflate, max_msg_size=2**20)
        await ws.prepare(request)
        if ws.compress:  # aiohttp accepted the client's offer: its answer says on which terms
            agreed = ws.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS, "")
            conn: Connection = DeflateConnection(
                hub, ws, request, combined, wbits=int(ws.compress),
                no_context_takeover="server_no_context_takeover" in agreed,
            )
        else:
            conn = Connection(hub, ws, request, combined)
        if conn.transport is not None:  # fewer pause/resume round trips when clients lag a little
            conn.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_HIGH_WATER // 4)
        hub.conns[conn.id] = conn
        hub.connections_total += 1
        added = hub.subscribe(conn, names)
        loop = asyncio.get_running_loop()
        conn.tasks.append(loop.create_task(self._keepalive(conn)))
        feed = self.per_connection(conn) if self.per_connection is not None else None
        if feed is not None:
            feed.subscribed(added)
            conn.tasks.append(loop.create_task(feed.run()))
        try:
            await self._receive(conn, feed)
        except ConnectionError:
            pass
        finally:
            conn.gone("client closed")
            for task in conn.tasks:
                task.cancel()
            if conn.close_task is not None:  # let our close code reach the client first
                await asyncio.wait([conn.close_task], timeout=6)
            hub.conns.pop(conn.id, None)
            hub.closed_conns.append(conn)
        return ws

    async def _receive(self, conn: Connection, feed: ConnectionFeed | None) -> None:
        ws, cfg = conn.ws, self.cfg
        loop = asyncio.get_running_loop()
        while not conn.closed:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            now = loop.time()
            conn.client_messages += 1
            recent = conn.recent
            recent.append(now)
            while recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) > conn.max_rate:
                conn.max_rate = len(recent)
            if len(recent) > cfg.max_client_rate:
                self.hub.violation(conn, "message-rate", f"{len(recent)} messages within 1 s")
                conn.close(1008, "Too many requests")
                return
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                conn.ping_outstanding = None
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self._request(conn, msg.data, feed)

    def _request(self, conn: Connection, data: str | bytes, feed: ConnectionFeed | None) -> None:
        try:
            req = orjson.loads(data)
        except orjson.JSONDecodeError:
            conn.reply({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None})
            return
        if not isinstance(req, dict):
            conn.reply({"error": {"code": 2, "msg": "Invalid request"}, "id": None})
            return
        rid = req.get("id")
        if not (rid is None or isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0)):
            conn.reply({"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}, "id": None})
            return
        method, params = req.get("method"), req.get("params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if (
                not isinstance(params, list)
                or not params
                or not all(isinstance(p, str) and STREAM_RE.match(p) for p in params)
            ):
                conn.reply({"error": {"code": 2, "msg": "Invalid request"}, "id": rid})
                return
            if method == "UNSUBSCRIBE":
                self.hub.unsubscribe(conn, params)
                conn.reply({"result": None, "id": rid})
                return
            total = len(set(conn.streams) | set(params))
            if total > self.cfg.max_streams:
                self.hub.violation(conn, "too-many-streams", f"SUBSCRIBE would make {total} streams")
                conn.reply({"error": {"code": 2, "msg": f"Invalid request: too many streams (max {self.cfg.max_streams})"}, "id": rid})
                conn.close(1008, "too many streams")
                return
            added = self.hub.subscribe(conn, params)
            conn.reply({"result": None, "id": rid})
            if feed is not None:
                feed.subscribed(added)
        elif method == "LIST_SUBSCRIPTIONS":
            conn.reply({"result": list(conn.streams), "id": rid})
        elif method in ("SET_PROPERTY", "GET_PROPERTY") and isinstance(params, list) and params and params[0] == "combined":
            if method == "GET_PROPERTY":
                conn.reply({"result": conn.combined, "id": rid})
            elif len(params) == 2 and isinstance(params[1], bool):
                conn.combined = params[1]
                conn.reply({"result": None, "id": rid})
            else:
                conn.reply({"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": rid})
        else:
            conn.reply({"error": {"code": 2, "msg": "Invalid request"}, "id": rid})

    async def _keepalive(self, conn: Connection) -> None:
        """Ping every ping_interval; close on a missing pong (1008) or at max_age (1000)."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_ping = start + cfg.ping_interval
        end_of_life = start + cfg.max_age
        try:
            while not conn.closed:
                wake = min(next_ping, end_of_life)
                if conn.ping_outstanding is not None:
                    wake = min(wake, conn.ping_outstanding + cfg.pong_timeout)
                await asyncio.sleep(max(0.0, wake - loop.time()))
                now = loop.time()
                if now >= end_of_life:
                    conn.close(1000, "connection max age reached")
                    return
                if conn.ping_outstanding is not None and now - conn.ping_outstanding >= cfg.pong_timeout:
                    self.hub.violation(conn, "pong-timeout", f"no pong within {cfg.pong_timeout:g} s")
                    conn.close(1008, "pong timeout")
                    return
                if now >= next_ping:
                    next_ping += cfg.ping_interval
                    if conn.ping_outstanding is None:
                        conn.ping_outstanding = now
                    conn.flush()
                    await conn.ws.ping(str(now_ms()).encode())
        except (ConnectionError, RuntimeError):
            conn.gone("transport closed")
