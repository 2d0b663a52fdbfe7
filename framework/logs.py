"""structlog set-up for ``tickwire run`` and friends.

``configure(fmt, level)``: ``console`` renders coloured key=value lines for a person at a
terminal; ``json`` renders one JSON object per line (timestamp, level, event, plugin, stream…)
for log shippers; ``auto`` picks ``console`` when stderr is a terminal. Logs go to stderr so
stdout stays free for data (e.g. the ``jsonl`` sink with ``path: "-"``). ``fields`` are put on
every line, the libraries' too (``tickwire run`` puts its ``instance`` there, so the lines of
two redundant instances can be told apart in Loki).

Components get a logger bound with their names — ``get_logger(plugin="sqlite-sink",
component="sink", sink="sqlite")`` — so every line says who is speaking.

Third-party libraries (aiokafka, aiohttp, asyncio, psycopg, websockets…) log through the
standard ``logging`` module; ``configure`` routes those records through the same renderer, so
with ``json`` stderr holds nothing but JSON lines. Such a line has ``logger`` (the library's
logger name); an exception becomes a one-line ``error`` (type: message) — the traceback only at
``--log-level debug``. Libraries log from WARNING up (everything at debug). A library repeating
itself (aiokafka retries a dead broker ten times a second) is deduplicated: at most one line per
logger and message text per ``REPEAT_WINDOW_S``; the next line that passes carries
``suppressed`` (how many were dropped), and :func:`report_suppressed` logs what is left at exit.
:func:`log_loop_exceptions` makes asyncio's loop exception handler ("Task exception was never
retrieved"…) log one structured line too.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

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


def configure(fmt: str = "auto", level: str = "info", stream=None, fields: dict | None = None) -> str:
    """Configure structlog globally, and route the standard ``logging`` records of third-party
    libraries through it; return the effective format (``console`` or ``json``). ``fields`` go
    on every line."""
    stream = stream or _Stderr()
    fmt = resolve_format(fmt, stream)
    every_line = _add_fields(dict(fields or {}))
    common = [
        every_line,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        processors = common + [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
        processors = common + [renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(stream, renderer, level, every_line)
    return fmt


def _add_fields(fields: dict):
    def processor(_logger, _method, event_dict: dict) -> dict:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return processor


def get_logger(**bound):
    return structlog.get_logger("tickwire").bind(**bound)


# -- third-party libraries (standard logging) -----------------------------------------------

REPEAT_WINDOW_S = 30.0  # one line per logger and message text per window


class _Deduplicate(logging.Filter):
    """Lets a (logger, level, message text) through at most once per ``window`` seconds and
    counts the rest; the next record let through carries that count as ``suppressed``."""

    MAX_KEYS = 10_000  # distinct texts remembered (a library putting ids in its messages)

    def __init__(self, window: float):
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, int, str], list] = {}  # key → [last let through, suppressed]
        self._lock = threading.Lock()  # libraries may log from their own threads

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is not None and now - state[0] < self.window:
                state[1] += 1
                return False
            if state is not None and state[1]:
                record.suppressed = state[1]
            if len(self._seen) >= self.MAX_KEYS:
                self._seen = {k: v for k, v in self._seen.items() if v[1]}  # keep the counts owed
            self._seen[key] = [now, 0]
        return True

    def take_suppressed(self) -> list[tuple[tuple[str, int, str], int]]:
        with self._lock:
            owed = [(key, state[1]) for key, state in self._seen.items() if state[1]]
            for state in self._seen.values():
                state[1] = 0
        return owed


_ROUTED_MARK = "_tickwire_routed"
_dedupe: _Deduplicate | None = None


def _foreign_fields(debug: bool):
    def processor(_logger, _method, event_dict: dict) -> dict:
        record = event_dict.get("_record")
        if record is not None:
            event_dict["logger"] = record.name
            suppressed = getattr(record, "suppressed", 0)
            if suppressed:
                event_dict["suppressed"] = suppressed
        exc_info = event_dict.get("exc_info")
        if exc_info and not debug:  # one line, not a traceback: the library's own stack helps no operator
            event_dict.pop("exc_info")
            error = exc_info[1] if isinstance(exc_info, tuple) else None
            if error is not None:
                event_dict["error"] = f"{type(error).__name__}: {error}"
        return event_dict

    return processor


def _route_stdlib_logging(stream, renderer, level: str, every_line) -> None:
    global _dedupe
    debug = level == "debug"
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            every_line,
            structlog.contextvars.merge_contextvars,  # e.g. the shard of `tickwire run --shard`, on library lines too
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _foreign_fields(debug),
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _ROUTED_MARK, True)
    _dedupe = _Deduplicate(REPEAT_WINDOW_S)
    handler.addFilter(_dedupe)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _ROUTED_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    threshold = logging.DEBUG if debug else max(logging.WARNING, getattr(logging, level.upper()))
    root.setLevel(threshold)
    handler.setLevel(threshold)


def report_suppressed() -> None:
    """Log, once per message text, how many repeats of a library's line were not shown (call
    at exit: the deduplication only reports a count when the next line passes)."""
    if _dedupe is None:
        return
    log = get_logger(component="logs")
    for (name, _level, text), count in _dedupe.take_suppressed():
        log.info(f"{count} more repeats of a {name} log line were not shown: {text[:300]}",
                 logger=name, suppressed=count)


def log_loop_exceptions(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio's exception handler ("Task exception was never retrieved", a callback that
    raised…) as one structured error line (error type and message, no traceback)."""
    log = get_logger(component="asyncio")

    def handler(_loop, context: dict) -> None:
        fields = {}
        error = context.get("exception")
        if error is not None:
            fields["error"] = f"{type(error).__name__}: {error}"
        where = context.get("task") or context.get("future") or context.get("handle")
        if where is not None:
            name = getattr(where, "get_name", None)
            fields["where"] = name() if callable(name) else repr(where)[:200]
        log.error(context.get("message") or "unhandled exception in the event loop", **fields)

    loop.set_exception_handler(handler)
