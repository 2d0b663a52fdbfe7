"""The simulator's client connections: what is queued for each, how each one ends, and the
registry (:class:`Hub`) of who is subscribed to what and what went wrong.

A connection queues pre-built frames (:mod:`.sim_frames`) and the server flushes every dirty
connection once per batch, one ``write`` per transport. A client whose send buffer passes
64 MiB (paced mode) or which does not drain for 30 s (rate 0) is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from itertools import count

import orjson
from aiohttp import web

from tickwire.plugins.binance.market import Market
from tickwire.plugins.binance.sim_config import (
    DRAIN_TIMEOUT, KEEP_CLOSED, SLOW_CONSUMER_BYTES, STREAM_RE, SimConfig, now_ms,
)
from tickwire.plugins.binance.sim_faults import ConnectionFaults
from tickwire.plugins.binance.sim_frames import HEADERS, HEADERS_DEFLATE, RSV1, TABLED, TEXT, Deflater, ws_frame
from tickwire.plugins.binance.sim_universe import Universe


class Hub:
    """Every connection (open, and the last KEEP_CLOSED closed ones), the subscribers of each
    stream, and the tallies ``/_sim/stats`` reports."""

    def __init__(self, cfg: SimConfig, market: Market, universe: Universe):
        self.cfg = cfg
        self.market = market
        self.universe = universe
        self.faulty = bool(cfg.drop_every or cfg.shutdown_every or cfg.malformed_every)
        self.ids = count(1)
        self.conns: dict[int, Connection] = {}
        self.closed_conns: deque[Connection] = deque(maxlen=KEEP_CLOSED)
        self.connections_total = 0
        self.subs: dict[str, set[Connection]] = {}
        self.dirty: set[Connection] = set()
        self.background: set[asyncio.Task] = set()
        self.violations: deque[dict] = deque(maxlen=1000)
        self.violation_counts: dict[str, int] = {}
        self.malformed = {k: 0 for k in cfg.malformed_kinds}
        self.counters = {
            "drops": 0, "shutdown_notices": 0, "rest_requests": 0, "rest_429": 0, "rate_shortfall": 0, "internal_errors": 0,
        }

    def subscribe(self, conn: Connection, streams: list[str]) -> list[str]:
        """Add ``streams`` to the connection; returns those it did not have yet."""
        added = []
        for s in streams:
            if s in conn.streams:
                continue
            added.append(s)
            conn.streams[s] = None
            self.subs.setdefault(s, set()).add(conn)
            self.universe.subscribed(STREAM_RE.match(s).group(1).upper())
        return added

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
        """Count a client breaking one of Binance's limits (``limit_violations``)."""
        self.violations.append({"connection": conn.id if conn else None, "kind": kind, "detail": detail, "at": now_ms()})
        self.violation_counts[kind] = self.violation_counts.get(kind, 0) + 1

    def flush(self) -> None:
        """Write what every connection has queued."""
        dirty = self.dirty
        while dirty:
            dirty.pop().flush()


class Connection:
    """One client connection: subscriptions, counters, and the frames waiting to be written."""

    compression: str | None = None  # the negotiated extension (DeflateConnection), for the stats

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, request: web.Request, combined: bool):
        self.hub = hub
        self.id = next(hub.ids)
        self.ws = ws
        self.transport = request.transport
        self.protocol = request.protocol
        self.combined = combined
        self.path = request.path_qs if len(request.path_qs) <= 200 else request.path_qs[:200] + "…"
        self.streams: dict[str, None] = {}
        self.out: list[bytes] = []
        self.faults = ConnectionFaults(hub.cfg, hub.counters, hub.malformed) if hub.faulty else None
        self.sent = 0  # data messages (events)
        self.frames = 0  # every frame written by us
        self.bytes = 0
        self.client_messages = 0
        self.recent: deque[float] = deque()
        self.max_rate = 0
        self.ping_outstanding: float | None = None
        self.opened = time.monotonic()
        self.opened_at = now_ms()
        self.closed_at: int | None = None
        self.close_reason: str | None = None
        self.streams_at_close = 0
        self.close_task: asyncio.Task | None = None
        self.tasks: list[asyncio.Task] = []

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # -- writing ----------------------------------------------------------------------------
    def send_frame(self, body: bytes, opcode: int = TEXT) -> None:
        """Queue one frame; it goes out at the next flush."""
        n = len(body)
        if n < TABLED and opcode == TEXT:
            self.out.append(HEADERS[n])
            self.out.append(body)
        else:
            self.out.append(ws_frame(body, opcode))
        self.frames += 1
        self.hub.dirty.add(self)

    def data(self, raw: bytes, combined: bytes, stream: str) -> None:
        """Queue one event (``raw`` payload, ``combined`` wrapper) and apply the faults."""
        if self.close_reason is not None:
            return
        self.send_frame(combined if self.combined else raw)
        self.sent += 1
        if self.faults is not None:
            self.faults.after_message(self, self.sent, raw, stream)

    def reply(self, obj: object) -> None:
        if self.close_reason is None:
            self.send_frame(orjson.dumps(obj))
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
        if self.hub.cfg.rate and self.transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES:
            self.hub.violation(self, "slow-consumer", "send buffer over 64 MiB")
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
            self.hub.violation(self, "slow-consumer", f"did not drain for {DRAIN_TIMEOUT:g} s")
            self.drop("slow consumer")
        except (ConnectionError, RuntimeError):
            self.gone("transport closed")

    # -- ending -----------------------------------------------------------------------------
    def _end(self, reason: str) -> bool:
        if self.close_reason is not None:
            return False
        self.close_reason = reason
        self.closed_at = now_ms()
        self.streams_at_close = len(self.streams)
        self.flush()  # what was queued still goes out (flush ignores close_reason)
        self.hub.unsubscribe_all(self)
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
            self.hub.background.add(task)
            task.add_done_callback(self.hub.background.discard)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), 5)
        except Exception:  # noqa: BLE001 - the peer is gone either way
            if self.transport is not None:
                self.transport.abort()

    def shutdown_notice(self) -> None:
        """Binance's restart notice (``serverShutdown``), then close 1001."""
        data = b'{"e":"serverShutdown","E":%d}' % now_ms()
        self.send_frame(b'{"stream":"!serverShutdown","data":' + data + b"}" if self.combined else data)
        self.hub.counters["shutdown_notices"] += 1
        self.close(1001, "server shutdown")

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

    One message is one frame here, so RSV1 goes on every data frame; control frames (ping,
    pong, close) are written by aiohttp, never compressed. ``client_no_context_takeover`` only
    concerns what the client sends: aiohttp's reader inflates either way."""

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, request: web.Request, combined: bool,
                 wbits: int, no_context_takeover: bool):
        super().__init__(hub, ws, request, combined)
        self.compression = "permessage-deflate"
        self.wbits = wbits
        self.no_context_takeover = no_context_takeover
        self._deflater = Deflater(wbits, no_context_takeover)

    def send_frame(self, body: bytes, opcode: int = TEXT) -> None:
        data = self._deflater.compress(body)
        n = len(data)
        if n < TABLED and opcode == TEXT:
            self.out.append(HEADERS_DEFLATE[n])
            self.out.append(data)
        else:
            self.out.append(ws_frame(data, opcode, RSV1))
        self.frames += 1
        self.hub.dirty.add(self)
