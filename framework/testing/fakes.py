"""Stand-ins for the engine's side of a component: a source and a sink that record what they
see (engine tests), and an emitter that records what a source hands over (source tests)."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable

from tickwire.framework.components import DeadLetter, RunContext, SinkSpec, SourceSpec
from tickwire.framework.schemas import StreamSpec


class ListSource:
    """Emits ``options["payloads"]`` — a list of ``(stream, payload)`` — then returns.

    ``options["delay_s"]`` sleeps between records; ``options["forever"]`` keeps the source
    alive (until cancelled) after the list; ``options["log"]`` (a list) gets
    ``(monotonic, index)`` after each record was accepted, to observe backpressure."""

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.emitted = 0

    async def run(self, emit) -> None:
        delay = self.options.get("delay_s", 0)
        log = self.options.get("log")
        for i, (stream, payload) in enumerate(self.options.get("payloads", [])):
            await emit.record(stream, payload, time.time_ns())
            self.emitted += 1
            if log is not None:
                log.append((time.monotonic(), i))
            if delay:
                await asyncio.sleep(delay)
        for stream, reason, raw in self.options.get("dead_letters", []):
            await emit.dead_letter(stream, reason, raw)
        if self.options.get("forever"):
            await asyncio.Event().wait()


LIST_SOURCE = SourceSpec(name="list", factory=ListSource, description="test source: a list of payloads", plugin="testing")


class RecordingSink:
    """Keeps what it was given in ``self.batches`` / ``self.letters`` (also reachable as
    ``RecordingSink.instances[name]``). Options: ``delay_s`` per write, ``fail_first`` (that
    many writes raise), ``events`` (a list that gets ``("write", monotonic, n)`` per commit)."""

    supports_dead_letters = True
    instances: dict[str, RecordingSink] = {}

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.batches: list[tuple[str, list[dict]]] = []
        self.letters: list[DeadLetter] = []
        self.opened = self.closed = False
        self.attempts = 0
        self.failures_left = int(options.get("fail_first", 0))
        RecordingSink.instances[name] = self

    @property
    def records(self) -> list[dict]:
        return [r for _, batch in self.batches for r in batch]

    async def open(self) -> None:
        self.opened = True

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        self.attempts += 1
        if self.options.get("delay_s"):
            await asyncio.sleep(self.options["delay_s"])
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("database is locked")
        self.batches.append((stream.name, list(records)))
        if "events" in self.options:
            self.options["events"].append(("write", time.monotonic(), len(records)))

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)

    async def close(self) -> None:
        self.closed = True


RECORDING_SINK = SinkSpec(
    name="recording", factory=RecordingSink, description="test sink: keeps batches in memory", plugin="testing", supports_dead_letters=True
)


class RecordingEmitter:
    """An :class:`~tickwire.framework.components.Emitter` that accepts every payload and keeps it.

    ``records`` holds ``(stream, payload)``, ``dead_letters`` holds ``(stream, reason, raw)``.
    :meth:`block` makes it stop accepting, as the engine does when every sink is behind: the next
    ``record`` call waits, and ``record_nowait`` returns an awaitable that is not done, until
    :meth:`unblock`. ``calls_while_blocked`` counts the hand-overs attempted meanwhile (a source
    that respects backpressure makes one, then waits)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []
        self.dead_letters: list[tuple[str | None, str, str | bytes]] = []
        self.calls_while_blocked = 0
        self._open = asyncio.Event()
        self._open.set()
        self.changed = asyncio.Event()  # set on every record or dead letter (for waiting)

    def block(self) -> None:
        self._open.clear()

    def unblock(self) -> None:
        self._open.set()

    @property
    def blocked(self) -> bool:
        return not self._open.is_set()

    async def record(self, stream: str, payload: dict, received_ns: int) -> bool:
        pending = self.record_nowait(stream, payload, received_ns)
        if pending is not None:
            await pending
        return True

    def record_nowait(self, stream: str, payload: dict, received_ns: int) -> Awaitable[None] | None:
        if self.blocked:
            self.calls_while_blocked += 1
            return self._accept_when_open(stream, payload)
        self._accept(stream, payload)
        return None

    async def _accept_when_open(self, stream: str, payload: dict) -> None:
        await self._open.wait()
        self._accept(stream, payload)

    def _accept(self, stream: str, payload: dict) -> None:
        self.records.append((stream, payload))
        self.changed.set()

    async def dead_letter(self, stream: str | None, reason: str, raw: str | bytes) -> None:
        self.dead_letters.append((stream, reason, raw))
        self.changed.set()
