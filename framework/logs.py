"""structlog set-up for ``tickwire run`` and friends.

``configure(fmt, level)``: ``console`` renders coloured key=value lines for a person at a
terminal; ``json`` renders one JSON object per line (timestamp, level, event, plugin, stream…)
for log shippers; ``auto`` picks ``console`` when stderr is a terminal. Logs go to stderr so
stdout stays free for data (e.g. the ``jsonl`` sink with ``path: "-"``).

Components get a logger bound with their names — ``get_logger(plugin="sqlite-sink",
component="sink", sink="sqlite")`` — so every line says who is speaking.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

FORMATS = ("auto", "console", "json")
LEVELS = ("debug", "info", "warning", "error")


class _Stderr:
    """Writes to whatever ``sys.stderr`` is *now*, so rich's live display (which swaps it for a
    proxy) can print log lines above the table instead of being torn by them."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _orjson_dumps(obj, default=None, **_kw) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def resolve_format(fmt: str, stream=None) -> str:
    stream = stream or sys.stderr
    if fmt == "auto":
        return "console" if getattr(stream, "isatty", lambda: False)() else "json"
    return fmt


def configure(fmt: str = "auto", level: str = "info", stream=None) -> str:
    """Configure structlog globally; return the effective format (``console`` or ``json``)."""
    stream = stream or _Stderr()
    fmt = resolve_format(fmt, stream)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=_orjson_dumps)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return fmt


def get_logger(**bound):
    return structlog.get_logger("tickwire").bind(**bound)
