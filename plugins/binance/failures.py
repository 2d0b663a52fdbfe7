"""Why a connection attempt or a live connection to Binance failed, as one traceback-free line
for the source's warnings (with a hint when Binance cannot be reached at all)."""

from __future__ import annotations

import asyncio

from tickwire.plugins.binance.connection import ConnectionLost, HandshakeRefused
from tickwire.plugins.binance.frames import ServerShutdown

OFFLINE_HINT = (
    "No internet here, or Binance blocked? Run `tickwire simulate` and point "
    "TICKWIRE_BINANCE_URL (and TICKWIRE_BINANCE_REST_URL) at the address it prints."
)


def describe_failure(exc: BaseException) -> str:
    """A one-line, traceback-free reason for a connection problem."""
    if isinstance(exc, ServerShutdown):
        return "Binance announced a server shutdown (serverShutdown)"
    if isinstance(exc, ConnectionLost):
        return exc.describe()
    if isinstance(exc, HandshakeRefused):
        return str(exc)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def connect_failure(exc: BaseException, url: str, delay: float, retry_after: float | None) -> str:
    """The warning for a connection attempt that failed with ``exc``; the next one is in
    ``delay`` seconds (``retry_after``: the handshake's Retry-After, for 429/418)."""
    status = exc.status if isinstance(exc, HandshakeRefused) else None
    if status in (429, 418):
        what = "is rate limiting us" if status == 429 else "has temporarily banned this IP"
        return f"Binance {what} (HTTP {status}); reconnecting in {delay:.1f}s (Retry-After: {retry_after:g}s)"
    if status is not None:
        return f"Binance refused the connection (HTTP {status}) at {url}; reconnecting in {delay:.1f}s"
    return f"cannot reach Binance at {url} ({describe_failure(exc)}); retrying in {delay:.1f}s. {OFFLINE_HINT}"
