"""Keeping each connection slot of the ``binance`` source connected (plugins/binance/source.py).

A slot is one combined-stream connection's share of the channels (:mod:`.subscriptions`).
:class:`SlotKeeper` connects it (at most ``max_connection_attempts_per_5min`` attempts, waiting
out a handshake's ``Retry-After`` up to ``retry_after_max_seconds``), reconnects it with a
backoff that starts over only after a connection stayed up ``backoff_reset_after_seconds``,
answers ``serverShutdown`` at once, and rotates it before Binance's 24 h cut-off with the
replacement subscribed before the old one closes. Which channels a slot carries is the
source's business; the keeper asks it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp

from tickwire.framework.backoff import Backoff
from tickwire.plugins.binance.connection import Connection, HandshakeRefused
from tickwire.plugins.binance.failures import connect_failure, describe_failure
from tickwire.plugins.binance.frames import FrameRouter, ServerShutdown
from tickwire.plugins.binance.gap_filler import GapFiller
from tickwire.plugins.binance.ratelimit import SlidingWindowLimiter
from tickwire.plugins.binance.rest import retry_after_seconds


class SlotKeeper:
    """The connections of one source, per slot. ``channels_of(slot)`` is the slot's channels now;
    ``on_stale(slot, conn)`` is called when they changed while ``conn`` was connecting."""

    def __init__(self, name: str, opts: dict, log: Any, metrics: Any, stats: dict[str, int], gaps: GapFiller,
                 channels_of: Callable[[int], list[str]], on_stale: Callable[[int, Connection], None]):
        self.name, self.opts, self.log, self.metrics, self.stats, self.gaps = name, opts, log, metrics, stats, gaps
        self.channels_of, self.on_stale = channels_of, on_stale
        self.attempts = SlidingWindowLimiter(int(opts["max_connection_attempts_per_5min"]), 300.0)
        self.router: FrameRouter | None = None  # set by the source's run() before the first connect
        self.connections: dict[int, Connection] = {}  # slot → current connection
        self._slot_conns: dict[int, set[Connection]] = {}  # slot → its live connections (2 while rotating)
        self._live: set[Connection] = set()  # every connection not closed yet (2 per slot while rotating)
        self._open = 0
        self._retry_after_capped = False  # warned that a Retry-After exceeded retry_after_max_seconds

    def live_in(self, slot: int) -> set[Connection]:
        """The slot's connections not closed yet (two while it rotates)."""
        return self._slot_conns.get(slot, set())

    def reset(self) -> None:
        """Forget the slots of a previous run() (its connections are closed)."""
        self._slot_conns.clear()

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close(drain_timeout=0.5) for c in list(self._live)), return_exceptions=True)
        self.metrics.connections_open.labels(source=self.name).dec(self._open)
        self._open = 0

    def new_backoff(self) -> Backoff:
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

    async def _connect(self, slot: int, backoff: Backoff, delay: float) -> Connection:
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
            channels = list(self.channels_of(slot))
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
                retry = None
                if isinstance(exc, HandshakeRefused) and exc.status in (429, 418):
                    retry = retry_after_seconds(exc.headers.get("Retry-After"), delay)
                    delay = max(delay, self._cap_retry_after(retry, slot))
                self.log.warning(connect_failure(exc, conn.url, delay, retry), source=self.name, connection=slot)
                continue
            conn.task = asyncio.create_task(conn.run(), name=f"{self.name}-read{slot}")
            self._live.add(conn)
            peers = self._slot_conns.setdefault(slot, set())
            peers.add(conn)
            conn.task.add_done_callback(lambda _t, conn=conn, peers=peers: (self._live.discard(conn), peers.discard(conn)))
            self.stats["connects"] += 1
            self._set_open(+1)
            self.log.info(f"connected to {conn.url}", source=self.name, connection=slot, streams=len(channels))
            if set(channels) != set(self.channels_of(slot)):  # symbols changed while connecting
                self.on_stale(slot, conn)
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

    async def keep(self, slot: int) -> None:
        """Keep one group of channels connected forever: reconnect, rotate.

        The reconnect delay grows (with jitter) while connections keep ending soon after they
        opened — a repeated policy close (1008) or a server that drops us right after the
        SUBSCRIBE is answered must not become a reconnect loop — and starts over only after a
        connection stayed up ``backoff_reset_after_seconds``."""
        o = self.opts
        rotate_after = float(o["rotate_after_seconds"])
        healthy_after = float(o["backoff_reset_after_seconds"])
        backoff = self.new_backoff()
        conn = await self._connect(slot, backoff, 0.0)
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
                reason = describe_failure(exc) if exc is not None else "connection ended"
                self.stats["reconnects"] += 1
                self.metrics.reconnects.labels(source=self.name).inc()
                self.log.warning(
                    f"connection lost: {reason}; reconnecting {'now' if immediate else f'in {delay:.1f}s'}",
                    source=self.name, connection=slot,
                )
                conn = await self._connect(slot, backoff, delay)
                self.connections[slot] = conn
                continue
            if conn.ready.is_set() and time.monotonic() - conn.opened_at >= healthy_after:
                backoff.reset()
            conn = await self._rotate(slot, conn, backoff)

    async def _rotate(self, slot: int, old: Connection, backoff: Backoff) -> Connection:
        """Open the replacement, let both run until it is subscribed (+ overlap), close the old."""
        age = time.monotonic() - old.opened_at
        self.log.info(
            f"rotating connection after {age / 3600:.2f} h (Binance closes at 24 h): opening its replacement first",
            source=self.name, connection=slot,
        )
        self.gaps.overlap_started()
        try:
            return await self._rotate_overlapping(slot, old, backoff)
        finally:
            self.gaps.overlap_done()

    async def _rotate_overlapping(self, slot: int, old: Connection, backoff: Backoff) -> Connection:
        o = self.opts
        new = await self._connect(slot, backoff, 0.0)
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
