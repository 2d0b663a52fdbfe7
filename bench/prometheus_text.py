"""Reading the benchmarks' figures out of a Prometheus text exposition (a /metrics page)."""

from __future__ import annotations

import re


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """A quantile estimated from histogram ``name``'s buckets (all label sets summed), by linear
    interpolation inside the bucket, as PromQL's histogram_quantile does."""
    buckets: dict[float, float] = {}
    for m in re.finditer(rf'^{name}_bucket{{.*?le="([^"]+)".*?}} ([0-9.e+]+)$', text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    items = sorted(buckets.items())
    if not items or items[-1][1] == 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_le, prev_count = le, count
    return prev_le
