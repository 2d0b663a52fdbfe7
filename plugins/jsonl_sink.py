"""``jsonl`` sink: one JSON object per line, to a file or to stdout (``path: "-"``).

For debugging (``tickwire run`` with a jsonl profile shows normalized records as they flow)
and as the dead-letter destination of the ``local`` profile. Lines:

* records: ``{"stream": "trade", "record": {...normalized record...}}``
* dead letters: ``{"stream": "trade", "reason": "...", "plugin": "validate", "raw": "...",
  "received_at": "2023-01-01T00:00:00.136Z"}``

A write returns once the lines are flushed to the OS (``fsync: true`` also syncs the file to
disk). The file is append-only, so a replay appends again: this sink is not idempotent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson

from tickwire.framework.components import DeadLetter, RunContext, SinkSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.options import with_defaults
from tickwire.framework.threads import DedicatedThread
from tickwire.framework.schemas import StreamSpec

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {
            "type": "string",
            "default": "-",
            "description": 'File to append to, relative to the config file\'s folder; "-" is stdout. Parent folders are created.',
        },
        "fsync": {
            "type": "boolean",
            "default": False,
            "description": "fsync the file after every batch (slower; survives an OS crash).",
        },
    },
}


class JsonlSink:
    supports_dead_letters = True
    idempotent = False

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.ctx = ctx
        options = with_defaults(CONFIG_SCHEMA, options)  # complete already when the engine builds it
        raw = options["path"]
        if raw == "-":
            self.path = None
        else:
            path = Path(raw).expanduser()
            self.path = path if path.is_absolute() else Path(ctx.config_dir) / path
        self.fsync = bool(options["fsync"])
        self._file = None
        self._thread = DedicatedThread(f"jsonl-{name}")

    def describe(self) -> str:
        return "stdout (JSON lines)" if self.path is None else f"JSON lines {self.path}"

    async def open(self) -> None:
        self._thread.start()
        await self._thread.call(self._open_sync)

    def _open_sync(self) -> None:
        if self.path is None:
            self._file = sys.stdout.buffer
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")

    def _append(self, lines: list[bytes]) -> None:
        f = self._file
        f.write(b"".join(lines))
        f.flush()
        if self.fsync and self.path is not None:
            os.fsync(f.fileno())

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        name = stream.name
        dumps = orjson.dumps
        lines = [dumps({"stream": name, "record": r}, default=str) + b"\n" for r in records]
        await self._thread.call(self._append, lines)

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        lines = [
            orjson.dumps(
                {"stream": d.stream, "reason": d.reason, "plugin": d.plugin, "raw": d.raw, "received_at": d.received_at}
            )
            + b"\n"
            for d in letters
        ]
        await self._thread.call(self._append, lines)

    async def close(self) -> None:
        if not self._thread.running:
            return
        try:
            await self._thread.call(self._close_sync)
        finally:
            self._thread.stop()

    def _close_sync(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        f.flush()
        if self.path is not None:
            f.close()


@hookimpl
def tickwire_register_sinks(register):
    register(
        SinkSpec(
            name="jsonl",
            factory=JsonlSink,
            description='JSON lines to a file or stdout ("-"): debugging, and the local dead-letter file.',
            config_schema=CONFIG_SCHEMA,
            supports_dead_letters=True,
        )
    )
