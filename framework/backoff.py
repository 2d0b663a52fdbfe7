"""Exponential backoff with jitter: one helper for every retry loop (sink writes, reconnects,
REST requests), so delays grow, cap and spread out the same way everywhere."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n`` capped at ``maximum``, and the
    actual delay drawn uniformly from ``[(1 - jitter) * d, d]`` so reconnecting clients spread out.
    """

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ):
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = min(max(jitter, 0.0), 1.0)
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (self.factor**self.attempt))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0
