"""The Spark job's own Prometheus metrics, registered on the job's tickwire registry
(:class:`tickwire.framework.metrics.Metrics`, served on ``--metrics-port``):

* ``tickwire_spark_event_to_commit_seconds{stream, query}`` — histogram, buckets 1 ms … 10 s:
  PostgreSQL commit time − the row's event time (Binance ``E`` for an event; the newest trade
  time for a candle), observed by the writer for every row of a committed batch;
* ``tickwire_spark_duplicates_dropped_total{stream, query}`` — rows a query dropped as copies of a
  key it had already seen (active-active ingest, producer retries), from the de-duplication
  operator's ``numDroppedDuplicateRows``;
* ``tickwire_spark_late_rows_dropped_total{stream, query}`` — rows a stateful operator dropped as
  older than its watermark (``numRowsDroppedByWatermark``): trades too late for a candle (the trade
  itself is stored by the event query, whose processing-time watermark drops nothing).

``tickwire_e2e_latency_seconds{query}`` (wide buckets, up to 5 minutes: a backlog) is observed
alongside the first, for the existing dashboards.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from tickwire.framework.metrics import COMMIT_BUCKETS, Metrics


class SparkMetrics:
    """The shared metrics plus the Spark job's own, on one registry."""

    def __init__(self, metrics: Metrics):
        self.shared = metrics
        r = metrics.registry
        self.event_to_commit_seconds = Histogram(
            "tickwire_spark_event_to_commit_seconds",
            "Spark job: PostgreSQL commit time minus the row's event time.",
            ["stream", "query"], buckets=COMMIT_BUCKETS, registry=r,
        )
        self.duplicates_dropped = Counter(
            "tickwire_spark_duplicates_dropped_total",
            "Spark job: rows dropped as copies of a key already seen (de-duplication by primary key).",
            ["stream", "query"], registry=r,
        )
        self.late_rows_dropped = Counter(
            "tickwire_spark_late_rows_dropped_total",
            "Spark job: rows a stateful operator dropped as older than its watermark.",
            ["stream", "query"], registry=r,
        )

    def observe_commit(self, stream: str, query: str, event_times: list[float], now: float | None = None) -> None:
        """The latency of every row of a batch just committed (event times in epoch seconds)."""
        now = time.time() if now is None else now
        spark = self.event_to_commit_seconds.labels(stream=stream, query=query).observe
        wide = self.shared.e2e_latency_seconds.labels(query=query).observe
        for event_time in event_times:
            if event_time is None:
                continue
            latency = max(0.0, now - event_time)
            spark(latency)
            wide(latency)
