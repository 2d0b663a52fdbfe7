"""Pacing for what tickwire sends to Binance: messages per second and connection attempts.

Binance disconnects a connection that sends more than 5 messages per second (pongs and
SUBSCRIBE requests included) and bans an IP that opens more than 300 connections in 5 minutes.
The classes here take a ``clock`` so the tests can drive them without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up.

    ``capacity=1`` spaces sends evenly (one every ``1/rate`` seconds), so no one-second window
    ever holds more than ``ceil(rate)`` of them. Every client→server message on a connection
    takes a token from the same bucket.
    """

    def __init__(self, rate: float, capacity: float = 1.0, clock: Clock = time.monotonic):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def charge(self, n: float = 1.0) -> None:
        """Account for a message that was sent without asking (a pong must go out at once):
        the tokens may go negative, which delays the next :meth:`take`."""
        self._refill()
        self._tokens = max(self._tokens - n, -4 * self.capacity - n)

    def try_take(self, n: float = 1.0) -> float:
        """Take ``n`` tokens if there are enough and return 0, else return the seconds to wait."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate

    async def take(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are available and take them (first come, first served)."""
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.capacity}")
        async with self._lock:
            while True:
                wait = self.try_take(n)
                if wait == 0.0:
                    return
                await asyncio.sleep(wait)


class SlidingWindowLimiter:
    """At most ``limit`` events in any ``window`` seconds (e.g. 300 connection attempts / 5 min)."""

    def __init__(self, limit: int, window: float, clock: Clock = time.monotonic):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        self._events: deque[float] = deque()
        self._lock = asyncio.Lock()

    def try_acquire(self) -> float:
        """Record an event and return 0 if allowed now, else the seconds until it would be."""
        now = self._clock()
        events = self._events
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) < self.limit:
            events.append(now)
            return 0.0
        return events[0] + self.window - now

    async def acquire(self) -> float:
        """Wait for a free slot; return how long we waited."""
        waited = 0.0
        async with self._lock:
            while True:
                wait = self.try_acquire()
                if wait == 0.0:
                    return waited
                waited += wait
                await asyncio.sleep(wait)
