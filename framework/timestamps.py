"""The one ISO-8601 formatter: UTC, millisecond precision, ``2023-01-01T00:00:00.136Z``.

Used for record columns (normalize), dead letters, trade gaps and log-facing times, so every
timestamp tickwire writes has the same shape. The per-second prefix is cached: at tens of
thousands of records per second most share a second."""

from __future__ import annotations

import time
from datetime import datetime, timezone

_SUFFIX = tuple(f"{i:03d}Z" for i in range(1000))
_prefixes: dict[int, str] = {}


def _prefix(second: int) -> str:
    if len(_prefixes) > 8192:
        _prefixes.clear()
    if second < 0:
        raise ValueError(f"timestamp before 1970: {second}s")
    p = _prefixes[second] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    return p


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch → ``2023-01-01T00:00:00.136Z``."""
    second = ms // 1000
    p = _prefixes.get(second)
    if p is None:
        p = _prefix(second)
    return p + _SUFFIX[ms - second * 1000]


_strings: dict[int, str] = {}  # milliseconds → iso_ms(ms), for the generated functions


def _iso_ms_remembered(ms: int) -> str:
    """iso_ms(ms), remembered: at tens of thousands of trades per second many share a
    millisecond (and a trade's E and T are often equal), so most lookups hit."""
    if len(_strings) > 65536:
        _strings.clear()
    text = _strings[ms] = iso_ms(ms)  # iso_ms raises on a bad value: nothing is remembered
    return text


def iso_ms_or_none(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


def now_iso() -> str:
    """The current UTC time as ``2023-01-01T00:00:00.136Z``."""
    return iso_ms(time.time_ns() // 1_000_000)


def iso_ns(ns: int | None = None) -> str:
    """Nanoseconds since the epoch (default: now) in the same format."""
    return iso_ms((time.time_ns() if ns is None else ns) // 1_000_000)


_seconds: dict[str, int] = {}  # "2023-01-01T00:00:00" → seconds since the epoch


def ms_of_iso(text: str) -> int:
    """The inverse of :func:`iso_ms`: ``2023-01-01T00:00:00.136Z`` → ms since the epoch (the
    per-second part is cached, like the formatter's)."""
    prefix = text[:19]
    second = _seconds.get(prefix)
    if second is None:
        if len(_seconds) > 8192:
            _seconds.clear()
        second = _seconds[prefix] = int(datetime.fromisoformat(prefix).replace(tzinfo=timezone.utc).timestamp())
    return second * 1000 + (int(text[20:23]) if len(text) > 22 and text[19] == "." else 0)
