"""Latency at every hop of ``tickwire run``, always on, cheap enough for the hot path.

Three histograms (seconds, :data:`LATENCY_BUCKETS`: 1 ms … 10 s, then +Inf):

* ``tickwire_event_lag_seconds{stream}`` — Binance event time ``E`` → received. Observed by the
  engine's routing for one record in ``lag_sample_every`` (framework/engine/routing.py).
* ``tickwire_received_to_commit_seconds{stream,sink}`` — received (the record's
  ``ingested_at``, stamped by ``normalize`` when the record arrived) → the sink's write
  returned (committed / acknowledged).
* ``tickwire_event_to_commit_seconds{stream,sink}`` — event time → committed: what a
  consumer of the store waits, the number the status table and the p99 alert show.

Event times are Binance's clock, received and commit times ours; both event-time histograms
are corrected by the measured clock offset (:class:`ClockOffsets`, exported as
``tickwire_clock_offset_seconds``), so a machine whose clock is off by seconds still shows
honest latencies.

Why not ``prometheus_client.Histogram``: its ``observe`` takes a lock and costs 1–2 µs, and
the Kafka path's budget is ~7.5 µs per message in total. A :class:`LatencyHistogram` child is
a plain list of bucket counts updated with ``bisect`` from the event loop (no lock: one thread
writes, a scrape copies), and exported by a collector when ``/metrics`` is read.

Why sampled, and how (:meth:`CommitLatency.committed`, once per committed write): a record
carries no arrival stamp the engine could read for free, but a normalized one carries its
event time and ``ingested_at`` as ISO strings, parsed in ~0.3 µs. Per write, at most
:data:`SAMPLES_PER_WRITE` records are read — evenly spaced from the oldest — and each is
counted with the weight of the records it stands for, so a histogram's ``_count`` is the
number of records committed and its quantiles weigh records, not writes. Measured on this
machine kind (tests/test_latency.py prints it): ~7 µs per write of 500 records, i.e. 0.014 µs
per record at full speed; a one-record write (low rates) is read exactly, for ~2.4 µs. Records that carry
no ``ingested_at`` (``transforms: []``) get the event → commit histogram only.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import HistogramMetricFamily

from tickwire.framework.timestamps import ms_of_iso

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SAMPLES_PER_WRITE = 4  # records read per committed write (see the module docstring)
RECEIVED_KEY = "ingested_at"  # the column normalize stamps with the arrival time (framework/schemas.py)
# ingested_at is floored to the millisecond: the record arrived on average half a ms later
_HALF_MS = 0.0005


class LatencyChild:
    """One label set of a :class:`LatencyHistogram`: bucket counts (not cumulative; the last
    one is +Inf) and the sum, updated in place."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float, weight: int = 1) -> None:
        """Count ``weight`` records that took ``seconds`` (``le`` is inclusive, as in Prometheus)."""
        self.counts[bisect_left(self.bounds, seconds)] += weight
        self.sum += seconds * weight


class LatencyHistogram:
    """A histogram family with cheap children (see the module docstring); registered in
    ``registry`` as a collector, so it appears on ``/metrics`` like any other."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str], registry: CollectorRegistry,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(buckets)
        self.children: dict[tuple[str, ...], LatencyChild] = {}
        registry.register(self)

    def labels(self, **labels: str) -> LatencyChild:
        key = tuple(str(labels[name]) for name in self.labelnames)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = LatencyChild(self.bounds)
        return child

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        for key, child in list(self.children.items()):
            counts, total = list(child.counts), child.sum  # a copy: the event loop keeps counting
            cumulative, running = [], 0
            for le, n in zip(les, counts):
                running += n
                cumulative.append((le, running))
            family.add_metric(list(key), cumulative, total)
        yield family


def _le(bound: float) -> str:
    return repr(float(bound))


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of non-cumulative bucket ``counts``, interpolated linearly inside
    the bucket as PromQL's ``histogram_quantile`` does; None without observations. A rank in
    +Inf answers the highest finite bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running, lower = 0, 0.0
    for i, n in enumerate(counts):
        if i == len(bounds):
            return bounds[-1]
        if n and running + n >= rank:
            return lower + (bounds[i] - lower) * ((rank - running) / n)
        running += n
        lower = bounds[i]
    return bounds[-1]


class EventLag:
    """What the routing observes event → received lags into (the Route's ``lag_hist``): the
    stream's child of ``tickwire_event_lag_seconds``, corrected by the source's clock offset."""

    __slots__ = ("child", "stream", "offsets")

    def __init__(self, child: LatencyChild, stream: str, offsets: ClockOffsets):
        self.child = child
        self.stream = stream
        self.offsets = offsets

    def observe(self, lag: float) -> None:
        """``lag`` = our receive time − the event time, both as the clocks say."""
        corrected = lag - self.offsets.by_stream.get(self.stream, 0.0)
        self.child.observe(corrected if corrected > 0.0 else 0.0)


class EventLagHistogram(LatencyHistogram):
    """``tickwire_event_lag_seconds``: ``labels(stream=…)`` gives the stream's :class:`EventLag`
    (what framework/engine/plan.py hands each route)."""

    def __init__(self, registry: CollectorRegistry, offsets: ClockOffsets):
        super().__init__(
            "tickwire_event_lag_seconds",
            "Binance event time E to received by tickwire, corrected by the clock offset (one record in lag_sample_every).",
            ["stream"], registry)
        self.offsets = offsets
        self._lags: dict[str, EventLag] = {}

    def labels(self, stream: str) -> EventLag:  # type: ignore[override]
        lag = self._lags.get(stream)
        if lag is None:
            lag = self._lags[stream] = EventLag(super().labels(stream=stream), stream, self.offsets)
        return lag


class ClockOffsets:
    """Our clock minus each source's server clock, in seconds (positive: ours is ahead), as
    measured by the sources (plugins/binance/clock.py); exported as
    ``tickwire_clock_offset_seconds{source}`` and subtracted from event-time latencies."""

    def __init__(self, gauge: Gauge):
        self.gauge = gauge
        self.by_stream: dict[str, float] = {}

    def set(self, source: str, streams: Iterable[str], seconds: float) -> None:
        for stream in streams:
            self.by_stream[stream] = seconds
        self.gauge.labels(source=source).set(seconds)


class CommitLatency:
    """Received → committed and event → committed, per stream and sink; the sink workers call
    :meth:`committed` once per batch a sink's write returned for (framework/engine/workers.py)."""

    def __init__(self, received_to_commit: LatencyHistogram, event_to_commit: LatencyHistogram, offsets: ClockOffsets):
        self.received_to_commit = received_to_commit
        self.event_to_commit = event_to_commit
        self.offsets = offsets
        self._lanes: dict[tuple[str, str], tuple[LatencyChild, LatencyChild, tuple[str, ...]]] = {}

    def _lane(self, stream: Any, sink: str) -> tuple[LatencyChild, LatencyChild, tuple[str, ...]]:
        key = (stream.name, sink)
        lane = self._lanes.get(key)
        if lane is None:
            # a normalized record holds the event time under its column, a raw payload under
            # the Binance field (E)
            # A derived row (a candle) has a window, not an event time: its lag would be the window's age.
            derived = getattr(stream, "upsert", False)
            event_keys = () if derived else tuple(k for k in (stream.event_time, _event_field(stream), "E") if k)
            lane = self._lanes[key] = (self.received_to_commit.labels(stream=stream.name, sink=sink),
                                       self.event_to_commit.labels(stream=stream.name, sink=sink), event_keys)
        return lane

    def committed(self, stream: Any, sink: str, records: list) -> None:
        """``records`` of ``stream`` were committed by ``sink`` just now."""
        n = len(records)
        if not n:
            return
        now_ms = time.time_ns() / 1e6
        received_child, event_child, event_keys = self._lane(stream, sink)
        offset_ms = self.offsets.by_stream.get(stream.name, 0.0) * 1000.0
        step = -(-n // SAMPLES_PER_WRITE)
        for i in range(0, n, step):
            weight = step if i + step <= n else n - i
            record = records[i]
            try:
                received = record.get(RECEIVED_KEY)
                if received is not None:
                    received_child.observe((now_ms - _ms(received)) / 1000.0 + _HALF_MS, weight)
                for key in event_keys:
                    event = record.get(key)
                    if event is not None:
                        lag = (now_ms - offset_ms - _ms(event)) / 1000.0
                        event_child.observe(lag if lag > 0.0 else 0.0, weight)
                        break
            except (AttributeError, TypeError, ValueError):
                return  # not a dict, or a time in an unknown shape: this write goes unmeasured


def _ms(value: Any) -> float:
    """Epoch milliseconds from an int (Binance) or an ISO-8601 string (normalize)."""
    if type(value) is str:
        return ms_of_iso(value)
    return float(value)


def _event_field(stream: Any) -> str | None:
    """The payload field behind the stream's event-time column (``E`` for Binance)."""
    for col in stream.columns:
        if col.name == stream.event_time and col.field:
            return col.field
    return None


class LatencyMetrics:
    """The histograms, the clock offsets and the commit tracker of one :class:`Metrics`."""

    def __init__(self, registry: CollectorRegistry):
        self.clock_offset = Gauge(
            "tickwire_clock_offset_seconds",
            "This machine's clock minus the source's server clock (Binance GET /api/v3/time, NTP-style midpoint).",
            ["source"], registry=registry)
        self.offsets = ClockOffsets(self.clock_offset)
        self.event_lag = EventLagHistogram(registry, self.offsets)
        self.received_to_commit = LatencyHistogram(
            "tickwire_received_to_commit_seconds",
            "Received by tickwire to the sink's write returned (committed or acknowledged), sampled per write.",
            ["stream", "sink"], registry)
        self.event_to_commit = LatencyHistogram(
            "tickwire_event_to_commit_seconds",
            "Binance event time E to the sink's write returned, corrected by the clock offset, sampled per write.",
            ["stream", "sink"], registry)
        self.commits = CommitLatency(self.received_to_commit, self.event_to_commit, self.offsets)


class RecentQuantiles:
    """p50/p99 per stream of one histogram over about the last ``window`` seconds (all of the
    stream's sinks together), for the live status: differences of bucket counts between now
    and a copy taken ``window`` seconds ago. Read from the event loop, a few times a second."""

    def __init__(self, histogram: LatencyHistogram, window: float = 30.0, clock=time.monotonic):
        self.histogram = histogram
        self.window = window
        self.clock = clock
        self._copies: list[tuple[float, dict[str, list[int]]]] = []

    def _by_stream(self) -> dict[str, list[int]]:
        totals: dict[str, list[int]] = {}
        for key, child in list(self.histogram.children.items()):
            total = totals.setdefault(key[0], [0] * len(child.counts))
            for i, n in enumerate(child.counts):
                total[i] += n
        return totals

    def update(self) -> dict[str, tuple[float | None, float | None]]:
        """stream → (p50, p99) in seconds over the window; (None, None) when nothing was
        observed in it."""
        now = self.clock()
        current = self._by_stream()
        self._copies.append((now, current))
        while len(self._copies) > 1 and self._copies[1][0] <= now - self.window:
            self._copies.pop(0)
        base = self._copies[0][1] if len(self._copies) > 1 else {}
        out = {}
        for stream, counts in current.items():
            old = base.get(stream)
            recent = counts if old is None else [a - b for a, b in zip(counts, old)]
            bounds = self.histogram.bounds
            out[stream] = (quantile(bounds, recent, 0.5), quantile(bounds, recent, 0.99))
        return out
