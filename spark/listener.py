"""StreamingQueryListener → the tickwire Prometheus metrics (``tickwire.framework.metrics.Metrics``).

Per query (label ``query`` = the stream or derived-stream name), on every progress event:

* ``tickwire_spark_input_rows_per_second`` / ``tickwire_spark_processed_rows_per_second``;
* ``tickwire_spark_batch_duration_seconds`` — the last micro-batch;
* ``tickwire_spark_kafka_offset_lag`` — Σ over partitions of latestOffset − endOffset (the
  records in Kafka the query has not read yet);
* ``tickwire_spark_duplicates_dropped_total`` / ``tickwire_spark_late_rows_dropped_total`` — the
  batch's de-duplication and watermark drops, from its stateful operators' progress.

The commit latency histograms are observed by the writer after each commit
(:mod:`tickwire.spark.job_metrics`).
"""

from __future__ import annotations

import json
import logging

from pyspark.sql.streaming import StreamingQueryListener

log = logging.getLogger("tickwire.spark")


def offsets(value) -> dict[str, dict[str, int]]:
    """A Kafka source offset (JSON text or dict) → {topic: {partition: offset}}."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def kafka_lag(end_offset, latest_offset) -> int | None:
    end, latest = offsets(end_offset), offsets(latest_offset)
    if not latest:
        return None
    lag = 0
    for topic, partitions in latest.items():
        for partition, newest in partitions.items():
            done = end.get(topic, {}).get(partition, 0)
            lag += max(0, int(newest) - int(done))
    return lag


def state_drops(state_operators) -> tuple[int, int]:
    """(duplicates dropped, rows dropped by the watermark) over a batch's stateful operators."""
    duplicates = late = 0
    for op in state_operators or ():
        duplicates += int((op.customMetrics or {}).get("numDroppedDuplicateRows", 0) or 0)
        late += int(op.numRowsDroppedByWatermark or 0)
    return duplicates, late


class MetricsListener(StreamingQueryListener):
    """``metrics``: a :class:`~tickwire.spark.job_metrics.SparkMetrics`; ``streams``: query name →
    the stream it reads (the ``stream`` label)."""

    def __init__(self, metrics, streams: dict[str, str]):
        self.metrics = metrics
        self.streams = streams
        self.last_progress: dict[str, object] = {}

    def onQueryStarted(self, event) -> None:
        log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

    def onQueryProgress(self, event) -> None:
        p = event.progress
        name = p.name or str(p.id)
        self.last_progress[name] = p
        m = self.metrics.shared
        m.spark_input_rows_per_second.labels(query=name).set(p.inputRowsPerSecond or 0.0)
        m.spark_processed_rows_per_second.labels(query=name).set(p.processedRowsPerSecond or 0.0)
        m.spark_batch_duration_seconds.labels(query=name).set((p.batchDuration or 0) / 1000.0)
        lag = 0
        known = False
        for source in p.sources:
            one = kafka_lag(source.endOffset, source.latestOffset)
            if one is None:
                behind = (source.metrics or {}).get("maxOffsetsBehindLatest")
                one = int(float(behind)) if behind is not None else None
            if one is not None:
                known = True
                lag += one
        if known:
            m.spark_kafka_offset_lag.labels(query=name).set(lag)
        duplicates, late = state_drops(p.stateOperators)
        labels = {"stream": self.streams.get(name, name), "query": name}
        if duplicates:
            self.metrics.duplicates_dropped.labels(**labels).inc(duplicates)
        if late:
            self.metrics.late_rows_dropped.labels(**labels).inc(late)
        if p.numInputRows:
            log.info("query %s batch %s: %d rows, %s ms %s", name, p.batchId, p.numInputRows,
                     p.batchDuration, dict(p.durationMs or {}))

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        if event.exception:
            log.error("query %s terminated with an error: %s", event.id, event.exception.splitlines()[0])
        else:
            log.info("query %s stopped", event.id)
