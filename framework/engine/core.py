"""The Engine: runs one plan — opens the sinks, asks them where to resume, starts the workers
and the sources, hands lost ranges over, and stops within ``shutdown_timeout_s``.

The jobs it delegates, each in its own module: the plan (``plan.py``), the hot path
(``routing.py``), dead letters (``dead_letters.py``), sink workers and the retry policy
(``workers.py``), counters (``stats.py``), what was not committed (``shutdown.py``), where to
resume and the ranges lost for good (``resume_points.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tickwire.framework.backoff import Backoff
from tickwire.framework.components import RunContext, SinkSpec, SourceSpec, TradeGap, TransformSpec, sink_traits
from tickwire.framework.engine.dead_letters import DeadLetters
from tickwire.framework.engine.plan import build_derived, build_route, build_runners, plan_from_config
from tickwire.framework.engine.routing import Emitter, Route, append_derived, hand_over
from tickwire.framework.engine.resume_points import LostRanges, read_resume_points
from tickwire.framework.engine.runner import SinkRunner
from tickwire.framework.engine.settings import EngineError, EngineSettings
from tickwire.framework.engine.shutdown import describe_uncommitted, take_uncommitted, uncommitted_fields
from tickwire.framework.engine.stats import Stats
from tickwire.framework.engine.workers import SinkWorker
from tickwire.framework.logs import get_logger
from tickwire.framework.metrics import Metrics
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.sharding import Shard

SOURCE_RESTART = (1.0, 30.0)  # seconds: first delay before restarting a source that raised, longest


class Engine:
    """Runs one profile (docs/architecture.md, "The engine"). Build with :meth:`from_config` or
    directly (tests do) from specs; then ``await engine.run()`` until :meth:`stop` or the
    sources end."""

    def __init__(
        self,
        *,
        streams: list[StreamSpec],
        sources: dict[str, tuple[SourceSpec, dict]],
        sinks: dict[str, tuple[SinkSpec, dict]],
        transforms: dict[str, TransformSpec],
        dead_letter: str | None = None,
        settings: EngineSettings | None = None,
        metrics: Metrics | None = None,
        config: Any = None,
        config_dir: Path | str = ".",
        log: Any = None,
        shard: Shard | None = None,
        derived: list | None = None,
    ):
        self.settings = settings or EngineSettings()
        self.shard = shard  # handed to the sources (RunContext.shard)
        self.metrics = metrics or Metrics()
        self.config = config  # only for RunContext.config (deprecated)
        self.config_dir = Path(config_dir)
        self.log = log or get_logger(component="engine")
        self.streams = {s.name: s for s in streams}
        self._source_plans = sources
        self._dead_letter_id = dead_letter
        self._runners: dict[str, SinkRunner] = build_runners(sinks, dead_letter, self.settings)
        self._routes: dict[str, Route] = {
            s.name: build_route(s, transforms, self._runners, self.settings, self.metrics) for s in streams
        }
        # derived streams computed in this run (framework/derived.py): their routes join _routes
        self._derived = build_derived(derived or [], self._routes, self._runners, transforms, self.settings, self.metrics)
        self.dead_letters = DeadLetters(self._runners.get(dead_letter) if dead_letter else None, self.settings.batch_size, self.log)
        self._stats = Stats(self.metrics, self._routes, self._runners, self.dead_letters, list(sources))
        self._stop = asyncio.Event()
        self._stop_requested_at: float | None = None
        self._failure: str | None = None  # a sink's PermanentError: run() raises it as an EngineError
        self.abandoned: dict[tuple[str, str], int] = {}  # (sink, stream) → records not committed at stop
        self._resume: dict[str, dict[str, int]] = {}  # stream → symbol → last id held (read_resume_points)
        self._lost_ranges = LostRanges(self._routes, self.dead_letters, self.metrics, self.log)
        self.ready = asyncio.Event()  # set once the sinks are open and the sources started
        self._source_tasks: dict[str, asyncio.Task] = {}
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    @classmethod
    def from_config(cls, config: Any, plugins: Any, profile: str | None = None, metrics: Metrics | None = None, log=None,
                    shard: Shard | None = None) -> Engine:
        """Build from the loaded :class:`~tickwire.framework.config.Config` and the plugin manager."""
        plan = plan_from_config(config, plugins, profile)
        return cls(streams=plan.streams, sources=plan.sources, sinks=plan.sinks, transforms=plan.transforms,
                   dead_letter=plan.dead_letter, settings=plan.settings, metrics=metrics, config=config,
                   config_dir=config.dir, log=log, shard=shard, derived=plan.derived)

    def emitter(self, source_id: str, plugin: str) -> Emitter:
        """What source ``source_id`` (of ``plugin``) hands its payloads to."""
        return Emitter(self._routes, self.settings.batch_size, self.dead_letters, self.log, source_id, plugin)

    def _context(self, plugin: str, component: str, name: str, streams: list[StreamSpec]) -> RunContext:
        ctx = RunContext(streams=streams, metrics=self.metrics, config_dir=self.config_dir,
                         log=get_logger(plugin=plugin, component=component, **{component: name}),
                         dead_letters=component == "sink" and name == self._dead_letter_id)
        if component == "source":
            ctx.resume = {s.name: dict(self._resume[s.name]) for s in streams if s.name in self._resume}
            ctx.report_gap = self.report_gap
            ctx.shard = self.shard
        return ctx

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the engine to stop: sources are cancelled, everything received is flushed; run()
        returns within ``shutdown_timeout_s`` from now."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Until stop() or the sources end; raises EngineError when a sink failed for good."""
        self.started_at = time.monotonic()
        if not await self._unless_stopped(self._open_sinks()) or not await self._unless_stopped(self._read_resume_points()):
            self.log.info("stopping", reason="stop requested while the sinks were opening")
            await self._close_sinks(self._shutdown_deadline())
            self.stopped_at = time.monotonic()
            return
        ticker = asyncio.create_task(self._tick(), name="tickwire-ticker")
        deadline = None
        try:
            for runner in self._runners.values():
                worker = SinkWorker(runner, self._routes, self.settings, self.metrics, self.dead_letters, self.log, self._sink_failed)
                runner.task = asyncio.create_task(worker.run(), name=f"tickwire-sink-{runner.id}")
            self._start_sources()
            self.ready.set()
            waiter = asyncio.create_task(self._stop.wait())
            pending = set(self._source_tasks.values()) | {waiter}
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done or (self._source_tasks and pending == {waiter}):
                    break  # stop requested, or every source returned by itself
            waiter.cancel()
            deadline = self._shutdown_deadline()
            self.log.info("stopping", reason=self._failure or ("stop requested" if self._stop.is_set() else "sources finished"),
                          shutdown_timeout_s=self.settings.shutdown_timeout_s)
            writes_until = deadline - self._close_reserve()
            for task in self._source_tasks.values():
                task.cancel()
            if self._source_tasks:
                # a source that ignores cancellation is left behind, not waited for
                await asyncio.wait(self._source_tasks.values(), timeout=max(0.0, writes_until - time.monotonic()))
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            ticker = None
            self._abandon(reached=not await self._drain(writes_until))
        finally:
            if ticker is not None:
                ticker.cancel()
            for task in self._source_tasks.values():
                task.cancel()
            for runner in self._runners.values():
                if runner.task is not None and not runner.task.done():
                    runner.task.cancel()
            await self._close_sinks(deadline or self._shutdown_deadline())
            self._stats.push()
            self.stopped_at = time.monotonic()
        if self._failure is not None:
            raise EngineError(self._failure)

    def _sink_failed(self, message: str) -> None:
        """A sink raised PermanentError: the run stops, and fails with its message."""
        if self._failure is None:
            self._failure = message
        self.stop()

    # -- shutdown ----------------------------------------------------------------------------

    def _shutdown_deadline(self) -> float:
        start = self._stop_requested_at or time.monotonic()
        return start + self.settings.shutdown_timeout_s

    def _close_reserve(self) -> float:
        """What of shutdown_timeout_s is kept for closing the sinks (and cancelling writes)."""
        return max(1.5, min(5.0, self.settings.shutdown_timeout_s / 3))

    async def _unless_stopped(self, work) -> bool:
        """Run ``work`` until it ends (True; its exception propagates) or stop() is called
        first (False; ``work`` is cancelled)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.wait({task}, timeout=max(0.0, self._shutdown_deadline() - self._close_reserve() - time.monotonic()))
        if task.done() and not task.cancelled() and task.exception() is not None:
            self.log.warning(f"opening the sinks failed while stopping: {task.exception()}")
        return False

    async def _drain(self, until: float) -> bool:
        """Flush every buffer, let the workers write out their queues; True when all was
        committed before ``until``. Otherwise the writes are cancelled (False)."""

        async def drain() -> None:
            await self._flush_all()
            for runner in self._runners.values():
                await runner.queue.put(None)
            await asyncio.gather(*(r.task for r in self._runners.values()))

        task = asyncio.create_task(drain(), name="tickwire-shutdown-drain")
        await asyncio.wait({task}, timeout=max(0.0, until - time.monotonic()))
        if task.done():
            task.result()  # a worker's bug fails the run
            return True
        task.cancel()  # cancels the workers it gathers, and with them the writes in flight
        workers = [r.task for r in self._runners.values() if r.task is not None]
        for worker in workers:
            worker.cancel()
        # a write that ignores cancellation (a thread inside a driver) is not waited for long
        await asyncio.wait({task, *workers}, timeout=1.0)
        for done in (task, *workers):
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: the cancellation is what is reported
        return False

    def _abandon(self, reached: bool) -> None:
        """Count what was not committed (by the deadline when ``reached``; else what a failed
        sink refused): log it once, add it to the metric."""
        counts = self.take_uncommitted()
        self.abandoned = counts
        for runner in self._runners.values():  # the summary's "not committed" says the same
            runner.pending = sum(n for (sink, _), n in counts.items() if sink == runner.id)
        if not counts:
            return
        for (sink, stream), n in counts.items():
            self.metrics.records_abandoned.labels(sink=sink, stream=stream).inc(n)
        why = f"shutdown_timeout_s ({self.settings.shutdown_timeout_s:g}s) reached" if reached else f"stopped ({self._failure})"
        self.log.error(f"{why}: {describe_uncommitted(counts)}", **uncommitted_fields(counts))

    def take_uncommitted(self) -> dict[tuple[str, str], int]:
        """Records received but not committed, per (sink, stream): buffered, queued or in a
        write that has not returned. Empties the queues: only for a run that is over (the
        shutdown deadline, a forced exit)."""
        return take_uncommitted(self._routes.values(), self._runners.values(), self.dead_letters)

    # -- sinks -------------------------------------------------------------------------------

    async def _open_sinks(self) -> None:
        for runner in self._runners.values():
            spec = runner.spec
            streams = [r.stream for r in self._routes.values() if any(lane.runner is runner for lane in r.lanes)]
            ctx = self._context(spec.plugin or spec.name, "sink", runner.id, streams)
            try:
                runner.sink = spec.factory(runner.id, runner.options, ctx)
                await runner.sink.open()
            except Exception as exc:
                runner.sink = None
                await self._close_sinks()
                raise EngineError(f"{runner.who}: cannot open: {exc}") from exc
            runner.traits = sink_traits(runner.sink, spec)

    async def _close_sinks(self, until: float | None = None) -> None:
        """Close every opened sink, all at once; a close still running at ``until`` is
        cancelled (a spooling sink keeps what it did not send for the next start)."""
        closing = {}
        for runner in self._runners.values():
            sink, runner.sink = runner.sink, None
            if sink is not None:
                closing[asyncio.create_task(sink.close(), name=f"tickwire-close-{runner.id}")] = runner
        if not closing:
            return
        timeout = None if until is None else max(0.5, until - 0.5 - time.monotonic())
        done, late = await asyncio.wait(closing, timeout=timeout)
        for task in late:
            task.cancel()
            self.log.warning(f"{closing[task].who}: close still running at the end of shutdown_timeout_s; cancelled "
                             "(a sink with a spool keeps what it did not send for the next start)", sink=closing[task].id)
        if late:
            await asyncio.wait(late, timeout=0.5)
        for task in closing:
            if task.done() and not task.cancelled() and task.exception() is not None:
                runner = closing[task]
                self.log.error(f"{runner.who}: close failed: {task.exception()}", sink=runner.id)

    # -- resume points and lost ranges -------------------------------------------------------

    async def _read_resume_points(self) -> None:
        self._resume = await read_resume_points(self._routes.values(), self.log, self.shard)
        await self._recover_derived()

    async def _recover_derived(self) -> None:
        """Each deriver rebuilds its open state from the source records a sink stores
        (``tail_records``), before any new record arrives; what it re-emits is written first."""
        for deriver, route in self._derived:
            runner = next((lane.runner for lane in route.lanes if lane.runner.traits.tails_records), None)
            if runner is None:
                continue
            origin = self.streams[route.stream.source_stream]
            try:
                records = await runner.sink.tail_records(origin, deriver.time_column, deriver.recovery_span_ms)
                out = deriver.recover(records)
            except Exception as exc:
                raise EngineError(f"{runner.who}, derived {route.name!r}: cannot rebuild its state from the stored "
                                  f"{origin.name!r} records: {exc}") from exc
            if out:
                append_derived(route, out, self.settings.batch_size)
            self.log.info(f"derived {route.name!r}: state rebuilt from {len(records)} stored {origin.name!r} records "
                          f"of {runner.who}; {len(out)} rows rewritten", stream=route.name)

    def report_gap(self, gap: TradeGap) -> None:
        """A source gave up on ``gap`` (RunContext.report_gap): see :class:`LostRanges`."""
        self._lost_ranges.report(gap)

    # -- sources -----------------------------------------------------------------------------

    def _start_sources(self) -> None:
        for sid, (spec, options) in self._source_plans.items():
            streams = [s for s in self.streams.values() if s.source == sid]
            plugin = spec.plugin or spec.name
            ctx = self._context(plugin, "source", sid, streams)
            try:
                source = spec.factory(sid, spec.complete(options), ctx)
            except Exception as exc:
                raise EngineError(f"source {sid!r} (plugin {plugin}): cannot start: {exc}") from exc
            self._source_tasks[sid] = asyncio.create_task(self._run_source(sid, plugin, source, self.emitter(sid, plugin)),
                                                          name=f"tickwire-source-{sid}")

    async def _run_source(self, sid: str, plugin: str, source: Any, emitter: Emitter) -> None:
        backoff = Backoff(*SOURCE_RESTART, jitter=0.0)
        while True:
            try:
                await source.run(emitter)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                self.log.error(f"source {sid!r} (plugin {plugin}) failed: {type(exc).__name__}: {exc}; restarting in {delay:g}s",
                               source=sid, exc_info=True)
                await asyncio.sleep(delay)

    # -- the ticker --------------------------------------------------------------------------

    async def _flush_all(self) -> None:
        await self._lost_ranges.flush()
        for route in self._routes.values():
            for lane in route.lanes:
                await hand_over(lane)
        await self.dead_letters.flush()

    async def _tick(self) -> None:
        """Hands over buffers older than ``linger_ms``, lost ranges and dead letters; pushes the
        counters to Prometheus every ``metrics_interval_s``."""
        linger = self.settings.linger_ms / 1000.0
        interval = min(max(linger / 4, 0.002), 0.1)
        next_push = 0.0
        dead = self.dead_letters
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for route in self._routes.values():
                for lane in route.lanes:
                    if lane.buf and now - lane.since >= linger:
                        await hand_over(lane)
            await self._lost_ranges.flush()
            if dead.buffer and now - dead.since >= linger:
                await dead.flush()
            if now >= next_push:
                self._stats.push()
                next_push = now + self.settings.metrics_interval_s

    # -- observability -----------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Counters for the status table, progress lines and the exit summary."""
        return self._stats.snapshot(self.started_at, self.stopped_at)

    def destinations(self) -> list[str]:
        """One human line per sink: where the data goes (the sink's ``describe()``)."""
        return [f"{runner.id}{' (dead letters)' if runner.id == self._dead_letter_id else ''}: {runner.traits.describe}"
                for runner in self._runners.values()]
