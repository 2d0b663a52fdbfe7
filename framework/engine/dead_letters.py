"""Dead letters: records and frames that could not become stored records, with the reason.

They are batched like records and handed to the profile's ``dead_letter`` sink; a profile
without one logs the first five and counts them all (``tickwire_dead_letters_total``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from tickwire.framework.components import DeadLetter
from tickwire.framework.engine.runner import SinkRunner
from tickwire.framework.timestamps import iso_ns

UNROUTED_LOGGED = 5  # dead letters of a profile without a destination that are logged


def raw_text(raw: Any) -> str:
    """What a dead letter keeps of a payload: text as is, bytes decoded, anything else JSON."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", "replace")
    try:
        return orjson.dumps(raw, default=str).decode()
    except TypeError:
        return repr(raw)


class DeadLetters:
    """Collects dead letters, counts them per stream, hands full or old batches to the
    destination sink's queue (``runner``; None: no destination)."""

    def __init__(self, runner: SinkRunner | None, batch_size: int, log: Any):
        self.runner = runner
        self.batch_size = batch_size
        self.log = log
        self.buffer: list[DeadLetter] = []
        self.since = 0.0
        self.by_stream: dict[str, int] = {}  # "unknown" for letters without a stream
        self.unrouted = 0

    async def add(self, stream: str | None, reason: str, plugin: str, raw: Any, received_ns: int | None) -> None:
        """One dead letter; waits only when a full batch is handed over (backpressure)."""
        if self.keep(stream, reason, plugin, raw, received_ns) and len(self.buffer) >= self.batch_size:
            await self.flush()

    def keep(self, stream: str | None, reason: str, plugin: str, raw: Any, received_ns: int | None) -> bool:
        """Count and buffer one dead letter without waiting (the ticker hands it over); False
        when the profile has no destination (then it is only counted, the first few logged)."""
        key = stream or "unknown"
        self.by_stream[key] = self.by_stream.get(key, 0) + 1
        letter = DeadLetter(stream=stream, reason=reason, plugin=plugin, raw=raw_text(raw), received_at=iso_ns(received_ns))
        if self.runner is None:
            # logging every one would be per-record logging
            self.unrouted += 1
            if self.unrouted <= UNROUTED_LOGGED:
                more = f" (only the first {UNROUTED_LOGGED} are logged)" if self.unrouted == UNROUTED_LOGGED else ""
                self.log.warning(f"dead letter, and the profile has no dead_letter destination{more}: {reason}",
                                 stream=stream, plugin=plugin, raw=letter.raw[:200])
            return False
        if not self.buffer:
            self.since = time.monotonic()
        self.buffer.append(letter)
        return True

    async def flush(self) -> None:
        """Hand the buffered letters to the destination's queue; on cancellation they stay."""
        letters = self.buffer
        if not letters or self.runner is None:
            return
        self.buffer = []
        runner = self.runner
        runner.pending += len(letters)
        try:
            await runner.queue.put((None, letters))
        except asyncio.CancelledError:
            runner.pending -= len(letters)
            self.buffer[:0] = letters
            raise
