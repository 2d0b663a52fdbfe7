"""The ``binance`` source: Binance spot WebSocket market streams (trades, tickers).

What it does, so the limits Binance enforces are never hit:

* subscribes every channel of the streams whose ``source`` is this one over combined-stream
  connections (``<url>/stream`` + SUBSCRIBE in chunks), at most ``max_streams_per_connection``
  (1024) per connection — 1500 channels become two connections of 750;
* paces every client message of a connection with one token bucket below
  ``max_messages_per_second`` (5), pongs to Binance's pings included;
* reconnects on any drop, HTTP 429/418 (honouring ``Retry-After`` up to
  ``retry_after_max_seconds``) and ``serverShutdown``, with exponential backoff and jitter that
  starts over only after a connection stayed up ``backoff_reset_after_seconds`` (a server that
  keeps closing on us with 1008 gets ever longer delays), and never more than
  ``max_connection_attempts_per_5min``;
* rotates each connection before Binance's 24 h cut-off: the replacement is opened and
  subscribed while the old one still delivers, then the old one is closed; the overlap's
  duplicates are dropped (trades by id per symbol within ``dedupe_window``, other events by
  ``E`` per channel), once the engine accepted the first copy;
* dead-letters, with a reason, trade ids older than the window and ids implausibly far ahead
  (``max_id_jump``; such an id is checked against REST, and a real jump is then accepted);
* resumes where the stores left off: each symbol's trade-id tracker starts at the last id the
  stores hold (``ctx.resume``), so the first live trade after a restart opens a gap over the
  downtime that is filled like any other;
* detects trade-id gaps (after a reconnect, or when one connection is behind another), reports
  them and fills them from ``GET /api/v3/historicalTrades``; a range it cannot fill (too large,
  older than REST serves, REST refusing) is reported to the engine (``ctx.report_gap``), which
  records it in ``trade_gaps``;
* sends frames it cannot use (binary, oversized, malformed, invalid UTF-8, unknown streams or
  events, a symbol that is not the channel's, wrong JSON types, error replies) to the
  dead-letter destination and keeps reading.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tickwire.framework.components import (
    GAP_FILL_OFF, GAP_NOT_SERVED, GAP_REST_ERROR, GAP_TOO_LARGE, GAP_TOO_MANY, SourceSpec, TradeGap,
)
from tickwire.framework.timestamps import iso_ns
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.binance.connection import Connection, ConnectionLost, HandshakeRefused
from tickwire.plugins.binance.frames import Channel, FrameRouter, ServerShutdown, build_channels
from tickwire.framework.backoff import Backoff
from tickwire.plugins.binance.ratelimit import SlidingWindowLimiter
from tickwire.plugins.binance.rest import HistoricalTrades, RestError, rest_trade_to_event, retry_after_seconds

DEFAULT_URL = "wss://stream.binance.com:9443"
PROBE_INTERVAL = 10.0  # seconds between two REST checks of far-ahead trade ids, per channel
DEFAULT_REST_URL = "https://api.binance.com"
OFFLINE_HINT = (
    "No internet here, or Binance blocked? Run `tickwire simulate` and point "
    "TICKWIRE_BINANCE_URL (and TICKWIRE_BINANCE_REST_URL) at the address it prints."
)

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "url": {
            "type": "string",
            "pattern": "^wss?://",
            "default": DEFAULT_URL,
            "description": "WebSocket base URL; tickwire connects to <url>/stream. For the simulator: "
            "ws://127.0.0.1:PORT (streams.yaml reads ${TICKWIRE_BINANCE_URL}).",
        },
        "rest_url": {
            "type": "string",
            "pattern": "^https?://",
            "default": DEFAULT_REST_URL,
            "description": "REST base URL used to fill trade-id gaps (GET /api/v3/historicalTrades).",
        },
        "gap_fill": {
            "type": "boolean",
            "default": True,
            "description": "Fetch trades missing after a reconnect from REST. Gaps are detected and "
            "reported either way.",
        },
        "gap_fill_grace_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 1.0,
            "description": "While two connections overlap (rotation), how long a hole in trade ids may "
            "wait for late trades from the other connection before it counts as a gap and is fetched. "
            "Holes after a reconnect are fetched at once.",
        },
        "gap_fill_max_trades": {
            "type": "integer",
            "minimum": 1,
            "default": 100000,
            "description": "Largest number of trades fetched for one gap; the rest of a longer gap is "
            "reported as lost.",
        },
        "rest_weight_per_minute": {
            "type": "number",
            "minimum": 25,
            "maximum": 6000,
            "default": 3000,
            "description": "REST request weight this source may spend per minute (Binance allows 6000 "
            "per IP; historicalTrades weighs 25).",
        },
        "max_streams_per_connection": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1024,
            "default": 1024,
            "description": "Channels per WebSocket connection (Binance: at most 1024). More channels "
            "are spread evenly over several connections.",
        },
        "subscribe_chunk_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1024,
            "default": 200,
            "description": "Channels per SUBSCRIBE request.",
        },
        "max_messages_per_second": {
            "type": "number",
            "minimum": 1,
            "default": 5,
            "description": "Binance's limit on client messages per second per connection (pings, pongs "
            "and SUBSCRIBEs count). tickwire sends its own requests below it, keeping one per second "
            "for pongs.",
        },
        "rotate_after_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 84600,
            "description": "Replace each connection after this long (default 23h30m; Binance closes "
            "connections at 24 h). The replacement overlaps the old one, so nothing is missed.",
        },
        "rotate_overlap_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 3.0,
            "description": "How long both connections run after the replacement is subscribed.",
        },
        "dedupe_window": {
            "type": "integer",
            "minimum": 1000,
            "maximum": 10000000,
            "default": 100000,
            "description": "Per symbol, how many trade ids below the highest one seen are remembered "
            "exactly: a repeat inside the window is dropped as a duplicate, an unseen id is stored. "
            "An id older than the window is dead-lettered with a reason (it cannot be told apart "
            "from a duplicate). Costs nothing while trades arrive in order.",
        },
        "max_id_jump": {
            "type": "integer",
            "minimum": 1000,
            "default": 100000,
            "description": "Largest plausible step forward in a symbol's trade ids (one reconnect's "
            "worth of trades on the busiest symbol). A trade further ahead of the highest id seen "
            "(or of the latest id REST showed) is dead-lettered and does not move the dedupe window, "
            "so one bogus id cannot blind the symbol; the source then asks REST whether that id "
            "exists, and if it does, accepts ids up to max_id_jump beyond it (the trades in between "
            "are a gap, filled over REST).",
        },
        "max_frame_bytes": {
            "type": "integer",
            "minimum": 1024,
            "default": 1048576,
            "description": "Frames larger than this become dead letters (first 64 KiB kept); the "
            "connection stays open. Binance events are well under 4 KiB.",
        },
        "backoff_initial_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 0.5,
            "description": "First reconnect delay; doubles (backoff_factor) per failed attempt.",
        },
        "backoff_max_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 60.0,
            "description": "Longest reconnect delay (a Retry-After from Binance may be longer, up to "
            "retry_after_max_seconds).",
        },
        "backoff_factor": {"type": "number", "minimum": 1, "default": 2.0, "description": "Backoff multiplier."},
        "backoff_reset_after_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 30.0,
            "description": "A connection that stayed up this long counts as healthy: the reconnect "
            "delay starts again from backoff_initial_seconds. One that is closed sooner (a policy "
            "close 1008, a server that drops us right after subscribing) makes the next delay "
            "grow.",
        },
        "retry_after_max_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 300.0,
            "description": "Longest Retry-After (HTTP 429/418) tickwire honours. A WebSocket handshake "
            "waits at most this long; a REST request that would have to wait longer is not sent: "
            "the gap it was filling is reported as lost, and the stream keeps going. Warned once.",
        },
        "backoff_jitter": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.5,
            "description": "Random share taken off each delay (0.5: between half and all of it).",
        },
        "max_connection_attempts_per_5min": {
            "type": "integer",
            "minimum": 1,
            "maximum": 300,
            "default": 300,
            "description": "Connection attempts allowed in any 5 minutes (Binance bans an IP above 300).",
        },
        "open_timeout_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 10.0,
            "description": "Time allowed for the TCP + TLS + WebSocket handshake.",
        },
        "ping_interval_seconds": {
            "type": ["number", "null"],
            "default": 60.0,
            "description": "Our own keepalive ping (Binance pings us every 20 s; we answer each). "
            "null disables it.",
        },
        "ping_timeout_seconds": {
            "type": ["number", "null"],
            "default": 30.0,
            "description": "Close and reconnect when our ping gets no pong in this time.",
        },
        "compression": {
            "enum": ["none", "deflate"],
            "default": "none",
            "description": "Offer permessage-deflate. Binance's frames are small and compress well, so "
            "deflate saves bandwidth but costs CPU to inflate every frame (see bench/README.md); "
            "none suits a data-centre link.",
        },
    },
}

DEFAULTS = {key: prop["default"] for key, prop in CONFIG_SCHEMA["properties"].items()}


class _NullLog:
    def __getattr__(self, _name):
        return lambda *a, **k: None


def _metric(metrics, name: str, **labels):
    """The labelled child of ``ctx.metrics.<name>``, or None if there is no such metric."""
    m = getattr(metrics, name, None)
    if m is None:
        return None
    try:
        return m.labels(**labels) if labels else m
    except Exception:  # noqa: BLE001 - a stand-in without labels()
        return m if hasattr(m, "inc") else None


def _inc(metrics, name: str, amount: float = 1, **labels) -> None:
    child = _metric(metrics, name, **labels)
    if child is not None and amount:
        child.inc(amount)


def _describe(exc: BaseException) -> str:
    """A one-line, traceback-free reason for a connection problem."""
    if isinstance(exc, ServerShutdown):
        return "Binance announced a server shutdown (serverShutdown)"
    if isinstance(exc, ConnectionLost):
        return exc.describe()
    if isinstance(exc, HandshakeRefused):
        return str(exc)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def split_evenly(items: list, max_per_group: int) -> list[list]:
    """``items`` in ``ceil(n / max)`` groups of nearly equal size, order kept."""
    if not items:
        return []
    groups = -(-len(items) // max_per_group)
    size, extra = divmod(len(items), groups)
    out, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class BinanceSource:
    """``factory(name, options, ctx)``; see the module docstring."""

    def __init__(self, name: str, options: dict, ctx):
        self.name = name
        self.ctx = ctx
        self.opts = {**DEFAULTS, **(options or {})}
        self.opts.pop("type", None)
        self.log = getattr(ctx, "log", None) or _NullLog()
        self.metrics = getattr(ctx, "metrics", None)
        self.channels: dict[str, Channel] = build_channels(
            getattr(ctx, "streams", []) or [], name, window=int(self.opts["dedupe_window"]), max_jump=int(self.opts["max_id_jump"])
        )
        self.groups: list[list[str]] = split_evenly(sorted(self.channels), int(self.opts["max_streams_per_connection"]))
        self.attempts = SlidingWindowLimiter(int(self.opts["max_connection_attempts_per_5min"]), 300.0)
        self.connections: dict[int, Connection] = {}  # slot → current connection
        self._live: set[Connection] = set()  # every connection not closed yet (2 per slot while rotating)
        self.stats = {
            "connects": 0,
            "reconnects": 0,
            "rotations": 0,
            "gaps_detected": 0,
            "gap_trades_missing": 0,
            "gaps_filled": 0,
            "gap_trades_filled": 0,
            "gap_trades_lost": 0,
            "duplicates_dropped": 0,
            "implausible_ids": 0,
        }
        self.router: FrameRouter | None = None
        self.rest: HistoricalTrades | None = None
        self._fillers: dict[str, asyncio.Task] = {}
        self._reported_hi: dict[str, int] = {}  # channel → highest missing id already reported
        self._open = 0
        self._overlaps = 0  # rotations in progress (two connections deliver the same channels)
        self._overlap_ended = float("-inf")
        self._probed_at: dict[str, float] = {}  # channel → when REST was last asked about a far-ahead id
        self._retry_after_capped = False  # warned that a Retry-After exceeded retry_after_max_seconds

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, emit) -> None:
        if not self.channels:
            self.log.warning("no stream uses this Binance source; it stays idle", source=self.name)
            await asyncio.Event().wait()
        o = self.opts
        self._resume_trackers()
        self.router = FrameRouter(self.channels, emit, int(o["max_frame_bytes"]), self._on_gap, self._on_too_far)
        timeout = aiohttp.ClientTimeout(total=30, connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.rest = HistoricalTrades(
                o["rest_url"],
                session,
                weight_per_minute=float(o["rest_weight_per_minute"]),
                backoff=Backoff(0.5, max(1.0, float(o["backoff_max_seconds"]))),
                log=self.log,
                retry_after_max=float(o["retry_after_max_seconds"]),
            )
            tasks = [asyncio.create_task(self._slot(i, group, emit), name=f"{self.name}-conn{i}") for i, group in enumerate(self.groups)]
            tasks.append(asyncio.create_task(self._flush_metrics_forever()))
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                for task in self._fillers.values():
                    task.cancel()
                await asyncio.gather(*tasks, *self._fillers.values(), return_exceptions=True)
                await asyncio.gather(*(c.close(drain_timeout=0.5) for c in list(self._live)), return_exceptions=True)
                self._flush_metrics()
                self._report_unfilled()
                child = _metric(self.metrics, "connections_open", source=self.name)
                if child is not None:
                    child.dec(self._open)
                self._open = 0

    # -- connections ---------------------------------------------------------------------------

    def _new_backoff(self) -> Backoff:
        o = self.opts
        return Backoff(
            float(o["backoff_initial_seconds"]),
            float(o["backoff_max_seconds"]),
            float(o["backoff_factor"]),
            float(o["backoff_jitter"]),
        )

    def _set_open(self, delta: int) -> None:
        self._open += delta
        child = _metric(self.metrics, "connections_open", source=self.name)
        if child is not None:
            child.inc(delta)

    async def _connect(self, slot: int, channels: list[str], backoff: Backoff, delay: float) -> Connection:
        """Connect (retrying until it works) and start reading; return the live connection."""
        o = self.opts
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            waited = await self.attempts.acquire()
            if waited > 1:
                self.log.warning(
                    f"waited {waited:.0f}s: at most {self.attempts.limit} connection attempts per 5 minutes",
                    source=self.name,
                )
            conn = Connection(
                conn_id=f"{self.name}#{slot}",
                url=o["url"],
                channels=channels,
                router=self.router,
                log=self.log,
                max_messages_per_second=float(o["max_messages_per_second"]),
                subscribe_chunk_size=int(o["subscribe_chunk_size"]),
                max_frame_bytes=int(o["max_frame_bytes"]),
                open_timeout=float(o["open_timeout_seconds"]),
                ping_interval=o["ping_interval_seconds"],
                ping_timeout=o["ping_timeout_seconds"],
                compression=o["compression"],
            )
            try:
                await conn.connect()
            except ValueError as exc:  # aiohttp.InvalidURL is one
                raise ValueError(f"source {self.name}: invalid url {o['url']!r}: {exc}") from None
            except (OSError, aiohttp.ClientError, HandshakeRefused, asyncio.TimeoutError, TimeoutError) as exc:
                delay = backoff.next_delay()
                status = exc.status if isinstance(exc, HandshakeRefused) else None
                if status in (429, 418):
                    retry = retry_after_seconds(exc.headers.get("Retry-After"), delay)
                    delay = max(delay, self._cap_retry_after(retry, slot))
                    what = "is rate limiting us" if status == 429 else "has temporarily banned this IP"
                    self.log.warning(
                        f"Binance {what} (HTTP {status}); reconnecting in {delay:.1f}s (Retry-After: {retry:g}s)",
                        source=self.name, connection=slot,
                    )
                elif status is not None:
                    self.log.warning(
                        f"Binance refused the connection (HTTP {status}); reconnecting in {delay:.1f}s",
                        source=self.name, connection=slot, url=conn.url,
                    )
                else:
                    self.log.warning(
                        f"cannot reach Binance at {conn.url} ({_describe(exc)}); retrying in {delay:.1f}s. {OFFLINE_HINT}",
                        source=self.name, connection=slot,
                    )
                continue
            conn.task = asyncio.create_task(conn.run(), name=f"{self.name}-read{slot}")
            self._live.add(conn)
            conn.task.add_done_callback(lambda _t, conn=conn: self._live.discard(conn))
            self.stats["connects"] += 1
            self._set_open(+1)
            self.log.info(f"connected to {conn.url}", source=self.name, connection=slot, streams=len(channels))
            return conn

    def _cap_retry_after(self, seconds: float, slot: int) -> float:
        """``seconds`` of a handshake's Retry-After, at most retry_after_max_seconds (warned once)."""
        cap = float(self.opts["retry_after_max_seconds"])
        if seconds <= cap:
            return seconds
        if not self._retry_after_capped:
            self._retry_after_capped = True
            self.log.warning(
                f"Binance asks to wait {seconds:g}s before reconnecting (Retry-After); waiting at most "
                f"retry_after_max_seconds={cap:g}s",
                source=self.name, connection=slot, retry_after=seconds,
            )
        return cap

    async def _slot(self, slot: int, channels: list[str], emit) -> None:
        """Keep one group of channels connected forever: reconnect, rotate.

        The reconnect delay grows (with jitter) while connections keep ending soon after they
        opened — a repeated policy close (1008) or a server that drops us right after the
        SUBSCRIBE is answered must not become a reconnect loop — and starts over only after a
        connection stayed up ``backoff_reset_after_seconds``."""
        o = self.opts
        rotate_after = float(o["rotate_after_seconds"])
        healthy_after = float(o["backoff_reset_after_seconds"])
        backoff = self._new_backoff()
        conn = await self._connect(slot, channels, backoff, 0.0)
        self.connections[slot] = conn
        while True:
            due = conn.opened_at + rotate_after - time.monotonic()
            done, _ = await asyncio.wait({conn.task}, timeout=max(0.0, due))
            if conn.task in done:
                exc = None if conn.task.cancelled() else conn.task.exception()
                self._set_open(-1)
                await conn.close(drain_timeout=0)
                healthy = conn.ready.is_set() and time.monotonic() - conn.opened_at >= healthy_after
                if healthy:
                    backoff.reset()
                # Binance's restart notice is answered at once (the connection attempts limiter
                # still bounds a server that repeats it); it does not reset the backoff
                immediate = isinstance(exc, ServerShutdown)
                delay = 0.0 if immediate else backoff.next_delay()
                reason = _describe(exc) if exc is not None else "connection ended"
                self.stats["reconnects"] += 1
                _inc(self.metrics, "reconnects", source=self.name)
                self.log.warning(
                    f"connection lost: {reason}; reconnecting {'now' if immediate else f'in {delay:.1f}s'}",
                    source=self.name, connection=slot,
                )
                conn = await self._connect(slot, channels, backoff, delay)
                self.connections[slot] = conn
                continue
            if conn.ready.is_set() and time.monotonic() - conn.opened_at >= healthy_after:
                backoff.reset()
            conn = await self._rotate(slot, channels, conn, backoff)

    async def _rotate(self, slot: int, channels: list[str], old: Connection, backoff: Backoff) -> Connection:
        """Open the replacement, let both run until it is subscribed (+ overlap), close the old."""
        age = time.monotonic() - old.opened_at
        self.log.info(
            f"rotating connection after {age / 3600:.2f} h (Binance closes at 24 h): opening its replacement first",
            source=self.name, connection=slot,
        )
        self._overlaps += 1
        try:
            return await self._rotate_overlapping(slot, channels, old, backoff)
        finally:
            self._overlaps -= 1
            self._overlap_ended = time.monotonic()

    async def _rotate_overlapping(self, slot: int, channels: list[str], old: Connection, backoff: Backoff) -> Connection:
        o = self.opts
        new = await self._connect(slot, channels, backoff, 0.0)
        self.connections[slot] = new
        ready_wait = asyncio.ensure_future(new.ready.wait())
        try:
            await asyncio.wait({ready_wait, new.task}, timeout=30.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready_wait.cancel()
        if new.ready.is_set():
            await asyncio.sleep(float(o["rotate_overlap_seconds"]))
        await old.close()
        self._set_open(-1)
        self.stats["rotations"] += 1
        self.log.info("rotation done: old connection closed", source=self.name, connection=slot)
        return new

    # -- implausible ids -----------------------------------------------------------------------

    def _on_too_far(self, ch: Channel, trade_id: int) -> None:
        """Called by the router when it dead-lettered ``trade_id`` as too far ahead: ask REST,
        at most once per PROBE_INTERVAL per channel, whether Binance has that trade."""
        self.stats["implausible_ids"] += 1
        key = f"probe:{ch.name}"  # kept with the fillers: cancelled with them at stop
        task = self._fillers.get(key)
        now = time.monotonic()
        if (task is not None and not task.done()) or now - self._probed_at.get(ch.name, float("-inf")) < PROBE_INTERVAL:
            return
        self._probed_at[ch.name] = now
        self._fillers[key] = asyncio.create_task(self._probe(ch, trade_id), name=f"{self.name}-probe-{ch.name}")

    async def _probe(self, ch: Channel, trade_id: int) -> None:
        """If Binance's REST API has trade ``trade_id``, the jump was real (a long downtime): let
        the tracker accept ids that far ahead; the dead-lettered ones fall into the gap that the
        next accepted trade opens, and are fetched over REST like any gap."""
        tracker = ch.trades
        ahead = trade_id - (tracker.last if tracker.last is not None else trade_id)
        try:
            rows = await self.rest.fetch(ch.symbol, trade_id, 1)
        except RestError as exc:
            self.log.warning(
                f"{ch.symbol} trade id {trade_id} is {ahead} ahead of the last one and REST cannot confirm it "
                f"({exc}); trades that far ahead stay dead letters until it can",
                source=self.name, symbol=ch.symbol, stream=ch.stream, trade_id=trade_id,
            )
            return
        row = rows[0] if rows and type(rows[0]) is dict else None
        if row is not None and row.get("id") == trade_id:
            tracker.vouch(trade_id)
            self.log.warning(
                f"{ch.symbol} trade id {trade_id}, {ahead} ahead of the last one, exists on Binance (REST): "
                "accepting trades from there; the ones in between are a gap filled over REST",
                source=self.name, symbol=ch.symbol, stream=ch.stream, trade_id=trade_id,
            )
        else:
            self.log.warning(
                f"ignored {ch.symbol} trade id {trade_id} ({ahead} ahead of the last one): Binance's REST API "
                "does not have it; it is in the dead letters",
                source=self.name, symbol=ch.symbol, stream=ch.stream, trade_id=trade_id,
            )

    # -- gaps ----------------------------------------------------------------------------------

    def _resume_trackers(self) -> None:
        """Seed each trade channel with the last id its stores hold. The first live trade then
        opens the gap last+1 … first_live-1 and the filler fetches it. Waiting for that trade
        (rather than asking REST for the newest id at once) costs no REST weight — 25 per
        symbol, minutes of budget for a thousand symbols — and bounds the hole exactly; a
        symbol that trades rarely is filled when it trades, and nothing is lost meanwhile: the
        stores still say where to resume."""
        resume = getattr(self.ctx, "resume", None) or {}
        for ch in self.channels.values():
            last = resume.get(ch.stream, {}).get(ch.symbol)
            if ch.trades is not None and last is not None:
                ch.trades.resume_from(int(last))

    def _give_up(self, ch: Channel, lo: int, hi: int, reason: str) -> list[tuple[int, int]]:
        """Stop waiting for the ids still missing in ``[lo, hi]`` and report them lost; returns
        the ranges given up."""
        tracker = ch.trades
        ranges = tracker.missing_in(lo, hi)
        tracker.forget(lo, hi)
        self._report_lost(ch, ranges, reason)
        return ranges

    def _report_lost(self, ch: Channel, ranges: list[tuple[int, int]], reason: str) -> None:
        """Hand ranges lost for good to the engine (trade_gaps, metric, warning)."""
        report = getattr(self.ctx, "report_gap", None)
        for a, b in ranges:
            if report is not None:
                report(TradeGap(ch.stream, ch.symbol, a, b, reason, iso_ns()))
            else:
                self.log.warning(
                    f"trades lost: {ch.symbol} ids {a}..{b} ({b - a + 1} trades) cannot be fetched ({reason})",
                    source=self.name, stream=ch.stream, symbol=ch.symbol, reason=reason,
                )

    def _on_gap(self, ch: Channel) -> None:
        """Called by the router when trade ids jump; starts the channel's filler if idle."""
        task = self._fillers.get(ch.name)
        if task is None or task.done():
            self._fillers[ch.name] = asyncio.create_task(self._handle_gaps(ch), name=f"{self.name}-gaps-{ch.name}")

    async def _handle_gaps(self, ch: Channel) -> None:
        tracker = ch.trades
        grace = float(self.opts["gap_fill_grace_seconds"])
        while True:
            # Late trades can only come from a second connection: wait for them only while
            # connections overlap (or just did); after a reconnect, fetch at once.
            if self._overlaps or time.monotonic() - self._overlap_ended < grace:
                await asyncio.sleep(grace)
            else:
                await asyncio.sleep(0)
            reported = self._reported_hi.get(ch.name, -1)
            new = [(lo, hi) for lo, hi in tracker.missing if hi > reported]
            new = [(max(lo, reported + 1), hi) for lo, hi in new]
            if not new:
                return
            self._reported_hi[ch.name] = new[-1][1]
            for lo, hi in new:
                n = hi - lo + 1
                self.stats["gaps_detected"] += 1
                self.stats["gap_trades_missing"] += n
                _inc(self.metrics, "gaps_detected", symbol=ch.symbol)
                _inc(self.metrics, "gap_trades_missing", n, symbol=ch.symbol)
                self.log.warning(
                    f"gap detected: {ch.symbol} trade ids {lo}..{hi} missing ({n} trades)"
                    + ("; fetching them over REST" if self.opts["gap_fill"] else "; gap_fill is off"),
                    source=self.name, stream=ch.stream, symbol=ch.symbol, first_id=lo, last_id=hi, missing=n,
                )
            if not self.opts["gap_fill"]:
                for lo, hi in new:
                    self.stats["gap_trades_lost"] += sum(b - a + 1 for a, b in self._give_up(ch, lo, hi, GAP_FILL_OFF))
                continue
            await self._fill(ch, new)

    async def _fill(self, ch: Channel, gaps: list[tuple[int, int]]) -> None:
        """Fetch the missing trades of ``gaps`` (sorted ranges) from REST and emit them.

        One request asks for up to 1000 ids from the first still-missing one, so several small
        gaps close together cost one request; ids that arrived live meanwhile are skipped. What
        cannot be fetched is given up with its reason (:meth:`_give_up`): beyond
        gap_fill_max_trades, before the oldest trade REST still serves, or after REST failed."""
        tracker = ch.trades
        emit = self.router.emit
        cap = int(self.opts["gap_fill_max_trades"])
        given: list[tuple[int, int]] = []  # ranges given up
        for lo, hi in gaps:
            if hi - lo + 1 > cap:
                self.log.warning(
                    f"gap of {hi - lo + 1} trades in {ch.symbol} is larger than gap_fill_max_trades={cap}; "
                    f"ids {lo + cap}..{hi} will not be fetched",
                    source=self.name, symbol=ch.symbol,
                )
                given += self._give_up(ch, lo + cap, hi, GAP_TOO_LARGE)
        filled = [0] * len(gaps)
        span_hi = gaps[-1][1]
        cur = gaps[0][0]
        left_reason = GAP_NOT_SERVED  # why whatever is still missing after the loop is
        try:
            while True:
                todo = tracker.missing_in(cur, span_hi)
                if not todo:
                    break
                cur = todo[0][0]
                reach = max(b for a, b in todo if a < cur + 1000)
                rows = await self.rest.fetch(ch.symbol, cur, min(1000, reach - cur + 1))
                received_ns = time.time_ns()
                if rows and rows[0]["id"] > cur:
                    # REST starts after cur: the older trades are beyond the history it keeps
                    given += self._give_up(ch, cur, min(rows[0]["id"] - 1, span_hi), GAP_NOT_SERVED)
                top = cur - 1
                for row in rows:
                    tid = row["id"]
                    top = max(top, tid)
                    if tid > span_hi or not tracker.take(tid):
                        continue  # arrived live meanwhile, or outside the gaps
                    await emit.record(ch.stream, rest_trade_to_event(ch.symbol, row), received_ns)
                    for i, (lo, hi) in enumerate(gaps):
                        if lo <= tid <= hi:
                            filled[i] += 1
                            break
                if top < cur:  # nothing at or after cur: Binance does not have these trades
                    break
                cur = top + 1
                if cur > span_hi:
                    break
        except RestError as exc:
            left_reason = GAP_REST_ERROR
            self.log.error(f"could not fill gaps in {ch.symbol} trades: {exc}", source=self.name, symbol=ch.symbol)
        except (KeyError, TypeError) as exc:
            left_reason = GAP_REST_ERROR
            self.log.error(f"unexpected historicalTrades row while filling {ch.symbol}: {exc!r}", source=self.name)
        for lo, hi in gaps:
            given += self._give_up(ch, lo, hi, left_reason)
        lost = [sum(max(0, min(b, hi) - max(a, lo) + 1) for a, b in given) for lo, hi in gaps]
        for i, (lo, hi) in enumerate(gaps):
            self.stats["gap_trades_filled"] += filled[i]
            self.stats["gap_trades_lost"] += lost[i]
            _inc(self.metrics, "gap_trades_filled", filled[i], symbol=ch.symbol)
            if lost[i] == 0:
                self.stats["gaps_filled"] += 1
                _inc(self.metrics, "gaps_filled", symbol=ch.symbol)
                self.log.info(
                    f"gap filled: {ch.symbol} trade ids {lo}..{hi} ({filled[i]} from REST)",
                    source=self.name, symbol=ch.symbol, first_id=lo, last_id=hi, filled=filled[i],
                )
            else:
                self.log.warning(
                    f"gap only partly filled: {ch.symbol} trade ids {lo}..{hi}, {filled[i]} fetched, {lost[i]} lost",
                    source=self.name, symbol=ch.symbol, filled=filled[i], lost=lost[i],
                )

    def _report_unfilled(self) -> None:
        """At stop: say which trades are still missing. They are not lost: the stores hold
        newer trades above them, so the next start resumes below the hole and fetches them
        (see ``last_sequence_ids``)."""
        for ch in self.channels.values():
            if ch.trades is not None and ch.trades.missing:
                ranges = ", ".join(f"{a}..{b}" for a, b in ch.trades.missing[:5])
                more = f" and {len(ch.trades.missing) - 5} more ranges" if len(ch.trades.missing) > 5 else ""
                self.log.warning(
                    f"stopping with {ch.trades.count_missing()} {ch.symbol} trades not fetched yet: ids {ranges}{more}; "
                    "the next start fetches them",
                    source=self.name, symbol=ch.symbol, stream=ch.stream,
                )

    # -- metrics -------------------------------------------------------------------------------

    def _flush_metrics(self) -> None:
        for ch in self.channels.values():
            if ch.trades is not None and ch.trades.given_up:
                # holes the tracker dropped because too many were open at once
                ranges, ch.trades.given_up = ch.trades.given_up, []
                self._report_lost(ch, ranges, GAP_TOO_MANY)
            n = ch.duplicates
            if n:
                ch.duplicates = 0
                self.stats["duplicates_dropped"] += n
                _inc(self.metrics, "duplicates_dropped", n, stream=ch.stream)

    async def _flush_metrics_forever(self, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            self._flush_metrics()


@hookimpl
def tickwire_register_sources(register) -> None:
    register(
        SourceSpec(
            name="binance",
            factory=BinanceSource,
            description="Binance spot WebSocket market streams (trades, tickers) with reconnects, "
            "rotation, dedup and REST gap filling.",
            config_schema=CONFIG_SCHEMA,
        )
    )
