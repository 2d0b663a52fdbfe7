"""The asyncio engine: sources → transforms → per-sink batches → bounded queues → sinks.

How a record travels (all in one event loop, no hook calls on the way)::

    source.run ─► Emitter.record(stream, payload)
                    ├─ transform chain of the stream (validate → normalize), built once
                    │    └─ InvalidRecord(reason) ─► dead-letter batch
                    └─ append to one list per (sink, stream) ─ full (batch_size) or old
                       (linger_ms) ─► whole list put on the sink's bounded asyncio.Queue
    sink worker ─► Sink.write(stream, records) ─ returned = committed ─► written metric

Guarantees:

* **Backpressure**: each sink queue holds at most ``queue_batches`` batches; when it is full,
  ``Emitter.record`` waits in ``Queue.put``, so the source stops reading and memory stays
  bounded: per sink at most ``(queue_batches + max_in_flight × coalesce_batches + 1) ×
  batch_size`` records (queue + the writes in progress + the buffer being filled), per stream
  buffer. ``max_in_flight`` is the sink's (below), 1 for most sinks.
* **Writes in flight**: a sink that declares ``max_in_flight = N`` (attribute, default 1) gets up
  to N ``write`` calls running concurrently, started in queue order (each call's code up to its
  first ``await`` runs in that order); the worker takes a batch from the queue only when a slot is
  free. Each write is counted written when it returns, whatever the order. Such a sink keeps its
  own ordering (e.g. the Kafka sink enqueues into its producer in call order) and must not raise
  for transient errors: a retried write runs again after writes that started later.
* **Coalescing**: when batches wait in a sink's queue (slow sink, shutdown flush), the worker
  merges up to ``coalesce_batches`` consecutive batches of the same stream into one write.
* **Acknowledgement**: ``tickwire_messages_written_total`` counts a record only after
  ``Sink.write`` returned. A failing write is retried with exponential backoff, forever; it is
  logged with the sink, plugin and stream names. Nothing is dropped.
* **Shutdown** (:meth:`Engine.stop`, SIGINT/SIGTERM in ``tickwire run``): sources are cancelled,
  a batch that was being handed over when a source was cancelled goes back to its buffer, every
  buffer is flushed, the workers drain their queues and wait for every write in flight, sinks
  are closed. An engine whose sources all return by themselves (e.g. a replay) shuts down the
  same way. It is bounded: :meth:`Engine.run` returns at most ``shutdown_timeout_s`` after the
  stop request (or the end of the sources), whatever a sink is doing (a database that is down
  retries forever otherwise). Writes get that time minus a reserve for closing the sinks
  (a third of it, 1.5–5 s); writes still running then are cancelled, and every record not
  committed — buffered, queued or in a cancelled write — is counted per sink and stream in
  :attr:`Engine.abandoned`, one error log line and ``tickwire_records_abandoned_total``. A
  sink with a spool (Kafka) commits to its spool within its own ``send_timeout_ms``, so nothing
  of it is abandoned unless its spool is full. A stop that arrives while the sinks are being
  opened cancels the opening.

Per-record counters are plain integers on the route; the ticker task adds their deltas to the
Prometheus counters several times a second and flushes buffers older than ``linger_ms``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tickwire.framework.components import (
    DeadLetter, GapRecordingSink, InvalidRecord, Rejected, ResumableSink, RunContext, SinkSpec, SourceSpec, TradeGap,
    TransformSpec,
)
from tickwire.framework.config_schema import BASE_SCHEMA
from tickwire.framework.logs import get_logger
from tickwire.framework.metrics import Metrics
from tickwire.framework.resume import combine, gap_dead_letter
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.timestamps import iso_ns

DEFAULT_TRANSFORMS = [("validate", {}), ("normalize", {})]
_ENGINE_OPTIONS = BASE_SCHEMA["properties"]["engine"]["properties"]
DEAD_LETTERS_LABEL = "dead_letters"  # the stream label of dead letters in abandoned counts
TRADE_GAPS_LABEL = "trade_gaps"  # likewise for lost-range records


class EngineError(Exception):
    """Start-up problem (unknown plugin, sink failing to open…); the message names the component."""


@dataclass
class EngineSettings:
    """``engine:`` section of streams.yaml (``queue_batches``, ``batch_size``, ``linger_ms``)."""

    batch_size: int = 1000  # records per sink batch
    linger_ms: float = 200  # a non-empty batch older than this is sent anyway
    queue_batches: int = 8  # batches waiting per sink before sources are slowed down (memory bound)
    retry_initial_s: float = 0.5  # first delay after a failed write, doubled up to retry_max_s
    retry_max_s: float = 10.0
    lag_sample_every: int = 64  # observe the event-time lag of one record in N (power of two)
    metrics_interval_s: float = 0.5  # how often plain counters are pushed into Prometheus
    coalesce_batches: int = 4  # with a backlog, up to this many queued batches of a stream make one write
    # from a stop request to run() returning; the default is the schema's (one source of truth)
    shutdown_timeout_s: float = _ENGINE_OPTIONS["shutdown_timeout_s"]["default"]

    @classmethod
    def from_options(cls, options: dict | None) -> EngineSettings:
        known = {k: v for k, v in (options or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _raw_text(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", "replace")
    try:
        return orjson.dumps(raw, default=str).decode()
    except TypeError:
        return repr(raw)


class _SinkRunner:
    """One opened sink, its bounded queue and its worker."""

    def __init__(self, sink_id: str, spec: SinkSpec, options: dict, queue_batches: int):
        self.id = sink_id
        self.spec = spec
        self.options = options
        self.sink: Any = None
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, queue_batches))
        self.pending = 0  # records queued or being written
        self.task: asyncio.Task | None = None
        self.carry: Any = _NOTHING  # what the worker took from the queue for its next write
        self.writing: dict[int, tuple[StreamSpec | None, int]] = {}  # writes started, not returned
        self.commits = 0
        self.commit_seconds = 0.0

    @property
    def who(self) -> str:
        return f"sink {self.id!r} (plugin {self.spec.plugin or self.spec.name})"


class _Lane:
    """Records of one stream waiting for one sink."""

    __slots__ = ("runner", "stream", "route", "buf", "since")

    def __init__(self, runner: _SinkRunner, stream: StreamSpec, route: _Route):
        self.runner = runner
        self.stream = stream
        self.route = route
        self.buf: list = []
        self.since = 0.0


class _Route:
    """Everything about one stream the hot path needs, in slots."""

    __slots__ = (
        "stream", "name", "chain", "chain_names", "lanes", "received", "invalid", "dead", "written",
        "last", "lag", "lag_field", "lag_mask", "pushed", "lag_hist", "fused",
    )

    def __init__(self, stream: StreamSpec, chain: list, chain_names: list[str], lag_field: str, lag_every: int):
        self.stream = stream
        self.name = stream.name
        self.chain = tuple(chain)
        self.chain_names = chain_names
        # A transform may offer one function doing its work and the next one's (validate +
        # normalize, compiled together); used for the whole chain when it has exactly those two.
        fuse = getattr(chain[0], "fuse", None) if len(chain) == 2 else None
        self.fused = fuse(chain[1]) if fuse is not None else None
        self.lanes: list[_Lane] = []
        self.received = 0
        self.invalid = 0
        self.dead = 0
        self.written: dict[str, int] = {}
        self.last: dict | None = None
        self.lag: float | None = None
        self.lag_field = lag_field
        self.lag_mask = max(1, lag_every) - 1
        self.pushed = [0, 0, 0]  # received, invalid, dead already added to Prometheus
        self.lag_hist = None


class Emitter:
    """What a source gets: ``await emit.record(stream, payload, received_ns)``, or its hot-loop
    variant ``record_nowait``; the contract is :class:`tickwire.framework.components.Emitter`'s."""

    def __init__(self, engine: Engine, source_id: str, plugin: str):
        self._engine = engine
        self._routes = engine._routes
        self._batch_size = engine.settings.batch_size
        self.source_id = source_id
        self.plugin = plugin

    async def record(self, stream: str, payload: dict, received_ns: int) -> bool:
        """Hand over one payload; True when it was accepted (see :meth:`record_nowait`)."""
        pending = self.record_nowait(stream, payload, received_ns)
        if pending is None:
            return True
        await pending
        return type(pending) is not Rejected

    def record_nowait(self, stream: str, payload: dict, received_ns: int):
        """``record`` without the coroutine (the contract is :class:`tickwire.framework.components.Emitter`'s):
        does all the work that needs no waiting and returns None (accepted and buffered), a
        :class:`Rejected` (its dead letter to await), or a coroutine the caller must await
        before the next record (accepted; a full batch to hand to a sink queue — that is the
        backpressure). Hot loops call this and await only that: every coroutine layer costs
        tenths of a µs per record."""
        route = self._routes.get(stream)
        if route is None:
            return Rejected(self.dead_letter(stream, f"unknown stream {stream!r}", payload, received_ns))
        n = route.received = route.received + 1
        if not n & route.lag_mask:
            self._engine._sample_lag(route, payload, received_ns)
        fused = route.fused
        if fused is not None:
            try:
                rec = fused(payload)
            except Exception:  # the fused function only knows "invalid": the chain names the reason
                rec, pending = self._run_chain(route, payload, received_ns)
                if rec is None:
                    return pending
        else:
            rec, pending = self._run_chain(route, payload, received_ns)
            if rec is None:
                return pending
        full = None
        for lane in route.lanes:
            buf = lane.buf
            if not buf:
                lane.since = time.monotonic()
            buf.append(rec)
            if len(buf) >= self._batch_size:
                full = [lane] if full is None else full + [lane]
        return None if full is None else self._flush_lanes(full)

    async def _flush_lanes(self, lanes: list[_Lane]) -> None:
        for lane in lanes:
            await self._engine._flush(lane)

    def _run_chain(self, route: _Route, payload: dict, received_ns: int):
        """The transforms one by one: ``(record, None)``; ``(None, None)`` when one dropped it;
        ``(None, Rejected)`` when one rejected it (the dead letter to await). After the fused
        function rejected a record this gives the same verdict (validate and normalize are
        pure) with the reason and the transform; should the chain accept it, the chain wins."""
        rec = payload
        i = 0
        try:
            for fn in route.chain:
                rec = fn(rec)
                if rec is None:
                    return None, None
                i += 1
        except Exception as exc:
            return None, Rejected(self._rejected(route, i, exc, payload, received_ns))
        return rec, None

    async def _rejected(self, route: _Route, i: int, exc: Exception, payload: dict, received_ns: int) -> None:
        """Transform ``i`` raised: InvalidRecord(reason), or a bug that must not stop the source."""
        route.invalid += 1
        name = route.chain_names[i]
        if isinstance(exc, InvalidRecord):
            reason = exc.reason
        else:
            self._engine._transform_crashed(route, i, exc)
            reason = f"transform {name!r} failed: {type(exc).__name__}: {exc}"
        await self._engine._dead_letter(route.name, reason, name, payload, received_ns)

    async def dead_letter(self, stream: str | None, reason: str, raw: Any, received_ns: int | None = None) -> None:
        await self._engine._dead_letter(stream, reason, self.plugin, raw, received_ns)


class Engine:
    """Runs one profile: see the module docstring. Build with :meth:`from_config` or directly
    (tests do) from specs; then ``await engine.run()`` until :meth:`stop` or sources end."""

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
    ):
        self.settings = settings or EngineSettings()
        self.metrics = metrics or Metrics()
        self.config = config
        self.config_dir = Path(config_dir)
        self.log = log or get_logger(component="engine")
        self.streams = {s.name: s for s in streams}
        self._source_plans = sources
        self._transform_specs = transforms
        self._dead_letter_id = dead_letter
        self._runners: dict[str, _SinkRunner] = {}
        self._routes: dict[str, _Route] = {}
        self._dead: list[DeadLetter] = []
        self._dead_since = 0.0
        self._dead_by_stream: dict[str, int] = {}
        self._dead_pushed: dict[str, int] = {}
        self._dead_unrouted = 0  # dead letters of a profile without a destination (the first 5 are logged)
        self._stop = asyncio.Event()
        self._stop_requested_at: float | None = None
        self.abandoned: dict[tuple[str, str], int] = {}  # (sink, stream) → records not committed at stop
        self._resume: dict[str, dict[str, int]] = {}  # stream → symbol → last id held (see _read_resume_points)
        self._gaps: list[TradeGap] = []  # reported by sources, not yet handed to the sinks
        self.ready = asyncio.Event()  # set once the sinks are open and the sources started
        self._source_tasks: dict[str, asyncio.Task] = {}
        self._crash_logged: set = set()
        self.started_at: float | None = None
        self.stopped_at: float | None = None

        for sink_id, (spec, options) in sinks.items():
            self._runners[sink_id] = _SinkRunner(sink_id, spec, dict(options or {}), self.settings.queue_batches)
        if dead_letter is not None:
            runner = self._runners.get(dead_letter)
            if runner is None:
                raise EngineError(f"dead-letter destination {dead_letter!r} is not a configured sink")
            if not runner.spec.supports_dead_letters:
                raise EngineError(f"{runner.who} cannot store dead letters (supports_dead_letters is false)")
        for stream in streams:
            self._routes[stream.name] = self._build_route(stream)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Any, plugins: Any, profile: str | None = None, metrics: Metrics | None = None, log=None) -> Engine:
        """Build from the loaded :class:`~tickwire.framework.config.Config` and the plugin manager."""
        prof = config.profile(profile)  # None: the config's default profile
        streams = config.profile_streams(prof)  # copies, with .sinks = the profile's sinks
        wanted = set(prof.sinks) | ({prof.dead_letter} if prof.dead_letter else set())
        sinks = {}
        for sink_id in sorted(wanted):
            if sink_id not in config.sinks:
                raise EngineError(f"profile {prof.name!r}: sink {sink_id!r} is not declared under sinks:")
            type_, options = config.sinks[sink_id]
            if type_ not in plugins.sinks:
                raise EngineError(f"sink {sink_id!r}: no sink plugin named {type_!r} (known: {', '.join(sorted(plugins.sinks))})")
            sinks[sink_id] = (plugins.sinks[type_], options)
        source_options = _sources_section(config)
        sources = {}
        for sid in sorted({s.source for s in streams}):
            opts = dict(source_options.get(sid) or {})
            type_ = opts.pop("type", sid)
            if type_ not in plugins.sources:
                raise EngineError(f"source {sid!r}: no source plugin named {type_!r} (known: {', '.join(sorted(plugins.sources))})")
            sources[sid] = (plugins.sources[type_], opts)
        for kind, used in (("sink", sinks), ("source", sources)):
            for component_id, (spec, _options) in sorted(used.items()):
                if spec.requires is not None:  # an optional dependency: say how to install it
                    spec.requires.check(f"{kind} {component_id!r} (type {spec.name}, plugin {spec.plugin})")
        return cls(
            streams=streams,
            sources=sources,
            sinks=sinks,
            transforms=dict(plugins.transforms),
            dead_letter=prof.dead_letter,
            settings=EngineSettings.from_options(getattr(config, "engine", None)),
            metrics=metrics,
            config=config,
            config_dir=getattr(config, "dir", "."),
            log=log,
        )

    def _build_route(self, stream: StreamSpec) -> _Route:
        chain, names = [], []
        # None: the default chain; an explicit [] means records go to the sinks as received
        for name, options in DEFAULT_TRANSFORMS if stream.transforms is None else stream.transforms:
            spec = self._transform_specs.get(name)
            if spec is None:
                raise EngineError(
                    f"stream {stream.name!r}: no transform named {name!r} (known: {', '.join(sorted(self._transform_specs))})"
                )
            try:
                chain.append(spec.factory(stream, dict(options or {})))
            except Exception as exc:
                raise EngineError(f"transform {name!r} (plugin {spec.plugin or name}), stream {stream.name!r}: {exc}") from exc
            names.append(name)
        lag_field = "E"
        for col in stream.columns:
            if col.name == stream.event_time and col.field:
                lag_field = col.field
        every = self.settings.lag_sample_every
        every = 1 << max(0, (every - 1).bit_length()) if every > 1 else 1
        route = _Route(stream, chain, names, lag_field, every)
        route.lag_hist = self.metrics.event_lag_seconds.labels(stream=stream.name)
        for sink_id in stream.sinks:
            runner = self._runners.get(sink_id)
            if runner is None:
                raise EngineError(f"stream {stream.name!r}: sink {sink_id!r} is not configured")
            route.lanes.append(_Lane(runner, stream, route))
            route.written[sink_id] = 0
        return route

    def _context(self, plugin: str, component: str, name: str, streams: list[StreamSpec]) -> RunContext:
        ctx = RunContext(
            config=self.config,
            streams=streams,
            metrics=self.metrics,
            log=get_logger(plugin=plugin, component=component, **{component: name}),
            config_dir=self.config_dir,
        )
        if component == "source":
            ctx.resume = {s.name: dict(self._resume[s.name]) for s in streams if s.name in self._resume}
            ctx.report_gap = self.report_gap
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
                runner.task = asyncio.create_task(self._sink_worker(runner), name=f"tickwire-sink-{runner.id}")
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
            self.log.info("stopping", reason="stop requested" if self._stop.is_set() else "sources finished",
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
            if not await self._drain(writes_until):
                self._abandon()
        finally:
            if ticker is not None:
                ticker.cancel()
            for task in self._source_tasks.values():
                task.cancel()
            for runner in self._runners.values():
                if runner.task is not None and not runner.task.done():
                    runner.task.cancel()
            await self._close_sinks(deadline or self._shutdown_deadline())
            self._push_metrics()
            self.stopped_at = time.monotonic()

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
            task.result()  # a worker's bug fails the run, as before
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

    def _abandon(self) -> None:
        """Count what was not committed by the deadline: log it once, add it to the metric."""
        counts = self.take_uncommitted()
        self.abandoned = counts
        for runner in self._runners.values():  # the summary's "not committed" says the same
            runner.pending = sum(n for (sink, _), n in counts.items() if sink == runner.id)
        if not counts:
            return
        for (sink, stream), n in counts.items():
            self.metrics.records_abandoned.labels(sink=sink, stream=stream).inc(n)
        self.log.error(
            f"shutdown_timeout_s ({self.settings.shutdown_timeout_s:g}s) reached: {describe_uncommitted(counts)}",
            **uncommitted_fields(counts),
        )

    def take_uncommitted(self) -> dict[tuple[str, str], int]:
        """Records received but not committed, per (sink, stream): buffered, queued or in a
        write that has not returned. Empties the queues: only for a run that is over (the
        shutdown deadline, a forced exit)."""
        counts: dict[tuple[str, str], int] = {}
        self._count_buffers(counts)
        for runner in self._runners.values():
            items = [] if runner.carry is _NOTHING else [runner.carry]
            runner.carry = _NOTHING
            while not runner.queue.empty():
                items.append(runner.queue.get_nowait())
            for item in items:
                if item is not None:
                    _add(counts, runner.id, item[0], len(item[1]))
            for stream, n in runner.writing.values():
                _add(counts, runner.id, stream, n)
            runner.writing.clear()
        return counts

    def _count_buffers(self, counts: dict[tuple[str, str], int]) -> None:
        for route in self._routes.values():
            for lane in route.lanes:
                if lane.buf:
                    _add(counts, lane.runner.id, lane.stream, len(lane.buf))
        if self._dead and self._dead_letter_id is not None:
            _add(counts, self._dead_letter_id, None, len(self._dead))

    async def _open_sinks(self) -> None:
        for runner in self._runners.values():
            spec = runner.spec
            streams = [r.stream for r in self._routes.values() if any(l.runner is runner for l in r.lanes)]
            ctx = self._context(spec.plugin or spec.name, "sink", runner.id, streams)
            try:
                runner.sink = spec.factory(runner.id, runner.options, ctx)
                await runner.sink.open()
            except Exception as exc:
                runner.sink = None
                await self._close_sinks()
                raise EngineError(f"{runner.who}: cannot open: {exc}") from exc

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

    async def _read_resume_points(self) -> None:
        """Ask every sink of each sequenced stream what it holds; keep, per symbol, the minimum
        over the sinks that could tell (the least complete store decides) for the sources."""
        for route in self._routes.values():
            stream = route.stream
            if stream.sequence is None:
                continue
            answers: dict[str, dict[str, int] | None] = {}
            for lane in route.lanes:
                runner = lane.runner
                if not isinstance(runner.sink, ResumableSink):
                    continue
                try:
                    answers[runner.id] = await runner.sink.last_sequence_ids(stream)
                except Exception as exc:
                    raise EngineError(f"{runner.who}, stream {stream.name!r}: cannot read what it holds: {exc}") from exc
            points = combine(answers)
            told = sorted(sink_id for sink_id, answer in answers.items() if answer is not None)
            if not points:
                why = "the stores hold nothing yet" if told else "no store can tell what it holds"
                self.log.info(f"resuming {stream.name}: from the live stream ({why})", stream=stream.name)
                continue
            self._resume[stream.name] = {symbol: last for symbol, (last, _) in points.items()}
            where = ", ".join(f"{symbol} from id {last} ({sink_id})" for symbol, (last, sink_id) in sorted(points.items()))
            fresh = sorted(set(stream.symbols) - set(points))
            self.log.info(
                f"resuming {stream.name}: {where}" + (f"; from the live stream: {', '.join(fresh)}" if fresh else ""),
                stream=stream.name, sinks=told,
            )

    def report_gap(self, gap: TradeGap) -> None:
        """A source gave up on ``gap``: log it, count it, and queue it for the stream's stores
        (``write_gaps``) or, for a stream whose stores cannot record gaps, the dead-letter
        destination. Never blocks; handed over by the ticker and at shutdown."""
        self.metrics.trade_gap_trades_lost.labels(stream=gap.stream, symbol=gap.symbol, reason=gap.reason).inc(gap.count)
        self.log.warning(
            f"trades lost: {gap.symbol} ids {gap.first_id}..{gap.last_id} ({gap.count} trades) of stream "
            f"{gap.stream!r} cannot be fetched ({gap.reason}); recorded in the stream's stores (trade_gaps) or dead letters",
            stream=gap.stream, symbol=gap.symbol, first_id=gap.first_id, last_id=gap.last_id, lost=gap.count, reason=gap.reason,
        )
        self._gaps.append(gap)

    async def _flush_gaps(self) -> None:
        gaps, self._gaps = self._gaps, []
        try:
            await self._hand_over_gaps(gaps)
        except asyncio.CancelledError:
            # the shutdown flush hands them over again (write_gaps is idempotent per range)
            self._gaps[:0] = gaps
            raise

    async def _hand_over_gaps(self, gaps: list[TradeGap]) -> None:
        by_stream: dict[str, list[TradeGap]] = {}
        for gap in gaps:
            by_stream.setdefault(gap.stream, []).append(gap)
        for name, stream_gaps in by_stream.items():
            route = self._routes.get(name)
            runners = [lane.runner for lane in route.lanes] if route is not None else []
            recording = [r for r in runners if isinstance(r.sink, GapRecordingSink)]
            for runner in recording:
                runner.pending += len(stream_gaps)
                await runner.queue.put((GAPS, list(stream_gaps)))
            if not recording:
                for gap in stream_gaps:
                    letter = gap_dead_letter(gap)
                    await self._dead_letter(gap.stream, letter.reason, "engine", letter.raw, None)

    def _start_sources(self) -> None:
        for sid, (spec, options) in self._source_plans.items():
            streams = [s for s in self.streams.values() if s.source == sid]
            ctx = self._context(spec.plugin or spec.name, "source", sid, streams)
            try:
                source = spec.factory(sid, dict(options), ctx)
            except Exception as exc:
                raise EngineError(f"source {sid!r} (plugin {spec.plugin or spec.name}): cannot start: {exc}") from exc
            emitter = Emitter(self, sid, spec.plugin or spec.name)
            self._source_tasks[sid] = asyncio.create_task(self._run_source(sid, spec, source, emitter), name=f"tickwire-source-{sid}")

    async def _run_source(self, sid: str, spec: SourceSpec, source: Any, emitter: Emitter) -> None:
        delay = 1.0
        while True:
            try:
                await source.run(emitter)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error(
                    f"source {sid!r} (plugin {spec.plugin or spec.name}) failed: {type(exc).__name__}: {exc}; restarting in {delay:g}s",
                    source=sid,
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- hot path helpers ----------------------------------------------------------------------

    async def _flush(self, lane: _Lane) -> None:
        batch = lane.buf
        if not batch:
            return
        lane.buf = []
        runner = lane.runner
        n = len(batch)
        runner.pending += n
        lane.route.last = batch[-1]
        try:
            await runner.queue.put((lane.stream, batch))
        except asyncio.CancelledError:
            # not handed over: put it back so the shutdown flush sends it
            runner.pending -= n
            lane.buf[:0] = batch
            raise

    async def _dead_letter(self, stream: str | None, reason: str, plugin: str, raw: Any, received_ns: int | None) -> None:
        key = stream or "unknown"
        self._dead_by_stream[key] = self._dead_by_stream.get(key, 0) + 1
        letter = DeadLetter(stream=stream, reason=reason, plugin=plugin, raw=_raw_text(raw), received_at=iso_ns(received_ns))
        if self._dead_letter_id is None:
            # no destination: log the first few (not every one: that would be per-record
            # logging), count them all in tickwire_dead_letters_total
            self._dead_unrouted += 1
            if self._dead_unrouted <= 5:
                more = " (only the first 5 are logged)" if self._dead_unrouted == 5 else ""
                self.log.warning(f"dead letter, and the profile has no dead_letter destination{more}: {reason}",
                                 stream=stream, plugin=plugin, raw=letter.raw[:200])
            return
        if not self._dead:
            self._dead_since = time.monotonic()
        self._dead.append(letter)
        if len(self._dead) >= self.settings.batch_size:
            await self._flush_dead()

    async def _flush_dead(self) -> None:
        letters = self._dead
        if not letters:
            return
        self._dead = []
        runner = self._runners[self._dead_letter_id]
        runner.pending += len(letters)
        try:
            await runner.queue.put((None, letters))
        except asyncio.CancelledError:
            runner.pending -= len(letters)
            self._dead[:0] = letters
            raise

    def _sample_lag(self, route: _Route, payload: Any, received_ns: int) -> None:
        try:
            event_ms = payload[route.lag_field]
            lag = (received_ns or time.time_ns()) / 1e9 - event_ms / 1000.0
        except (KeyError, TypeError, IndexError):
            return
        route.lag = lag
        route.lag_hist.observe(max(0.0, lag))

    def _transform_crashed(self, route: _Route, i: int, exc: Exception) -> None:
        key = (route.name, i)
        if key not in self._crash_logged:  # once per transform and stream, not per record
            self._crash_logged.add(key)
            self.log.error(
                f"transform {route.chain_names[i]!r}, stream {route.name!r} raised {type(exc).__name__}: {exc} "
                "(records go to the dead-letter destination; logged once)",
                stream=route.name,
                exc_info=exc,
            )

    async def _flush_all(self) -> None:
        if self._gaps:
            await self._flush_gaps()
        for route in self._routes.values():
            for lane in route.lanes:
                await self._flush(lane)
        if self._dead_letter_id is not None:
            await self._flush_dead()

    async def _tick(self) -> None:
        linger = self.settings.linger_ms / 1000.0
        interval = min(max(linger / 4, 0.002), 0.1)
        next_push = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for route in self._routes.values():
                for lane in route.lanes:
                    if lane.buf and now - lane.since >= linger:
                        await self._flush(lane)
            if self._gaps:
                await self._flush_gaps()
            if self._dead and now - self._dead_since >= linger:
                await self._flush_dead()
            if now >= next_push:
                self._push_metrics()
                next_push = now + self.settings.metrics_interval_s

    # -- sinks -----------------------------------------------------------------------------------

    async def _sink_worker(self, runner: _SinkRunner) -> None:
        queue = runner.queue
        commit = self.metrics.batch_commit_seconds.labels(sink=runner.id)
        written_children: dict[str, Any] = {}
        limit = self.settings.batch_size * max(1, self.settings.coalesce_batches)
        # A sink may declare max_in_flight > 1: then up to that many writes run concurrently,
        # started in queue order (the sink keeps its own ordering guarantees; see the module
        # docstring). 1, the default, is one write at a time.
        try:
            max_in_flight = max(1, int(getattr(runner.sink, "max_in_flight", 1) or 1))
        except (TypeError, ValueError):
            max_in_flight = 1
        in_flight: set[asyncio.Task] = set()
        writes = 0

        async def write_one(stream: StreamSpec | None, records: list) -> None:
            nonlocal writes
            n = len(records)
            writes += 1
            key = writes
            runner.writing[key] = (stream, n)  # until it returns: counted as abandoned if cancelled
            t0 = await self._write_with_retry(runner, stream, records)
            del runner.writing[key]
            elapsed = time.perf_counter() - t0
            commit.observe(elapsed)
            runner.commits += 1
            runner.commit_seconds += elapsed
            runner.pending -= n
            if isinstance(stream, StreamSpec):
                child = written_children.get(stream.name)
                if child is None:
                    child = written_children[stream.name] = self.metrics.messages_written.labels(stream=stream.name, sink=runner.id)
                child.inc(n)
                route = self._routes.get(stream.name)
                if route is not None:
                    route.written[runner.id] = route.written.get(runner.id, 0) + n

        async def settle(return_when: str) -> None:
            nonlocal in_flight
            done, in_flight = await asyncio.wait(in_flight, return_when=return_when)
            for task in done:
                task.result()  # a bug in a write's bookkeeping: fail the worker as before

        try:
            while True:
                if len(in_flight) >= max_in_flight:
                    # wait for a free slot before taking more from the queue: what is in
                    # flight counts toward the memory bound, the queue keeps the backpressure
                    await settle(asyncio.FIRST_COMPLETED)
                if runner.carry is _NOTHING:
                    item = await queue.get()
                else:
                    item, runner.carry = runner.carry, _NOTHING
                if item is None:
                    if in_flight:
                        await settle(asyncio.ALL_COMPLETED)  # shutdown waits for every write
                    return
                stream, records = item
                # A backlog (slow sink, shutdown flush): merge the following batches of the same
                # stream into one write — fewer commits, so the sink catches up faster.
                merged = None
                while queue.qsize() and len(records) < limit:
                    nxt = queue.get_nowait()
                    if nxt is None or nxt[0] is not stream:
                        runner.carry = nxt  # the next write starts with it
                        break
                    if merged is None:
                        merged = records = list(records)
                    merged.extend(nxt[1])
                if max_in_flight == 1:
                    await write_one(stream, records)
                else:
                    # tasks start in creation order: each write's first step runs in queue order
                    in_flight.add(asyncio.create_task(write_one(stream, records), name=f"tickwire-sink-{runner.id}-write"))
        finally:
            for task in in_flight:
                task.cancel()  # only when the worker itself is cancelled or failed
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _write_with_retry(self, runner: _SinkRunner, stream: StreamSpec | None, records: list) -> float:
        """Write until it succeeds; return the perf_counter of the successful attempt's start."""
        delay = self.settings.retry_initial_s
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                if stream is None:
                    await runner.sink.write_dead_letters(records)
                elif stream is GAPS:
                    await runner.sink.write_gaps(records)
                else:
                    await runner.sink.write(stream, records)
                if attempt:
                    self.log.info(
                        f"{runner.who}, {_what(stream)}: write succeeded after {attempt} retries",
                        sink=runner.id, stream=_stream_name(stream),
                    )
                return t0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self.log.warning(
                    f"{runner.who}, {_what(stream)}: {exc}; retrying in {delay:g}s",
                    sink=runner.id,
                    stream=_stream_name(stream),
                    attempt=attempt,
                    records=len(records),
                    error=type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    # -- observability ---------------------------------------------------------------------------

    def _push_metrics(self) -> None:
        m = self.metrics
        for route in self._routes.values():
            pushed = route.pushed
            d = route.received - pushed[0]
            if d:
                m.messages_received.labels(stream=route.name).inc(d)
                pushed[0] = route.received
            d = route.invalid - pushed[1]
            if d:
                m.messages_invalid.labels(stream=route.name).inc(d)
                pushed[1] = route.invalid
        for key, count in self._dead_by_stream.items():
            d = count - self._dead_pushed.get(key, 0)
            if d:
                m.dead_letters.labels(stream=key).inc(d)
                self._dead_pushed[key] = count
        for runner in self._runners.values():
            m.queue_depth.labels(sink=runner.id).set(runner.pending + sum(len(l.buf) for r in self._routes.values() for l in r.lanes if l.runner is runner))

    def snapshot(self) -> dict:
        """Counters for the status table, progress lines and the exit summary."""
        streams = {}
        for name, route in self._routes.items():
            last = route.last or {}
            price = last.get("price", last.get("last_price"))
            streams[name] = {
                "received": route.received,
                "written": dict(route.written),
                "invalid": route.invalid,
                "dead_letters": self._dead_by_stream.get(name, 0),
                "last_price": price,
                "lag_s": route.lag,
            }
        sources = {}
        for sid in self._source_plans:
            sources[sid] = {
                "connections": self.metrics.value("tickwire_connections_open", source=sid),
                "reconnects": self.metrics.value("tickwire_reconnects_total", source=sid),
            }
        sinks = {
            r.id: {"pending": r.pending, "commits": r.commits, "commit_seconds": r.commit_seconds} for r in self._runners.values()
        }
        elapsed = ((self.stopped_at or time.monotonic()) - self.started_at) if self.started_at else 0.0
        return {
            "elapsed_s": elapsed,
            "streams": streams,
            "sources": sources,
            "sinks": sinks,
            "dead_letters_unrouted": self._dead_by_stream.get("unknown", 0),
        }

    def destinations(self) -> list[str]:
        """One human line per sink: where the data goes (uses a sink's ``describe()`` if any)."""
        lines = []
        for runner in self._runners.values():
            describe = getattr(runner.sink, "describe", None)
            where = describe() if callable(describe) else runner.spec.name
            role = " (dead letters)" if runner.id == self._dead_letter_id else ""
            lines.append(f"{runner.id}{role}: {where}")
        return lines


_NOTHING = object()
# In a sink queue, in place of the stream: the batch is a list of TradeGap for write_gaps.
GAPS = object()


def describe_uncommitted(counts: dict[tuple[str, str], int]) -> str:
    """One sentence for a log line: how many records were abandoned, where."""
    where = "; ".join(f"sink {sink!r}, {stream}: {n:,}" for (sink, stream), n in sorted(counts.items()))
    return (f"{sum(counts.values()):,} records were not committed and are abandoned ({where}); a source "
            "that can replay (Binance REST) fills them on the next start")


def uncommitted_fields(counts: dict[tuple[str, str], int]) -> dict:
    """The same counts as structured log fields."""
    return {"abandoned_total": sum(counts.values()),
            "abandoned": {f"{sink}/{stream}": n for (sink, stream), n in sorted(counts.items())}}


def _add(counts: dict[tuple[str, str], int], sink: str, stream: Any, n: int) -> None:
    if stream is None:
        name = DEAD_LETTERS_LABEL
    elif stream is GAPS:
        name = TRADE_GAPS_LABEL
    else:
        name = stream if isinstance(stream, str) else stream.name
    counts[(sink, name)] = counts.get((sink, name), 0) + n


def _what(stream: Any) -> str:
    if stream is GAPS:
        return "trade gaps"
    return f"stream {stream.name!r}" if stream is not None else "dead letters"


def _stream_name(stream: Any) -> str | None:
    return stream.name if isinstance(stream, StreamSpec) else None


def _sources_section(config: Any) -> dict:
    sources = getattr(config, "sources", None)
    if isinstance(sources, dict):
        return {k: (v if isinstance(v, dict) else {"type": v[0], **v[1]}) for k, v in sources.items()}
    data = getattr(config, "data", None) or {}
    return data.get("sources", {}) or {}
