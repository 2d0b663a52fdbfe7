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

This module holds the connections (connect, reconnect, rotate); the options and their
defaults are in :mod:`.options`, the gap filling and loss reporting in :mod:`.gap_filler`.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tickwire.framework.backoff import Backoff
from tickwire.framework.components import GAP_TOO_MANY, Emitter, RunContext, SourceSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.binance.clock import ClockOffset
from tickwire.plugins.binance.connection import Connection, ConnectionLost, HandshakeRefused
from tickwire.plugins.binance.frames import Channel, FrameRouter, ServerShutdown, build_channels
from tickwire.plugins.binance.gap_filler import GapFiller
from tickwire.framework.options import with_defaults
from tickwire.plugins.binance.options import CONFIG_SCHEMA
from tickwire.plugins.binance.ratelimit import SlidingWindowLimiter
from tickwire.plugins.binance.rest import HistoricalTrades, retry_after_seconds

OFFLINE_HINT = (
    "No internet here, or Binance blocked? Run `tickwire simulate` and point "
    "TICKWIRE_BINANCE_URL (and TICKWIRE_BINANCE_REST_URL) at the address it prints."
)


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

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.ctx = ctx
        # the engine hands over complete options; this is a no-op then, and fills the schema's
        # defaults when a test or an author-kit suite calls the factory directly
        self.opts = with_defaults(CONFIG_SCHEMA, options)
        self.opts.pop("type", None)
        self.log = ctx.log
        self.metrics = ctx.metrics
        self.channels: dict[str, Channel] = build_channels(
            ctx.streams, name, window=int(self.opts["dedupe_window"]), max_jump=int(self.opts["max_id_jump"])
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
        self.gaps = GapFiller(name, self.opts, ctx, self.channels, self.stats)
        self.router: FrameRouter | None = None
        self.rest: HistoricalTrades | None = None
        self._open = 0
        self._retry_after_capped = False  # warned that a Retry-After exceeded retry_after_max_seconds

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, emit: Emitter) -> None:
        if not self.channels:
            self.log.warning("no stream uses this Binance source; it stays idle", source=self.name)
            await asyncio.Event().wait()
        o = self.opts
        self.gaps.resume_trackers()
        self.router = FrameRouter(self.channels, emit, int(o["max_frame_bytes"]), self.gaps.on_gap, self.gaps.on_too_far)
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
            self.gaps.start(self.rest, emit)
            tasks = [asyncio.create_task(self._slot(i, group, emit), name=f"{self.name}-conn{i}") for i, group in enumerate(self.groups)]
            tasks.append(asyncio.create_task(self._flush_metrics_forever()))
            tasks.append(asyncio.create_task(ClockOffset(self.name, [s.name for s in self.ctx.streams], o["rest_url"], session,
                                                         self.metrics, self.rest, self.log).run()))
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                fillers = self.gaps.cancel()
                await asyncio.gather(*tasks, *fillers, return_exceptions=True)
                await asyncio.gather(*(c.close(drain_timeout=0.5) for c in list(self._live)), return_exceptions=True)
                self._flush_metrics()
                self.gaps.report_unfilled()
                self.metrics.connections_open.labels(source=self.name).dec(self._open)
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
        self.metrics.connections_open.labels(source=self.name).inc(delta)

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

    async def _slot(self, slot: int, channels: list[str], emit: Emitter) -> None:
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
                self.metrics.reconnects.labels(source=self.name).inc()
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
        self.gaps.overlap_started()
        try:
            return await self._rotate_overlapping(slot, channels, old, backoff)
        finally:
            self.gaps.overlap_done()

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

    # -- metrics -------------------------------------------------------------------------------

    def _flush_metrics(self) -> None:
        for ch in self.channels.values():
            if ch.trades is not None and ch.trades.given_up:
                # holes the tracker dropped because too many were open at once
                ranges, ch.trades.given_up = ch.trades.given_up, []
                self.gaps.report_lost(ch, ranges, GAP_TOO_MANY)
            n = ch.duplicates
            if n:
                ch.duplicates = 0
                self.stats["duplicates_dropped"] += n
                self.metrics.duplicates_dropped.labels(stream=ch.stream).inc(n)

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
