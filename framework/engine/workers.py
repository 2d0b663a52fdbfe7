"""Sink workers: take batches from a sink's queue, write them, and apply the retry policy.

What a failed write means is the sink's to say (framework/components.py):

* :class:`TransientError`, or any exception that is not one of the two below: the batch is
  written again after a delay (:class:`~tickwire.framework.backoff.Backoff`, ``retry_initial_s``
  doubling up to ``retry_max_s``), until it succeeds or the shutdown bound cancels it;
* :class:`BadRecords`: every record of the batch goes to the dead letters with the reason;
* :class:`PermanentError`: the sink stops — this batch and every later one are counted as not
  committed (abandoned) — and the engine stops the run, which then fails with the message.

Writes in flight: a sink whose ``max_in_flight`` is N > 1 gets up to N writes at once, started
in queue order; the worker takes a batch from the queue only when a slot is free. Coalescing:
with a backlog, up to ``coalesce_batches`` consecutive batches of one stream make one write.

Adaptive batching (``engine.batching: adaptive``, the default): when the queue is empty and the
sink has no write in flight, the worker takes a lane's partial buffer at once (whatever has
arrived), so at low rates a record waits only for the sink; while a write runs, records gather
in the lanes, so under load batches grow by themselves up to ``batch_size`` (full ones go through
the queue as before). Partial buffers are taken only with the queue empty and no hand-over
waiting for room: a lane's buffer then holds its oldest unwritten records, so order is kept."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from tickwire.framework.backoff import Backoff
from tickwire.framework.components import BadRecords, PermanentError
from tickwire.framework.engine.dead_letters import DeadLetters
from tickwire.framework.engine.routing import Route
from tickwire.framework.engine.runner import GAPS, NOTHING, SinkRunner, label, stream_name, what
from tickwire.framework.engine.settings import EngineSettings
from tickwire.framework.metrics import Metrics
from tickwire.framework.schemas import StreamSpec

WRITTEN, DEAD_LETTERED, STOPPED = "written", "dead-lettered", "stopped"  # how a write ended


class SinkWorker:
    """The worker of one sink; ``run()`` until it takes the None that ends the queue."""

    def __init__(self, runner: SinkRunner, routes: dict[str, Route], settings: EngineSettings, metrics: Metrics,
                 dead_letters: DeadLetters, log: Any, on_permanent: Callable[[str], None]):
        self.runner = runner
        self.routes = routes
        self.settings = settings
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.log = log
        self.on_permanent = on_permanent
        self.commit = metrics.batch_commit_seconds.labels(sink=runner.id)
        self.written_children: dict[str, Any] = {}
        self.writes = 0

    async def run(self) -> None:
        runner = self.runner
        queue = runner.queue
        limit = self.settings.batch_size * max(1, self.settings.coalesce_batches)
        max_in_flight = runner.traits.max_in_flight
        adaptive = self.settings.batching == "adaptive"
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task] = set()

        async def settle(return_when: str) -> None:
            nonlocal in_flight
            done, in_flight = await asyncio.wait(in_flight, return_when=return_when)
            for task in done:
                task.result()  # a bug in a write's bookkeeping fails the worker

        def write_ended(_task: asyncio.Task) -> None:
            if runner.waiter is not None:
                runner.wake()  # an idle sink may now take a partial batch

        try:
            while True:
                if in_flight:
                    done = {task for task in in_flight if task.done()}
                    if done:
                        in_flight -= done
                        for task in done:
                            task.result()
                if len(in_flight) >= max_in_flight:
                    # a free slot before taking more from the queue: what is in flight counts
                    # toward the memory bound, the queue keeps the backpressure
                    await settle(asyncio.FIRST_COMPLETED)
                if runner.carry is not NOTHING:
                    item, runner.carry = runner.carry, NOTHING
                elif not adaptive:
                    item = await queue.get()
                elif queue.qsize():
                    item = queue.get_nowait()
                else:
                    # adaptive: a sink with no write in flight takes whatever has arrived; while
                    # it is busy the records gather in the lanes (bigger batches under load)
                    item = runner.take_partial() if not in_flight and not runner.handing else None
                    if item is None:
                        runner.waiter = loop.create_future()
                        try:
                            await runner.waiter
                        finally:
                            runner.waiter = None
                        continue
                if item is None:
                    if in_flight:
                        await settle(asyncio.ALL_COMPLETED)  # shutdown waits for every write
                    return
                stream, records = item
                # a backlog (slow sink, shutdown flush): the following batches of the same stream
                # join this write — fewer commits, so the sink catches up faster
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
                    await self.write_one(stream, records)
                else:
                    # tasks start in creation order: each write's first step runs in queue order
                    task = asyncio.create_task(self.write_one(stream, records), name=f"tickwire-sink-{runner.id}-write")
                    task.add_done_callback(write_ended)
                    in_flight.add(task)
        finally:
            for task in in_flight:
                task.cancel()  # only when the worker itself is cancelled or failed
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def write_one(self, stream: StreamSpec | None, records: list) -> None:
        """Write one batch (retrying as the sink's errors say), then count it."""
        runner = self.runner
        n = len(records)
        self.writes += 1
        key = self.writes
        runner.writing[key] = (stream, n)  # until it returns: counted as abandoned if cancelled
        outcome, t0 = (STOPPED, 0.0) if runner.failed is not None else await self.write_with_retry(stream, records)
        del runner.writing[key]
        runner.pending -= n
        if outcome == STOPPED:
            runner.lost[label(stream)] = runner.lost.get(label(stream), 0) + n
            return
        elapsed = time.perf_counter() - t0
        self.commit.observe(elapsed)
        runner.commits += 1
        runner.commit_seconds += elapsed
        if outcome == WRITTEN and isinstance(stream, StreamSpec):
            child = self.written_children.get(stream.name)
            if child is None:
                child = self.written_children[stream.name] = self.metrics.messages_written.labels(stream=stream.name, sink=runner.id)
            child.inc(n)
            self.metrics.latency.commits.committed(stream, runner.id, records)
            route = self.routes.get(stream.name)
            if route is not None:
                route.written[runner.id] = route.written.get(runner.id, 0) + n

    async def write_with_retry(self, stream: StreamSpec | None, records: list) -> tuple[str, float]:
        """Write until it succeeds (WRITTEN), the sink says the records are bad
        (DEAD_LETTERED) or that it cannot go on (STOPPED); with the perf_counter at the start
        of the last attempt."""
        runner = self.runner
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s, jitter=0.0)
        while True:
            t0 = time.perf_counter()
            try:
                if stream is None:
                    await runner.sink.write_dead_letters(records)
                elif stream is GAPS:
                    await runner.sink.write_gaps(records)
                else:
                    await runner.sink.write(stream, records)
                if backoff.attempt:
                    self.log.info(f"{runner.who}, {what(stream)}: write succeeded after {backoff.attempt} retries",
                                  sink=runner.id, stream=stream_name(stream))
                return WRITTEN, t0
            except asyncio.CancelledError:
                raise
            except BadRecords as exc:
                return self.bad_records(stream, records, exc), t0
            except PermanentError as exc:
                self.stop_sink(stream, exc)
                return STOPPED, t0
            except Exception as exc:
                delay = backoff.next_delay()
                self.log.warning(
                    f"{runner.who}, {what(stream)}: {exc}; retrying in {delay:g}s",
                    sink=runner.id, stream=stream_name(stream), attempt=backoff.attempt, records=len(records),
                    error=type(exc).__name__,
                )
                await asyncio.sleep(delay)

    def bad_records(self, stream: StreamSpec | None, records: list, exc: BadRecords) -> str:
        runner = self.runner
        if not isinstance(stream, StreamSpec):  # dead letters or gaps cannot become dead letters
            self.log.error(f"{runner.who}, {what(stream)}: {exc.reason}; {len(records)} are lost",
                           sink=runner.id, stream=label(stream), lost=len(records))
            self.metrics.records_abandoned.labels(sink=runner.id, stream=label(stream)).inc(len(records))
            return DEAD_LETTERED
        self.log.warning(f"{runner.who}, {what(stream)}: {exc.reason}; the batch's {len(records)} records go to "
                         "the dead letters", sink=runner.id, stream=stream.name, records=len(records))
        plugin = f"{runner.spec.name}:{runner.id}"
        for record in records:
            self.dead_letters.keep(stream.name, f"{runner.who} refused the record: {exc.reason}", plugin, record, None)
        return DEAD_LETTERED

    def stop_sink(self, stream: StreamSpec | None, exc: PermanentError) -> None:
        runner = self.runner
        message = f"{runner.who}, {what(stream)}: {exc}"
        runner.failed = message
        self.log.error(f"{message}; retrying cannot fix this: stopping the run", sink=runner.id,
                       stream=stream_name(stream), error=type(exc).__name__)
        self.on_permanent(message)
