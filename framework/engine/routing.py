"""The hot path: a source's payload → its stream's transforms → one buffer per sink → a full
buffer onto the sink's bounded queue (that wait is the backpressure). With adaptive batching an
idle sink's worker takes a partial buffer itself: the first record into an empty buffer wakes it.

No hook calls and no lookups by name on the way: a stream's :class:`Route` holds its transform
chain (or the fused function), its lanes and its counters, all built once by the plan
(framework/engine/plan.py). Counters are plain integers; the ticker pushes them to Prometheus."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tickwire.framework.components import InvalidRecord, Rejected, Transform
from tickwire.framework.engine.dead_letters import DeadLetters
from tickwire.framework.engine.runner import SinkRunner
from tickwire.framework.schemas import StreamSpec


class Lane:
    """Records of one stream waiting for one sink."""

    __slots__ = ("runner", "stream", "route", "buf", "since", "before")

    def __init__(self, runner: SinkRunner, stream: StreamSpec, route: Route):
        self.runner = runner
        self.stream = stream
        self.route = route
        self.buf: list = []
        self.since = 0.0
        self.before: list[Lane] = []  # derived lanes of the same sink, handed over first


class Route:
    """Everything about one stream the hot path needs, in slots."""

    __slots__ = (
        "stream", "name", "chain", "chain_names", "fused", "lanes", "received", "invalid", "written",
        "last", "lag", "lag_field", "lag_mask", "pushed", "lag_hist", "crashed", "taps", "derived_from",
    )

    def __init__(self, stream: StreamSpec, chain: list[Transform], chain_names: list[str], fused: Transform | None,
                 lag_field: str, lag_every: int, lag_hist: Any):
        self.stream = stream
        self.name = stream.name
        self.chain = tuple(chain)
        self.chain_names = chain_names
        self.fused = fused  # the whole chain in one function (FusableTransform), or None
        self.lanes: list[Lane] = []
        self.received = 0
        self.invalid = 0
        self.written: dict[str, int] = {}
        self.last: dict | None = None
        self.lag: float | None = None
        self.lag_field = lag_field
        self.lag_mask = max(1, lag_every) - 1
        self.pushed = [0, 0]  # received, invalid already added to Prometheus
        self.lag_hist = lag_hist
        self.crashed: set[int] = set()  # transforms whose crash was logged (once each)
        self.taps: list[tuple[Any, Route]] = []  # derived streams computed from this one (Deriver, its route)
        self.derived_from: str | None = None  # a derived stream's source: its records are not messages


async def hand_over(lane: Lane) -> None:
    """Put the lane's buffer on its sink's queue (waits while the queue is full); a batch not
    handed over because of cancellation goes back to the buffer for the shutdown flush."""
    for derived in lane.before:  # a source record is never committed before its derived update
        await hand_over(derived)
    batch = lane.buf
    if not batch:
        return
    lane.buf = []
    runner = lane.runner
    n = len(batch)
    runner.pending += n
    lane.route.last = batch[-1]
    runner.handing += 1  # while it waits for room, the worker takes no partial batch (order)
    try:
        await runner.queue.put((lane.stream, batch))
    except asyncio.CancelledError:
        runner.pending -= n
        lane.buf[:0] = batch
        raise
    finally:
        runner.handing -= 1


def append_derived(route: Route, records: list[dict], batch_size: int, full: list[Lane] | None = None) -> list[Lane] | None:
    """Append derived ``records`` to every lane of their route; returns ``full`` plus the lanes
    that reached ``batch_size``."""
    route.received += len(records)
    for lane in route.lanes:
        buf = lane.buf
        if not buf:
            lane.since = time.monotonic()
        buf += records
        if len(buf) >= batch_size:
            full = [lane] if full is None else full + [lane]
    return full


def sample_lag(route: Route, payload: Any, received_ns: int) -> None:
    """Event-time lag of one record (one in ``lag_sample_every``) into the route and histogram."""
    try:
        event_ms = payload[route.lag_field]
        lag = (received_ns or time.time_ns()) / 1e9 - event_ms / 1000.0
    except (KeyError, TypeError, IndexError):
        return
    route.lag = lag
    route.lag_hist.observe(max(0.0, lag))


class Emitter:
    """What a source gets: ``await emit.record(stream, payload, received_ns)``, or its hot-loop
    variant ``record_nowait``; the contract is :class:`tickwire.framework.components.Emitter`'s.
    Built by :meth:`Engine.emitter` from the routes, the dead letters and a logger."""

    def __init__(self, routes: dict[str, Route], batch_size: int, dead_letters: DeadLetters, log: Any,
                 source_id: str, plugin: str):
        self._routes = routes
        self._batch_size = batch_size
        self._dead_letters = dead_letters
        self._log = log
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
            sample_lag(route, payload, received_ns)
        fused = route.fused
        if fused is not None:
            try:
                rec = fused(payload)
            except Exception as exc:  # InvalidRecord names the step that rejected it
                return Rejected(self._rejected(route, exc.step if isinstance(exc, InvalidRecord) else 0, exc, payload, received_ns))
            if rec is None:
                return None
        else:
            rec = payload
            i = 0
            try:
                for fn in route.chain:
                    rec = fn(rec)
                    if rec is None:
                        return None  # dropped on purpose: counts as accepted
                    i += 1
            except Exception as exc:
                return Rejected(self._rejected(route, i, exc, payload, received_ns))
        full = None if not route.taps else self._derive(route, rec)
        for lane in route.lanes:
            buf = lane.buf
            if not buf:
                lane.since = time.monotonic()
                if lane.runner.waiter is not None:  # an idle sink (adaptive batching): it takes this batch
                    lane.runner.wake()
            buf.append(rec)
            if len(buf) >= self._batch_size:
                full = [lane] if full is None else full + [lane]
        return None if full is None else self._hand_over(full)

    def _derive(self, route: Route, rec: dict) -> list[Lane] | None:
        """The derived records ``rec`` changes, appended to their lanes; the lanes now full."""
        full = None
        for deriver, derived in route.taps:
            try:
                out = deriver.observe(rec)
            except Exception as exc:  # a deriver's bug must not stop the source: its stream lags, logged once
                if -1 not in derived.crashed:
                    derived.crashed.add(-1)
                    self._log.error(f"derived {derived.name!r} raised {type(exc).__name__}: {exc} on a {route.name!r} "
                                    "record (the record is stored; its derived rows are not updated; logged once)",
                                    stream=derived.name, exc_info=exc)
                continue
            if out:
                full = append_derived(derived, out, self._batch_size, full)
        return full

    async def _hand_over(self, lanes: list[Lane]) -> None:
        for lane in lanes:
            await hand_over(lane)

    async def _rejected(self, route: Route, i: int, exc: Exception, payload: dict, received_ns: int) -> None:
        """Transform ``i`` raised: InvalidRecord(reason), or a bug that must not stop the source."""
        route.invalid += 1
        name = route.chain_names[min(i, len(route.chain_names) - 1)]
        if isinstance(exc, InvalidRecord):
            reason = exc.reason
        else:
            if i not in route.crashed:  # once per transform and stream, not per record
                route.crashed.add(i)
                self._log.error(
                    f"transform {name!r}, stream {route.name!r} raised {type(exc).__name__}: {exc} "
                    "(records go to the dead-letter destination; logged once)",
                    stream=route.name, exc_info=exc,
                )
            reason = f"transform {name!r} failed: {type(exc).__name__}: {exc}"
        await self._dead_letters.add(route.name, reason, name, payload, received_ns)

    async def dead_letter(self, stream: str | None, reason: str, raw: Any, received_ns: int | None = None) -> None:
        """Report a frame that cannot become a record (malformed, unknown, oversized…)."""
        await self._dead_letters.add(stream, reason, self.plugin, raw, received_ns)
