"""The offset of this machine's clock against Binance's, so event-time latency is honest.

Binance stamps every event with its own clock (``E``); we stamp arrival with ours. A local
clock that is 2 s behind would make every event look 2 s late — or, ahead, arrive before it
happened. :class:`ClockOffset` asks ``GET /api/v3/time`` (weight 1) at start and every
``CHECK_INTERVAL`` seconds, NTP-style: the server read its clock about halfway through the
round trip, so

    offset = (sent + answered) / 2 − serverTime          (our clock minus Binance's)

with an error of at most half the round trip (plus the server's millisecond rounding). Of
``PROBES`` requests the one with the shortest round trip wins. The result goes to
``tickwire_clock_offset_seconds{source}`` and is subtracted from the event-time latency
histograms (framework/latency.py). The requests share the gap filler's REST client state: its
weight budget, and its Retry-After block both ways (no check while REST is blocked; a 429 or
418 the check gets blocks the gap filler too). A failed or refused check only postpones the
next one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from tickwire.plugins.binance.rest import BinanceRest, retry_after_seconds

TIME_PATH = "/api/v3/time"
TIME_WEIGHT = 1
CHECK_INTERVAL = 300.0  # seconds between two measurements (clocks drift by ms per hour, not per minute)
RETRY_INTERVAL = 30.0  # after a failed measurement
PROBES = 3  # requests per measurement; the shortest round trip is kept


class ClockOffsetError(Exception):
    """``/api/v3/time`` did not answer a usable ``serverTime``."""


class ClockOffset:
    """Measures the offset of ``source``'s server clock for ``streams``; ``await run()`` until
    cancelled. ``metrics`` is the run's :class:`~tickwire.framework.metrics.Metrics`."""

    def __init__(self, source: str, streams: list[str], base_url: str, session: aiohttp.ClientSession,
                 metrics: Any, rest: BinanceRest, log: Any = None):
        self.source = source
        self.streams = streams
        self.url = base_url.rstrip("/") + TIME_PATH
        self.session = session
        self.metrics = metrics
        self.rest = rest  # the source's REST client: its weight budget and Retry-After block
        self.log = log
        self.offset: float | None = None  # seconds, our clock minus the server's
        self.round_trip: float | None = None  # seconds, of the probe the offset came from

    async def probe(self) -> tuple[float, float]:
        """One request: (offset, round trip) in seconds."""
        blocked = self.rest.blocked_for()
        if blocked > 0:
            raise ClockOffsetError(f"REST is blocked for {blocked:.0f}s more (Retry-After)")
        await self.rest.weight.take(TIME_WEIGHT)
        sent = time.time_ns()
        async with self.session.get(self.url) as resp:
            body = await resp.read()
            answered = time.time_ns()
            if resp.status in (429, 418):
                delay = retry_after_seconds(resp.headers.get("Retry-After"), RETRY_INTERVAL)
                self.rest.block(delay)
                raise ClockOffsetError(f"HTTP {resp.status}: rate limited, Retry-After {delay:g}s")
            if resp.status != 200:
                raise ClockOffsetError(f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}")
        try:
            server_ms = orjson.loads(body)["serverTime"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ClockOffsetError(f"no serverTime in the answer ({exc}): {body[:200]!r}") from None
        if type(server_ms) is not int:
            raise ClockOffsetError(f"serverTime is not an integer: {server_ms!r}")
        # serverTime is truncated to the ms: the server's reading was on average 0.5 ms later
        offset = ((sent + answered) / 2 - (server_ms + 0.5) * 1e6) / 1e9
        return offset, (answered - sent) / 1e9

    async def measure(self) -> float:
        """The best of ``PROBES`` probes; sets the gauge and the latency correction."""
        best = None
        for _ in range(PROBES):
            result = await self.probe()
            if best is None or result[1] < best[1]:
                best = result
        self.offset, self.round_trip = best
        self.metrics.latency.offsets.set(self.source, self.streams, self.offset)
        return self.offset

    async def run(self) -> None:
        """Measure now and every ``CHECK_INTERVAL`` seconds; a failure is logged and retried
        sooner, never fatal (event-time latency keeps the last offset, or none)."""
        logged = None
        while True:
            try:
                offset = await self.measure()
                if self.log is not None and (logged is None or abs(offset - logged) > 0.05):
                    logged = offset
                    self.log.info(f"clock offset against {self.url}: {offset * 1000:+.1f} ms "
                                  f"(round trip {self.round_trip * 1000:.1f} ms); event-time latencies are corrected by it",
                                  source=self.source, clock_offset_ms=round(offset * 1000, 1))
                delay = CHECK_INTERVAL
            except asyncio.CancelledError:
                raise
            except (ClockOffsetError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                if self.log is not None:
                    self.log.warning(f"cannot measure the clock offset against {self.url}: {exc or type(exc).__name__}; "
                                     f"retrying in {RETRY_INTERVAL:g}s", source=self.source)
                delay = max(RETRY_INTERVAL, min(self.rest.blocked_for(), CHECK_INTERVAL))
            await asyncio.sleep(delay)
