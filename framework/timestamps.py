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


_seconds: dict[str, int] = {}  # "2023-01-01T00:00:00." → its epoch milliseconds, for ms_of_iso


def ms_of_iso(text: str) -> int:
    """The inverse of :func:`iso_ms`: ``2023-01-01T00:00:00.136Z`` → milliseconds since the
    epoch. The per-second prefix is cached, so most calls are a slice, a dict hit and an
    ``int``; another ISO-8601 shape goes through ``datetime.fromisoformat`` (naive = UTC)."""
    if len(text) == 24 and text[23] == "Z":
        prefix = text[:20]
        base = _seconds.get(prefix)
        if base is None:
            if len(_seconds) > 8192:
                _seconds.clear()
            base = _seconds[prefix] = int(datetime.fromisoformat(text[:19]).replace(tzinfo=timezone.utc).timestamp()) * 1000
        return base + int(text[20:23])
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return round(parsed.timestamp() * 1000)
