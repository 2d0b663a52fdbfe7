"""One sink as the engine runs it: the opened sink, its traits, its bounded queue and the
bookkeeping the worker, the shutdown accounting and the stats share.

A queue item is ``(stream, records)``: ``stream`` is the :class:`StreamSpec` for records, None
for dead letters, :data:`GAPS` for trade gaps; ``None`` instead of an item tells the worker to
finish.

Adaptive batching (``engine.batching: adaptive``): besides the queue, the worker takes partial
batches straight from the runner's lanes when the sink has no write in flight. An idle worker
waits on :attr:`SinkRunner.waiter`; :meth:`SinkRunner.wake` resolves it — called by the queue
on every put, by the hot path when a lane gets its first record, and when a write ends."""

from __future__ import annotations

import asyncio
from typing import Any

from tickwire.framework.components import SinkSpec, SinkTraits
from tickwire.framework.schemas import StreamSpec

NOTHING = object()  # SinkRunner.carry when the worker holds no item
GAPS = object()  # in a sink queue, in place of the stream: the batch is TradeGaps for write_gaps
DEAD_LETTERS_LABEL = "dead_letters"  # the stream label of dead letters in counts
TRADE_GAPS_LABEL = "trade_gaps"  # likewise for lost-range records


class SinkQueue(asyncio.Queue):
    """The sink's bounded queue; every put also wakes the worker if it waits (:meth:`SinkRunner.wake`)."""

    def __init__(self, maxsize: int, runner: SinkRunner):
        super().__init__(maxsize)
        self._runner = runner

    def _put(self, item: Any) -> None:
        super()._put(item)
        if self._runner.waiter is not None:
            self._runner.wake()


class SinkRunner:
    """One configured sink: built by the plan, opened by the engine, fed by the hot path."""

    def __init__(self, sink_id: str, spec: SinkSpec, options: dict, queue_batches: int):
        self.id = sink_id
        self.spec = spec
        self.options = options  # complete: the schema's defaults filled in
        self.sink: Any = None
        self.traits = SinkTraits(supports_dead_letters=spec.supports_dead_letters, describe=spec.name)
        self.queue: asyncio.Queue = SinkQueue(max(1, queue_batches), self)
        self.lanes: list = []  # the routing Lanes feeding this sink (adaptive batching takes from them)
        self.waiter: asyncio.Future | None = None  # set while the worker waits for work
        self.handing = 0  # batches taken from a lane and not yet in the queue (hand_over waiting)
        self._next_lane = 0
        self.pending = 0  # records queued or being written
        self.task: asyncio.Task | None = None
        self.carry: Any = NOTHING  # what the worker took from the queue for its next write
        self.writing: dict[int, tuple[StreamSpec | None, int]] = {}  # writes started, not returned
        self.failed: str | None = None  # the PermanentError that stopped this sink
        self.lost: dict[str, int] = {}  # stream label → records not written after it failed
        self.commits = 0
        self.commit_seconds = 0.0

    def wake(self) -> None:
        """Wake the worker waiting for work (a queued batch, a first record, a write that ended)."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_partial(self) -> tuple[StreamSpec, list] | None:
        """The buffer of the next lane holding records (round robin), taken as a batch; None
        when every lane is empty. Only when the queue is empty and no hand-over is waiting:
        then a lane's buffer holds its oldest records not yet written, so order is kept."""
        lanes = self.lanes
        n = len(lanes)
        for i in range(n):
            lane = lanes[(self._next_lane + i) % n]
            batch = lane.buf
            if batch:
                self._next_lane = (self._next_lane + i + 1) % n
                lane.buf = []
                self.pending += len(batch)
                lane.route.last = batch[-1]
                return lane.stream, batch
        return None

    @property
    def who(self) -> str:
        return f"sink {self.id!r} (plugin {self.spec.plugin or self.spec.name})"


def label(stream: Any) -> str:
    """The stream part of a count's key: a stream's name, or what stands in its place."""
    if stream is None:
        return DEAD_LETTERS_LABEL
    if stream is GAPS:
        return TRADE_GAPS_LABEL
    return stream if isinstance(stream, str) else stream.name


def what(stream: Any) -> str:
    """The batch's content for a log line: "stream 'trade'", "dead letters", "trade gaps"."""
    if stream is GAPS:
        return "trade gaps"
    return f"stream {stream.name!r}" if stream is not None else "dead letters"


def stream_name(stream: Any) -> str | None:
    return stream.name if isinstance(stream, StreamSpec) else None
