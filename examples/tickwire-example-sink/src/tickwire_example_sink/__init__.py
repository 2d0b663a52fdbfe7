"""tickwire-example-sink: a ``csv`` sink and a ``only_symbols`` transform.

Everything a plugin needs from tickwire comes from the top-level ``tickwire`` module; the hooks
register components, and tickwire finds this module through the ``tickwire`` entry point in
pyproject.toml.
"""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path

from tickwire import DeadLetter, InvalidRecord, RunContext, SinkSpec, StreamSpec, TransformSpec, hookimpl

DEAD_LETTER_COLUMNS = ["stream", "reason", "plugin", "raw", "received_at"]


class CsvSink:
    """One CSV file per stream (``<directory>/<table>.csv``, a header line first) and
    ``dead_letters.csv``. Appends only: a replayed batch is written again (``idempotent = False``).
    Decimals stay the exact strings the record holds; booleans are ``true``/``false``."""

    supports_dead_letters = True
    idempotent = False

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        directory = Path(options.get("directory", "csv"))
        self.directory = directory if directory.is_absolute() else Path(ctx.config_dir) / directory

    async def open(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        columns = [c.name for c in stream.columns]
        rows = [[_text(r.get(c)) for c in columns] for r in records]
        # returning is the acknowledgement: the rows are on disk before write() returns
        await asyncio.to_thread(self._append, self.directory / f"{stream.table}.csv", columns, rows)

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        rows = [[_text(getattr(d, c)) for c in DEAD_LETTER_COLUMNS] for d in letters]
        await asyncio.to_thread(self._append, self.directory / "dead_letters.csv", DEAD_LETTER_COLUMNS, rows)

    async def close(self) -> None:
        pass  # every write closed its file

    @staticmethod
    def _append(path: Path, header: list[str], rows: list[list[str]]) -> None:
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            if new:
                out.writerow(header)
            out.writerows(rows)
            f.flush()
            os.fsync(f.fileno())


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def make_symbol_filter(stream: StreamSpec, options: dict):
    """``only_symbols``: keep the payloads of the listed symbols, drop (None) the others."""
    keep = frozenset(options.get("symbols", []))

    def only_symbols(payload: dict) -> dict | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("s"), str):
            raise InvalidRecord("payload has no symbol (field 's')")
        return payload if payload["s"] in keep else None

    return only_symbols


@hookimpl
def tickwire_register_sinks(register):
    register(SinkSpec(
        name="csv",
        factory=CsvSink,
        description="CSV files, one per stream, plus dead_letters.csv (append-only)",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"directory": {"type": "string", "default": "csv",
                                         "description": "Folder of the CSV files, relative to the config file's."}},
        },
        supports_dead_letters=True,
    ))


@hookimpl
def tickwire_register_transforms(register):
    register(TransformSpec(
        name="only_symbols",
        factory=make_symbol_filter,
        description="Keep only the payloads of the listed symbols",
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["symbols"],
            "properties": {"symbols": {"type": "array", "items": {"type": "string"},
                                       "description": "Symbols to keep, e.g. [BTCUSDT]."}},
        },
    ))
