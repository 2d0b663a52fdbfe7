"""The source contract suite: what every source, built-in or not, must do against a real server.

* **cancels cleanly**: its task cancelled, ``run`` ends within ``cancel_within_s``, leaves no
  task of its own behind and nothing asyncio would log as "exception was never retrieved";
* **reconnects by itself**: when the server ends every connection, records flow again without
  anyone calling the source, and ``run`` does not return;
* **reports bad frames as dead letters**: a server that sends frames the source cannot use gets
  them reported through ``emit.dead_letter`` with a reason, and the source keeps reading;
* **blocks under backpressure**: while the emitter does not accept, the source hands over
  nothing more and its memory stays bounded however much the server sends; once the emitter
  accepts again, records flow again.

The author starts the server (their own, or the one their tests already use) and describes it
in a :class:`SourceCase`; then subclasses :class:`SourceContract` (pytest) or awaits
:func:`check_source_contract`. The source talks to the case's server through its ``options``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
from dataclasses import dataclass
from typing import Awaitable, Callable

import orjson

from tickwire.framework.components import RunContext, SourceSpec
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.testing.builders import await_me_maybe, make_context
from tickwire.framework.testing.fakes import RecordingEmitter

MiB = 2**20


@dataclass
class SourceCase:
    """A source under test and the server it reads from.

    ``drop_connections()`` makes the server end every connection it has open (abruptly, as a
    network fault would) and returns how many it ended (sync or async). ``sends_bad_frames``:
    the server sends, now and then, frames the source cannot turn into records (malformed,
    unknown, oversized…) — the dead-letter check needs it. The server must send continuously,
    fast enough that unbounded buffering would show: ``memory_bound`` is the most a blocked
    source may grow while ``hold_s`` seconds of data arrive."""

    spec: SourceSpec
    options: dict
    streams: list[StreamSpec]
    drop_connections: Callable[[], int | Awaitable[int]]
    sends_bad_frames: bool = False
    ctx_factory: Callable[[list[StreamSpec]], RunContext] = make_context
    name: str | None = None  # the source's id; default: the ``source`` of the first stream
    timeout_s: float = 20.0  # for records to arrive (first connection, reconnect)
    cancel_within_s: float = 5.0
    hold_s: float = 3.0
    memory_bound: int = 1 * MiB


class Running:
    """One source running in a task with a :class:`RecordingEmitter`, and what asyncio reported."""

    def __init__(self, case: SourceCase):
        self.case = case
        self.emitter = RecordingEmitter()
        self.name = case.name or case.streams[0].source
        self.source = case.spec.factory(self.name, dict(case.options), case.ctx_factory(case.streams))
        self.reports: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.reports.append(str(context.get("message"))))
        self._handler = _ReportHandler(self.reports)
        logging.getLogger("asyncio").addHandler(self._handler)
        self.tasks_before = asyncio.all_tasks()
        self.task = asyncio.create_task(self.source.run(self.emitter), name=f"source {self.name}")

    async def wait_for(self, what: str, condition: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until ``condition()``; fail naming ``what`` (and why the source ended, if it did)."""
        deadline = time.monotonic() + (self.case.timeout_s if timeout is None else timeout)
        while not condition():
            self.assert_running(what)
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what}: not within {self.case.timeout_s:.0f}s"
            self.emitter.changed.clear()
            try:
                await asyncio.wait_for(self.emitter.changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    async def records_beyond(self, n: int, what: str) -> None:
        await self.wait_for(what, lambda: len(self.emitter.records) > n)

    def assert_running(self, what: str) -> None:
        if self.task.done():
            error = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"{what}: the source's run() ended" + (f" with {error!r}" if error else " (it must run until cancelled)"))

    async def stop(self) -> None:
        """Cancel the source and check it ends promptly and cleanly."""
        self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=self.case.cancel_within_s)
        assert done, f"run() still going {self.case.cancel_within_s}s after its task was cancelled"
        if not self.task.cancelled() and self.task.exception() is not None:
            raise AssertionError(f"run() raised {self.task.exception()!r} when cancelled (expected CancelledError)")
        for _ in range(20):  # let done-callbacks and closing transports run
            await asyncio.sleep(0.01)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() - self.tasks_before if t is not current and not t.done()]
        assert not left, f"tasks left running after cancel: {[t.get_name() + ' ' + repr(t.get_coro()) for t in left]}"
        gc.collect()  # a task that failed and was dropped reports "never retrieved" when collected
        await asyncio.sleep(0)
        logging.getLogger("asyncio").removeHandler(self._handler)
        assert not self.reports, f"asyncio reported: {self.reports}"


class _ReportHandler(logging.Handler):
    def __init__(self, reports: list[str]):
        super().__init__(logging.WARNING)
        self.reports = reports

    def emit(self, record: logging.LogRecord) -> None:
        self.reports.append(record.getMessage())


async def check_cancels_cleanly(case: SourceCase) -> None:
    running = Running(case)
    try:
        await running.records_beyond(0, "first record")
    finally:
        await running.stop()


async def check_reconnects(case: SourceCase) -> None:
    """Two drops: after the first, records flow again; the second drop must find a connection to
    end, which only a source that reconnected by itself has."""
    running = Running(case)
    try:
        await running.records_beyond(0, "first record")
        for attempt in ("first", "second"):
            ended = await await_me_maybe(case.drop_connections())
            assert ended >= 1, f"the {attempt} drop ended {ended} connections: the source was not connected"
            seen = len(running.emitter.records)
            await asyncio.sleep(0.2)  # what was in flight before the drop
            await running.records_beyond(max(seen, len(running.emitter.records)), f"records after the {attempt} drop")
    finally:
        await running.stop()


async def check_bad_frames_are_dead_letters(case: SourceCase) -> None:
    assert case.sends_bad_frames, "this check needs a server that sends bad frames (SourceCase.sends_bad_frames)"
    running = Running(case)
    try:
        letters = running.emitter.dead_letters
        await running.wait_for("a dead letter for a bad frame", lambda: len(letters) > 0)
        for stream, reason, raw in letters:
            assert isinstance(reason, str) and reason.strip(), f"dead letter without a reason: {(stream, reason, raw)!r}"
            assert isinstance(raw, (str, bytes)), f"dead letter raw must be the frame as str or bytes, not {type(raw).__name__}"
            assert stream is None or stream in {s.name for s in case.streams}, f"dead letter for unknown stream {stream!r}"
        seen = len(running.emitter.records)
        await running.records_beyond(seen, "records after a bad frame (the source must keep reading)")
    finally:
        await running.stop()


async def check_backpressure_blocks(case: SourceCase) -> None:
    running = Running(case)
    emitter = running.emitter
    tracing = tracemalloc.is_tracing()
    try:
        await running.records_beyond(0, "first record")
        start, t0 = len(emitter.records), time.monotonic()
        await asyncio.sleep(1.0)
        rate = (len(emitter.records) - start) / (time.monotonic() - t0)
        sample = emitter.records[start:] or emitter.records
        frame_bytes = sum(len(orjson.dumps(p)) for _, p in sample[:1000]) / min(len(sample), 1000)
        # what the server sends meanwhile, as JSON text: kept as objects it takes several times that
        would_buffer = rate * case.hold_s * frame_bytes
        assert would_buffer >= case.memory_bound, (
            f"the server sends {rate:.0f} records/s of {frame_bytes:.0f} bytes: too little for {case.hold_s}s to tell "
            f"a bounded buffer from an unbounded one (raise the server's rate, hold_s, or lower memory_bound)")
        if not tracing:
            tracemalloc.start()
        emitter.block()
        await running.wait_for("a record handed over after the emitter blocked", lambda: emitter.calls_while_blocked > 0)
        await asyncio.sleep(0.5)  # what was already read and decoded
        before, _ = tracemalloc.get_traced_memory()
        await asyncio.sleep(case.hold_s)
        after, _ = tracemalloc.get_traced_memory()
        running.assert_running("while blocked")
        assert emitter.calls_while_blocked == 1, (
            f"{emitter.calls_while_blocked} records handed over while the first one was still waiting: "
            "the source must wait for the emitter before reading on")
        assert after - before < case.memory_bound, (
            f"memory grew by {(after - before) / MiB:.1f} MiB in {case.hold_s}s while blocked (bound "
            f"{case.memory_bound / MiB:.1f} MiB): the source buffers what it cannot hand over")
        emitter.unblock()
        await running.records_beyond(len(emitter.records), "records once the emitter accepts again")
    finally:
        if not tracing:
            tracemalloc.stop()
        emitter.unblock()
        await running.stop()


CHECKS = (check_cancels_cleanly, check_reconnects, check_bad_frames_are_dead_letters, check_backpressure_blocks)


async def check_source_contract(case: SourceCase) -> None:
    """Every check in turn (each with a fresh source); raises AssertionError naming the source
    and the check that failed."""
    if not case.sends_bad_frames:
        raise AssertionError(f"source {case.spec.name!r}: the dead-letter check needs a server that sends bad frames")
    for check in CHECKS:
        try:
            await check(case)
        except AssertionError as exc:
            raise AssertionError(f"source {case.spec.name!r} (plugin {case.spec.plugin or '?'}) fails {check.__name__}: {exc}") from exc


def _run(check: Callable[[SourceCase], Awaitable[None]], case: SourceCase) -> None:
    asyncio.run(check(case))


class SourceContract:
    """pytest mix-in: subclass it and define a ``source_case`` fixture returning a
    :class:`SourceCase` whose server is running (one per test: the checks drop its connections)."""

    def test_cancels_cleanly(self, source_case: SourceCase) -> None:
        _run(check_cancels_cleanly, source_case)

    def test_reconnects_by_itself(self, source_case: SourceCase) -> None:
        _run(check_reconnects, source_case)

    def test_bad_frames_are_dead_letters(self, source_case: SourceCase) -> None:
        _run(check_bad_frames_are_dead_letters, source_case)

    def test_backpressure_blocks(self, source_case: SourceCase) -> None:
        _run(check_backpressure_blocks, source_case)

