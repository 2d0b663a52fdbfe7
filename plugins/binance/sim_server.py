"""The Binance-compatible simulator server (aiohttp, one port).

WebSocket (spot market streams as Binance documents them; examples in tests/data/binance-wire-examples.jsonl):
  ``/ws/<stream>[/<stream>…]``   raw events          ``/ws``      raw, then SUBSCRIBE
  ``/stream?streams=a/b/c``      combined wrapper    ``/stream``  combined, then SUBSCRIBE
  Requests: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY/GET_PROPERTY ``combined``.
  Streams: ``<symbol>@trade``, ``<symbol>@ticker`` (24h), ``<symbol>@ticker_1h``; any symbol.

Limits, enforced and counted in ``/_sim/stats`` (``limit_violations``):
  more than ``max_streams`` (1024) streams → HTTP 400 on the URL, or an error reply and close
  1008 on SUBSCRIBE; more than ``max_client_rate`` (5) incoming frames (text, binary, ping, pong)
  in any 1 s window → close 1008; a ping every ``ping_interval`` s and close 1008 when a ping
  stays unanswered ``pong_timeout`` s; close 1000 at ``max_age`` s; a client whose send buffer
  passes 64 MiB (paced mode) or which does not drain for 30 s (rate 0) is dropped.

REST: ``GET /api/v3/ping``, ``/api/v3/time``, ``/api/v3/trades``, ``/api/v3/historicalTrades``.

Control (tests and benchmarks; not Binance):
  ``GET /_sim/stats``                    symbols (first/last id, trades, retained_from),
                                         messages, connections (incl. closed), violations, faults
  ``GET /_sim/trades?symbol=S[&fromId=&limit=]``  every retained trade, historicalTrades shape
  ``POST /_sim/drop[?mode=abort|shutdown]``  end every connection now (gap tests)

Faults (per connection, counted in data messages = events sent to it):
  ``drop_every`` N: the TCP connection is closed (no close frame) right after the N-th message;
  ``shutdown_every`` N: a ``serverShutdown`` event then close 1001; ``malformed_every`` N: after
  every N-th message one bad frame, cycling through ``malformed_kinds``; ``rest_429_every`` N:
  every N-th REST call answers 429 with ``Retry-After``. Malformed frames never consume trade ids.

Compression (``compression="deflate"``, off by default): a client's permessage-deflate offer
(RFC 7692) is accepted and every data frame we write to it is compressed (raw deflate, RSV1 set,
the trailing 00 00 ff ff of the sync flush stripped), with the deflate context kept across
messages unless the client asked for ``server_no_context_takeover``, and the window that its
``server_max_window_bits`` allows. Control frames (ping, pong, close) are never compressed.
Without it every offer is refused and frames go out uncompressed.

Speed: events are rendered once with orjson and written straight to each transport as
pre-built WebSocket frames, one ``write`` per connection per batch.
"""

from __future__ import annotations

import asyncio
import re
import struct
import sys
import time
import traceback
import zlib
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from itertools import count

import orjson
from aiohttp import WSMsgType, hdrs, web

from tickwire.plugins.binance.capture import read_capture
from tickwire.plugins.binance.market import Market, SymbolState, parse8

STREAM_RE = re.compile(r"^([a-z0-9]{2,20})@(trade|ticker|ticker_1h)$")
MALFORMED_KINDS = ("truncated", "binary", "oversized", "unknown_event", "bad_trade")
# Opt-in (not in the default cycle): an event that is new to the client, so it passes duplicate
# detection and must be rejected by schema validation — a ticker with a fresh E and a last price
# that is not a decimal, or a trade without its id.
EXTRA_MALFORMED_KINDS = ("invalid_event",)
ALL_MALFORMED_KINDS = MALFORMED_KINDS + EXTRA_MALFORMED_KINDS
OVERSIZED_BYTES = 2**20 + 4096  # just over websockets' default max_size (1 MiB)
SLOW_CONSUMER_BYTES = 64 * 2**20
WRITE_HIGH_WATER = 2**20  # rate 0 waits for a client when this much is unsent
DRAIN_TIMEOUT = 30.0
KEEP_CLOSED = 1000  # closed connections kept in stats
COMPRESSIONS = ("none", "deflate")
DEFLATE_LEVEL = 1  # zlib's fastest, as aiohttp's own WebSocket writer uses
RSV1 = 0x40  # "this message is compressed" (RFC 7692), set on its first (here: only) frame
# text-frame headers for every payload size up to 4 KiB, so the hot path only appends
_HDR = [bytes((0x81, n)) if n < 126 else struct.pack("!BBH", 0x81, 126, n) for n in range(4096)]
_HDR_DEFLATE = [bytes((0x81 | RSV1, n)) if n < 126 else struct.pack("!BBH", 0x81 | RSV1, 126, n) for n in range(4096)]


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 9443
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    seed: int = 1
    rate: float = 50.0  # trades per second across all symbols; 0 = as fast as clients read
    ticker_interval: float = 1.0
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    max_age: float = 86400.0
    max_streams: int = 1024
    max_client_rate: int = 5
    drop_every: int = 0
    shutdown_every: int = 0
    malformed_every: int = 0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    rest_429_every: int = 0
    retry_after: int = 1
    history: int = 200_000
    replay: str | None = None
    speed: float = 1.0  # replay speed factor; 0 = as fast as possible
    compression: str = "none"  # "deflate": accept permessage-deflate offers


def ws_frame(payload: bytes, opcode: int = 0x1, rsv: int = 0) -> bytes:
    n = len(payload)
    first = 0x80 | rsv | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Connection:
    """One client connection: subscriptions, counters, and the frames waiting to be written."""

    compression: str | None = None  # the negotiated extension (DeflateConnection), for the stats

    def __init__(self, sim: Simulator, ws: web.WebSocketResponse, request: web.Request, combined: bool):
        self.sim = sim
        self.id = next(sim.ids)
        self.ws = ws
        self.transport = request.transport
        self.protocol = request.protocol
        self.combined = combined
        self.path = request.path_qs if len(request.path_qs) <= 200 else request.path_qs[:200] + "…"
        self.streams: dict[str, None] = {}
        self.out: list[bytes] = []
        self.sent = 0  # data messages (events)
        self.frames = 0  # every frame written by us
        self.bytes = 0
        self.client_messages = 0
        self.recent: deque[float] = deque()
        self.max_rate = 0
        self.malformed_next = 0
        self.ping_outstanding: float | None = None
        self.opened = time.monotonic()
        self.opened_at = _now_ms()
        self.closed_at: int | None = None
        self.close_reason: str | None = None
        self.streams_at_close = 0
        self.close_task: asyncio.Task | None = None
        self.tasks: list[asyncio.Task] = []

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # -- writing ----------------------------------------------------------------------------
    def _frame(self, body: bytes, opcode: int = 0x1) -> None:
        n = len(body)
        if n < 4096 and opcode == 0x1:
            self.out.append(_HDR[n])
            self.out.append(body)
        else:
            self.out.append(ws_frame(body, opcode))
        self.frames += 1
        self.sim.dirty.add(self)

    def data(self, raw: bytes, combined: bytes, stream: str) -> None:
        """Queue one event (``raw`` payload, ``combined`` wrapper) and apply the faults."""
        if self.close_reason is not None:
            return
        self._frame(combined if self.combined else raw)
        self.sent += 1
        if self.sim.faulty:
            self._faults(raw, stream)

    def reply(self, obj: object) -> None:
        if self.close_reason is None:
            self._frame(orjson.dumps(obj))
            self.flush()

    def flush(self) -> None:
        if not self.out:
            return
        data = b"".join(self.out)
        self.out.clear()
        if self.transport is None or self.transport.is_closing():
            self.gone("transport closed")
            return
        self.transport.write(data)
        self.bytes += len(data)
        if self.sim.cfg.rate and self.transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES:
            self.sim.violation(self, "slow-consumer", "send buffer over 64 MiB")
            self.drop("slow consumer")

    @property
    def paused(self) -> bool:
        return bool(getattr(self.protocol, "writing_paused", False))

    async def drain(self) -> None:
        helper = getattr(self.protocol, "_drain_helper", None)
        if helper is None:
            while self.paused and not self.closed:
                await asyncio.sleep(0.001)
            return
        try:
            await asyncio.wait_for(helper(), DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            self.sim.violation(self, "slow-consumer", f"did not drain for {DRAIN_TIMEOUT:g} s")
            self.drop("slow consumer")
        except (ConnectionError, RuntimeError):
            self.gone("transport closed")

    # -- ending -----------------------------------------------------------------------------
    def _end(self, reason: str) -> bool:
        if self.close_reason is not None:
            return False
        self.close_reason = reason
        self.closed_at = _now_ms()
        self.streams_at_close = len(self.streams)
        self.flush()  # what was queued still goes out (flush ignores close_reason)
        self.sim.unsubscribe_all(self)
        return True

    def gone(self, reason: str) -> None:
        """The peer went away (or the handler ended)."""
        self._end(reason)

    def drop(self, reason: str) -> None:
        """Close the TCP connection without a close frame (a network drop)."""
        if self._end(reason) and self.transport is not None:
            self.transport.close()

    def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close frame after everything queued."""
        if self._end(reason):
            task = self.close_task = asyncio.get_running_loop().create_task(self._close(code, reason))
            self.sim.background.add(task)
            task.add_done_callback(self.sim.background.discard)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), 5)
        except Exception:  # noqa: BLE001 - the peer is gone either way
            if self.transport is not None:
                self.transport.abort()

    def shutdown_notice(self) -> None:
        data = b'{"e":"serverShutdown","E":%d}' % _now_ms()
        self._frame(b'{"stream":"!serverShutdown","data":' + data + b"}" if self.combined else data)
        self.sim.counters["shutdown_notices"] += 1
        self.close(1001, "server shutdown")

    # -- faults -----------------------------------------------------------------------------
    def _faults(self, raw: bytes, stream: str) -> None:
        cfg = self.sim.cfg
        n = self.sent
        if cfg.malformed_every and n % cfg.malformed_every == 0:
            self._malformed(raw, stream)
        if cfg.shutdown_every and n % cfg.shutdown_every == 0:
            self.shutdown_notice()
        elif cfg.drop_every and n % cfg.drop_every == 0:
            self.sim.counters["drops"] += 1
            self.drop("drop-every")

    def _wrap(self, stream: str, data: bytes) -> bytes:
        return b'{"stream":"%s","data":%s}' % (stream.encode(), data) if self.combined else data

    def _malformed(self, raw: bytes, stream: str) -> None:
        kinds = self.sim.cfg.malformed_kinds
        kind = kinds[self.malformed_next % len(kinds)]
        self.malformed_next += 1
        body = self._wrap(stream, raw)
        if kind == "truncated":
            self._frame(body[: max(1, len(body) // 2)])
        elif kind == "binary":
            self._frame(body, opcode=0x2)
        elif kind == "oversized":
            obj = orjson.loads(raw)
            obj["pad"] = "x" * OVERSIZED_BYTES
            self._frame(self._wrap(stream, orjson.dumps(obj)))
        elif kind == "unknown_event":
            obj = orjson.loads(raw)
            event = {"e": "mysteryEvent", "E": _now_ms(), "s": obj.get("s", "")}
            self._frame(self._wrap(stream, orjson.dumps(event)))
        elif kind == "invalid_event":
            obj = orjson.loads(raw)
            if obj.get("e") == "trade":
                del obj["t"]
            else:
                obj["E"] += 1  # no real ticker of this symbol shares it: tickers come once a second
                obj["c"] = "abc"
            self._frame(self._wrap(stream, orjson.dumps(obj)))
        else:  # bad_trade: a copy of the event just sent with a price that is not a decimal
            obj = orjson.loads(raw)
            obj["p" if obj.get("e") == "trade" else "c"] = "abc"
            self._frame(self._wrap(stream, orjson.dumps(obj)))
        self.sim.malformed[kind] += 1

    def summary(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "combined": self.combined,
            "compression": self.compression,
            "open": not self.closed,
            "streams": self.streams_at_close if self.closed else len(self.streams),
            "messages_sent": self.sent,
            "frames_sent": self.frames,
            "bytes_sent": self.bytes,
            "client_messages": self.client_messages,
            "max_client_msg_rate": self.max_rate,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
        }


class DeflateConnection(Connection):
    """A connection that negotiated permessage-deflate: every data frame is compressed (RFC 7692).

    One message is one frame here, so RSV1 goes on every data frame. ``wbits`` is the window the
    client allowed (``server_max_window_bits``, 15 when it did not say); with
    ``server_no_context_takeover`` each message is flushed with Z_FULL_FLUSH, which empties the
    deflate window, so no message refers back to an earlier one. ``client_no_context_takeover``
    only concerns what the client sends: aiohttp's reader inflates either way."""

    def __init__(self, sim: Simulator, ws: web.WebSocketResponse, request: web.Request, combined: bool,
                 wbits: int, no_context_takeover: bool):
        super().__init__(sim, ws, request, combined)
        self.compression = "permessage-deflate"
        self.wbits = wbits
        self.no_context_takeover = no_context_takeover
        self._deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -wbits)
        self._flush_mode = zlib.Z_FULL_FLUSH if no_context_takeover else zlib.Z_SYNC_FLUSH

    def _frame(self, body: bytes, opcode: int = 0x1) -> None:
        z = self._deflate
        # a sync (or full) flush always ends in the empty stored block 00 00 ff ff: dropped
        data = (z.compress(body) + z.flush(self._flush_mode))[:-4]
        n = len(data)
        if n < 4096 and opcode == 0x1:
            self.out.append(_HDR_DEFLATE[n])
            self.out.append(data)
        else:
            self.out.append(ws_frame(data, opcode, RSV1))
        self.frames += 1
        self.sim.dirty.add(self)


@dataclass
class ReplayFrame:
    offset: float  # seconds since the first frame
    stream: str | None
    raw: bytes
    combined: bytes
    binary: bool = False


class Simulator:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.faulty = bool(cfg.drop_every or cfg.shutdown_every or cfg.malformed_every)
        self.market = Market([] if cfg.replay else list(cfg.symbols), cfg.seed, cfg.history)
        self.ids = count(1)
        self.conns: dict[int, Connection] = {}
        self.closed_conns: deque[Connection] = deque(maxlen=KEEP_CLOSED)
        self.subs: dict[str, set[Connection]] = {}
        self.dirty: set[Connection] = set()
        self.background: set[asyncio.Task] = set()
        self.tasks: list[asyncio.Task] = []
        self.violations: deque[dict] = deque(maxlen=1000)
        self.violation_counts: dict[str, int] = {}
        self.malformed = {k: 0 for k in self.cfg.malformed_kinds}
        self.counters = {
            "drops": 0, "shutdown_notices": 0, "rest_requests": 0, "rest_429": 0, "rate_shortfall": 0, "internal_errors": 0,
        }
        self.replay_frames: list[ReplayFrame] = []
        self.started = time.monotonic()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.connections_total = 0
        self._prefix: dict[str, bytes] = {}
        self._rest_weight: deque[tuple[float, int]] = deque()
        if cfg.replay:
            self._load_replay(cfg.replay)

    # -- lifecycle --------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/ws", self.ws_handler)
        r.add_get("/ws/{streams:.+}", self.ws_handler)
        r.add_get("/stream", self.ws_handler)
        r.add_get("/api/v3/ping", self.rest_ping)
        r.add_get("/api/v3/time", self.rest_time)
        r.add_get("/api/v3/trades", self.rest_trades)
        r.add_get("/api/v3/historicalTrades", self.rest_historical)
        r.add_get("/_sim/stats", self.sim_stats)
        r.add_get("/_sim/trades", self.sim_trades)
        r.add_post("/_sim/drop", self.sim_drop)
        return app

    async def start(self) -> int:
        self.runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=2,
            max_line_size=2**17,  # /stream?streams=… URLs of 1000+ streams
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when port=0
        loop = asyncio.get_running_loop()
        if not self.cfg.replay:
            self.tasks.append(loop.create_task(self._guard(self._market_loop)))
            self.tasks.append(loop.create_task(self._guard(self._ticker_loop)))
        return self.port

    async def _guard(self, loop_fn) -> None:
        """Run a background loop forever: a bug is printed and the loop restarted, never lost."""
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                self.counters["internal_errors"] += 1
                traceback.print_exc(file=sys.stderr)
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in list(self.conns.values()):
            conn.close(1001, "simulator stopping")
        if self.background:
            await asyncio.wait(list(self.background), timeout=3)
        if self.runner is not None:
            await self.runner.cleanup()

    # -- subscriptions ----------------------------------------------------------------------
    def subscribe(self, conn: Connection, streams: list[str]) -> None:
        for s in streams:
            if s in conn.streams:
                continue
            conn.streams[s] = None
            self.subs.setdefault(s, set()).add(conn)
            if not self.cfg.replay:
                self.market.ensure(STREAM_RE.match(s).group(1).upper())

    def unsubscribe(self, conn: Connection, streams: list[str]) -> None:
        for s in streams:
            if conn.streams.pop(s, 0) is None:
                subs = self.subs.get(s)
                if subs is not None:
                    subs.discard(conn)
                    if not subs:
                        del self.subs[s]

    def unsubscribe_all(self, conn: Connection) -> None:
        self.unsubscribe(conn, list(conn.streams))
        self.dirty.discard(conn)
        conn.out.clear()

    def violation(self, conn: Connection | None, kind: str, detail: str) -> None:
        self.violations.append({"connection": conn.id if conn else None, "kind": kind, "detail": detail, "at": _now_ms()})
        self.violation_counts[kind] = self.violation_counts.get(kind, 0) + 1

    def flush(self) -> None:
        dirty = self.dirty
        while dirty:
            dirty.pop().flush()

    # -- WebSocket --------------------------------------------------------------------------
    @staticmethod
    def _bad(msg: str) -> web.Response:
        return web.Response(status=400, body=orjson.dumps({"code": 2, "msg": msg}), content_type="application/json")

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
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
            self.violation(None, "too-many-streams", f"{len(names)} streams in the URL")
            return self._bad(f"Invalid request: too many streams ({len(names)} > {self.cfg.max_streams})")
        deflate = self.cfg.compression == "deflate"
        ws = web.WebSocketResponse(autoping=False, compress=deflate, max_msg_size=2**20)
        await ws.prepare(request)
        if ws.compress:  # aiohttp accepted the client's offer: its answer says on which terms
            agreed = ws.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS, "")
            conn: Connection = DeflateConnection(
                self, ws, request, combined, wbits=int(ws.compress),
                no_context_takeover="server_no_context_takeover" in agreed,
            )
        else:
            conn = Connection(self, ws, request, combined)
        if conn.transport is not None:  # fewer pause/resume round trips when clients lag a little
            conn.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_HIGH_WATER // 4)
        self.conns[conn.id] = conn
        self.connections_total += 1
        self.subscribe(conn, names)
        loop = asyncio.get_running_loop()
        conn.tasks.append(loop.create_task(self._keepalive(conn)))
        if self.cfg.replay:
            conn.tasks.append(loop.create_task(self._replay(conn)))
        try:
            await self._receive(conn)
        except ConnectionError:
            pass
        finally:
            conn.gone("client closed")
            for task in conn.tasks:
                task.cancel()
            if conn.close_task is not None:  # let our close code reach the client first
                await asyncio.wait([conn.close_task], timeout=6)
            self.conns.pop(conn.id, None)
            self.closed_conns.append(conn)
        return ws

    async def _receive(self, conn: Connection) -> None:
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
                self.violation(conn, "message-rate", f"{len(recent)} messages within 1 s")
                conn.close(1008, "Too many requests")
                return
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                conn.ping_outstanding = None
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self._request(conn, msg.data)

    def _request(self, conn: Connection, data: str | bytes) -> None:
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
                self.unsubscribe(conn, params)
                conn.reply({"result": None, "id": rid})
                return
            total = len(set(conn.streams) | set(params))
            if total > self.cfg.max_streams:
                self.violation(conn, "too-many-streams", f"SUBSCRIBE would make {total} streams")
                conn.reply({"error": {"code": 2, "msg": f"Invalid request: too many streams (max {self.cfg.max_streams})"}, "id": rid})
                conn.close(1008, "too many streams")
                return
            self.subscribe(conn, params)
            conn.reply({"result": None, "id": rid})
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
                    self.violation(conn, "pong-timeout", f"no pong within {cfg.pong_timeout:g} s")
                    conn.close(1008, "pong timeout")
                    return
                if now >= next_ping:
                    next_ping += cfg.ping_interval
                    if conn.ping_outstanding is None:
                        conn.ping_outstanding = now
                    conn.flush()
                    await conn.ws.ping(str(_now_ms()).encode())
        except (ConnectionError, RuntimeError):
            conn.gone("transport closed")

    # -- market -----------------------------------------------------------------------------
    def _deliver_trades(self, batch: list[tuple[SymbolState, tuple]]) -> int:
        subs = self.subs
        prefix = self._prefix
        trade_event = Market.trade_event
        dumps = orjson.dumps
        delivered = 0
        for st, trade in batch:
            stream = st.trade_stream
            conns = subs.get(stream)
            if conns:
                raw = dumps(trade_event(st, trade))
                pre = prefix.get(stream)
                if pre is None:
                    pre = prefix[stream] = b'{"stream":"%s","data":' % stream.encode()
                combined = pre + raw + b"}"
                for c in tuple(conns):
                    c.data(raw, combined, stream)
                delivered += 1
        return delivered

    def _trade_clients(self) -> list[Connection]:
        return [c for c in self.conns.values() if not c.closed and any(s.endswith("@trade") for s in c.streams)]

    async def _market_loop(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        if cfg.rate <= 0:
            await self._market_unpaced(loop)
            return
        tick = 0.01 if cfg.rate >= 100 else max(0.01, min(0.1, 1.0 / cfg.rate))
        start = loop.time()
        made = 0
        while True:
            await asyncio.sleep(tick)
            due = int((loop.time() - start) * cfg.rate) - made
            if due > cfg.rate:  # more than a second behind: skip ahead, report it
                self.counters["rate_shortfall"] += due - int(cfg.rate)
                made += due - int(cfg.rate)
                due = int(cfg.rate)
            n = min(due, 50_000)
            if n <= 0:
                continue
            self._deliver_trades(self.market.generate(n, _now_ms()))
            made += n
            self.flush()

    async def _market_unpaced(self, loop: asyncio.AbstractEventLoop) -> None:
        """Rate 0: batches as fast as the trade subscribers read them (the slowest sets the
        pace); with no trade subscriber an idle 1000 trades/s so the market still moves."""
        while True:
            clients = self._trade_clients()
            if not clients:
                self.market.generate(10, _now_ms())
                await asyncio.sleep(0.01)
                continue
            self._deliver_trades(self.market.generate(1000, _now_ms()))
            self.flush()
            for c in clients:
                if c.paused and not c.closed:
                    await c.drain()
            await asyncio.sleep(0)

    async def _ticker_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.ticker_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            now = _now_ms()
            for stream, conns in list(self.subs.items()):
                if not conns or stream.endswith("@trade"):
                    continue
                sym, kind = STREAM_RE.match(stream).groups()
                st = self.market.symbols.get(sym.upper())
                if st is None:
                    continue
                event = self.market.ticker_24h(st, now) if kind == "ticker" else self.market.ticker_1h(st, now)
                if event is None:
                    continue
                raw = orjson.dumps(event)
                combined = b'{"stream":"%s","data":%s}' % (stream.encode(), raw)
                for c in tuple(conns):
                    c.data(raw, combined, stream)
            self.flush()

    # -- replay -----------------------------------------------------------------------------
    def _load_replay(self, path: str) -> None:
        _, frames = read_capture(path)
        t0 = frames[0].ns if frames else 0
        for fr in frames:
            offset = (fr.ns - t0) / 1e9
            if fr.binary or fr.stream is None:
                if not fr.binary and _is_reply(fr.data):
                    continue  # SUBSCRIBE replies of the recording session are not events
                self.replay_frames.append(ReplayFrame(offset, None, fr.data, fr.data, fr.binary))
                continue
            try:
                obj = orjson.loads(fr.data)
            except orjson.JSONDecodeError:
                obj = None
            data = obj.get("data", obj) if isinstance(obj, dict) and "stream" in obj else obj
            if not isinstance(data, dict):
                self.replay_frames.append(ReplayFrame(offset, None, fr.data, fr.data))
                continue
            raw = orjson.dumps(data)
            combined = b'{"stream":"%s","data":%s}' % (fr.stream.encode(), raw)
            self.replay_frames.append(ReplayFrame(offset, fr.stream, raw, combined))
            if data.get("e") == "trade":
                self._load_trade(data)

    def _load_trade(self, d: dict) -> None:
        try:
            st = self.market.ensure(str(d["s"]))
            tid = int(d["t"])
            if st.generated and tid <= st.last_id:
                return
            if not st.generated:
                st.first_id = tid
            st.record(tid, parse8(d["p"]), parse8(d["q"]), int(d["T"]), bool(d["m"]))
            st.next_id = tid + 1
        except (KeyError, ValueError, TypeError):
            return  # schema-violating trades in the capture stay out of the REST history

    async def _replay(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        speed = self.cfg.speed
        start = loop.time()
        for i, fr in enumerate(self.replay_frames):
            if conn.closed:
                return
            if speed > 0:
                due = start + fr.offset / speed
                if due > loop.time():
                    conn.flush()
                    await asyncio.sleep(due - loop.time())
            elif i % 256 == 255:
                conn.flush()
                if conn.paused:
                    await conn.drain()
                await asyncio.sleep(0)
            if fr.stream is None:
                if not conn.closed:
                    conn._frame(fr.raw, 0x2 if fr.binary else 0x1)
            elif fr.stream in conn.streams:
                conn.data(fr.raw, fr.combined, fr.stream)
        conn.flush()

    # -- REST -------------------------------------------------------------------------------
    def _rest(self, weight: int) -> web.Response | None:
        """Count a REST call; the 429 answer when the fault says so."""
        self.counters["rest_requests"] += 1
        now = time.monotonic()
        self._rest_weight.append((now, weight))
        while self._rest_weight[0][0] < now - 60:
            self._rest_weight.popleft()
        n = self.cfg.rest_429_every
        if n and self.counters["rest_requests"] % n == 0:
            self.counters["rest_429"] += 1
            body = {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) request weight per minute is 6000."}
            return web.Response(
                status=429, body=orjson.dumps(body), content_type="application/json",
                headers={"Retry-After": str(self.cfg.retry_after)},
            )
        return None

    def _json(self, obj: object, status: int = 200) -> web.Response:
        used = sum(w for _, w in self._rest_weight)
        return web.Response(
            status=status, body=orjson.dumps(obj), content_type="application/json",
            headers={"X-MBX-USED-WEIGHT-1M": str(used)},
        )

    async def rest_ping(self, request: web.Request) -> web.Response:
        return self._rest(1) or self._json({})

    async def rest_time(self, request: web.Request) -> web.Response:
        return self._rest(1) or self._json({"serverTime": _now_ms()})

    def _trades_query(self, request: web.Request, default_limit: int, from_id_ok: bool) -> web.Response:
        q = request.query
        symbol = q.get("symbol")
        if not symbol:
            return self._json({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}, 400)
        st = self.market.symbols.get(symbol)
        if st is None:
            return self._json({"code": -1121, "msg": "Invalid symbol."}, 400)
        limit = default_limit
        if "limit" in q:
            if not q["limit"].isdigit():
                return self._json({"code": -1100, "msg": "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."}, 400)
            limit = int(q["limit"])
            if not 1 <= limit <= 1000:
                return self._json({"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}, 400)
        from_id = None
        if from_id_ok and q.get("fromId"):
            if not q["fromId"].isdigit():
                return self._json({"code": -1100, "msg": "Illegal characters found in parameter 'fromId'; legal range is '^[0-9]{1,20}$'."}, 400)
            from_id = int(q["fromId"])
        return self._json(trade_rows(st, from_id, limit))

    async def rest_trades(self, request: web.Request) -> web.Response:
        return self._rest(25) or self._trades_query(request, 500, from_id_ok=False)

    async def rest_historical(self, request: web.Request) -> web.Response:
        return self._rest(25) or self._trades_query(request, 500, from_id_ok=True)

    # -- control ----------------------------------------------------------------------------
    def stats(self) -> dict:
        symbols = {
            s: {
                "first_trade_id": st.first_id if st.generated else None,
                "last_trade_id": st.last_id if st.generated else None,
                "trades": st.generated,
                "retained_from": st.retained_from,
            }
            for s, st in self.market.symbols.items()
        }
        conns = [c.summary() for c in (*self.closed_conns, *self.conns.values())]
        conns.sort(key=lambda c: c["id"])
        return {
            "mode": "replay" if self.cfg.replay else "market",
            "seed": self.cfg.seed,
            "rate": self.cfg.rate,
            "compression": self.cfg.compression,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "symbols": symbols,
            "messages_sent": sum(c["messages_sent"] for c in conns),
            "frames_sent": sum(c["frames_sent"] for c in conns),
            "bytes_sent": sum(c["bytes_sent"] for c in conns),
            "connections_open": len(self.conns),
            "connections_total": self.connections_total,
            "connections": conns,
            "limit_violations": list(self.violations),
            "limit_violation_counts": dict(self.violation_counts),
            "malformed_sent": dict(self.malformed),
            **self.counters,
        }

    async def sim_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def sim_trades(self, request: web.Request) -> web.Response:
        st = self.market.symbols.get(request.query.get("symbol", ""))
        if st is None:
            return web.Response(status=404, body=orjson.dumps({"msg": "unknown symbol"}), content_type="application/json")
        from_id = int(request.query["fromId"]) if request.query.get("fromId", "").isdigit() else None
        limit = int(request.query["limit"]) if request.query.get("limit", "").isdigit() else None
        return web.Response(body=orjson.dumps(trade_rows(st, from_id, limit)), content_type="application/json")

    async def sim_drop(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "abort")
        ended = 0
        for conn in list(self.conns.values()):
            if conn.closed:
                continue
            ended += 1
            if mode == "shutdown":
                conn.shutdown_notice()
            else:
                conn.drop("dropped by /_sim/drop")
        return web.Response(body=orjson.dumps({"ended": ended}), content_type="application/json")


def _is_reply(text: bytes) -> bool:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "id" in obj and ("result" in obj or "error" in obj)


def trade_rows(st: SymbolState, from_id: int | None, limit: int | None) -> list[dict]:
    """Binance REST trades of a symbol from ``from_id`` (the oldest retained one if that was
    evicted), or the most recent ``limit`` when ``from_id`` is None."""
    if from_id is not None:
        index = bisect_left(st.ids, from_id)
        return st.rows_at(index, limit)
    return st.rows_at(max(0, len(st.ids) - limit), limit) if limit else st.rows_at(0, None)
