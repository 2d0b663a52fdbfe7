"""The ``binance`` source: Binance spot WebSocket market streams (trades, tickers).

What it does, so the limits Binance enforces are never hit:

* subscribes every channel of the streams whose ``source`` is this one over combined-stream
  connections (``<url>/stream`` + SUBSCRIBE in chunks), at most ``max_streams_per_connection``
  (1024) per connection — 1500 channels become two connections of 750 (:mod:`.subscriptions`);
* takes the symbols of this process's shard (``--shard``) from each stream's list, or from its
  selector, resolved from exchangeInfo and refreshed while running: new listings are
  SUBSCRIBEd and delistings UNSUBSCRIBEd on the live connections (:mod:`.symbol_watch`);
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

This module spreads the channels over the connections and follows the symbol changes; keeping
each connection up (connect, reconnect, rotate) is :mod:`.slot_keeper`'s, the options and their
defaults are in :mod:`.options`, the gap filling and loss reporting in :mod:`.gap_filler`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp

from tickwire.framework.backoff import Backoff
from tickwire.framework.components import GAP_TOO_MANY, Emitter, RunContext, SourceSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.binance.clock import ClockOffset
from tickwire.plugins.binance.connection import Connection
from tickwire.plugins.binance.frames import Channel, FrameRouter, build_channels
from tickwire.plugins.binance.gap_filler import GapFiller
from tickwire.framework.options import with_defaults
from tickwire.plugins.binance.options import CONFIG_SCHEMA
from tickwire.plugins.binance.rest import BinanceRest
from tickwire.plugins.binance.slot_keeper import SlotKeeper
from tickwire.plugins.binance.subscriptions import SubscriptionPlan
from tickwire.plugins.binance.symbol_watch import SymbolWatch


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
        self.streams = {spec.name: spec for spec in ctx.streams if spec.source == name}
        # two streams on one channel template cannot be told apart: refuse it now, not at the first listing
        build_channels([replace(spec, symbols=["BTCUSDT"]) for spec in self.streams.values()], name)
        self.watch = SymbolWatch(name, self.streams.values(), ctx.shard, self.log, self.metrics)
        # every channel ever subscribed (its trade-id state kept while unsubscribed, so a symbol
        # listed again continues where it was and the gap between is found); the router's table
        self.channels: dict[str, Channel] = build_channels(
            [replace(self.streams[stream], symbols=symbols) for stream, symbols in self.watch.fixed.items()], name,
            window=int(self.opts["dedupe_window"]), max_jump=int(self.opts["max_id_jump"]),
        )
        # which channels each connection carries now; filled at start (see run)
        self.plan = SubscriptionPlan([], int(self.opts["max_streams_per_connection"]))
        self._tasks: set[asyncio.Task] = set()  # slot supervisors and live (un)subscriptions
        self._failed: asyncio.Future | None = None  # a slot supervisor's error ends run() with it
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
        self.slots = SlotKeeper(
            name, self.opts, self.log, self.metrics, self.stats, self.gaps,
            channels_of=lambda slot: self.plan.slots[slot],
            on_stale=lambda slot, conn: self._spawn(self._sync(slot, conn), f"{self.name}-sync{slot}"),
        )
        self.router: FrameRouter | None = None
        self.rest: BinanceRest | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def groups(self) -> list[list[str]]:
        """The channels of each connection."""
        return self.plan.slots

    @property
    def connections(self) -> dict[int, Connection]:
        """Slot → its current connection."""
        return self.slots.connections

    async def run(self, emit: Emitter) -> None:
        if not self.streams:
            self.log.warning("no stream uses this Binance source; it stays idle", source=self.name)
            await asyncio.Event().wait()
        o = self.opts
        self._failed = asyncio.get_running_loop().create_future()
        self.plan = SubscriptionPlan([], self.plan.cap)  # a restarted run() opens every connection again
        self.slots.reset()
        self.gaps.resume_trackers()
        self.router = self.slots.router = FrameRouter(self.channels, emit, int(o["max_frame_bytes"]), self.gaps.on_gap,
                                                      self.gaps.on_too_far)
        timeout = aiohttp.ClientTimeout(total=30, connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.rest = BinanceRest(
                o["rest_url"],
                session,
                weight_per_minute=float(o["rest_weight_per_minute"]),
                backoff=Backoff(0.5, max(1.0, float(o["backoff_max_seconds"]))),
                log=self.log,
                retry_after_max=float(o["retry_after_max_seconds"]),
            )
            self.gaps.start(self.rest, emit)
            tasks = [asyncio.create_task(self._flush_metrics_forever())]
            tasks.append(asyncio.create_task(ClockOffset(self.name, [s.name for s in self.ctx.streams], o["rest_url"], session,
                                                         self.metrics, self.rest, self.log).run()))
            try:
                self.apply(await self.watch.initial(self.rest, self.slots.new_backoff()))
                if self.watch.refresh_seconds is not None:
                    tasks.append(asyncio.create_task(self._refresh_forever(self.watch.refresh_seconds), name=f"{self.name}-symbols"))
                await asyncio.gather(*tasks, self._failed)
            finally:
                tasks += self._tasks
                for task in tasks:
                    task.cancel()
                fillers = self.gaps.cancel()
                await asyncio.gather(*tasks, *fillers, return_exceptions=True)
                await self.slots.close_all()
                self._flush_metrics()
                self.gaps.report_unfilled()

    # -- symbols -------------------------------------------------------------------------------

    async def _refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            wanted = await self.watch.refresh(self.rest)
            if wanted is not None:
                self.apply(wanted)

    def apply(self, wanted: dict[str, list[str]]) -> None:
        """Subscribe exactly the channels of ``wanted`` (stream → symbols): new ones go to the
        connection with the most room (a new connection when all are full), gone ones are
        unsubscribed on theirs. Returns at once; the connections send the requests paced."""
        target: dict[str, tuple[str, str]] = {}  # channel → (stream, symbol)
        for stream, symbols in wanted.items():
            template = self.streams[stream].channel
            for symbol in symbols:
                target[template.format(symbol=symbol.lower()).lower()] = (stream, symbol)
        fresh: dict[str, list[str]] = {}
        for channel, (stream, symbol) in target.items():
            if channel not in self.channels:
                fresh.setdefault(stream, []).append(symbol)
        for stream, symbols in fresh.items():
            made = build_channels([replace(self.streams[stream], symbols=symbols, selector=None)], self.name,
                                  window=int(self.opts["dedupe_window"]), max_jump=int(self.opts["max_id_jump"]))
            self.channels.update(made)
            self.gaps.resume_trackers(made.values())
        slots_before = len(self.plan.slots)
        if not self.plan.slots:  # the start: spread evenly over as few connections as the cap allows
            self.plan = SubscriptionPlan(list(target), self.plan.cap)
        changed = set(range(slots_before, len(self.plan.slots)))
        changed |= set(self.plan.remove(sorted(self.plan.channels - target.keys())))
        changed |= set(self.plan.add(sorted(target.keys() - self.plan.channels)))
        for slot in sorted(changed):
            self._gauge_subscribed(slot)
            if slot >= slots_before:
                self._spawn(self.slots.keep(slot), f"{self.name}-conn{slot}")
            else:
                for conn in self.slots.live_in(slot):
                    self._spawn(self._sync(slot, conn), f"{self.name}-sync{slot}")

    def _gauge_subscribed(self, slot: int) -> None:
        self.watch.metrics.subscribed.labels(connection=str(slot), **self.watch.labels).set(len(self.plan.slots[slot]))

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failed is not None and not self._failed.done():
            self._failed.set_exception(task.exception())

    async def _sync(self, slot: int, conn: Connection) -> None:
        """Bring one live connection to its slot's current channels."""
        added, removed = await conn.sync(self.plan.slots[slot])
        if added or removed:
            self.log.info(f"connection {slot}: subscribed {len(added)} streams, unsubscribed {len(removed)}",
                          source=self.name, connection=slot, subscribed=len(added), unsubscribed=len(removed),
                          streams=len(conn.channels))

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
            resolves_selectors=True,
        )
    )


@hookimpl
def tickwire_register_commands(cli) -> None:
    from tickwire.plugins.binance.symbols_command import symbols_command  # only when the CLI is built

    cli.add_command(symbols_command)
