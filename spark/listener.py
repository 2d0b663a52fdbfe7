"""StreamingQueryListener → the tickwire Prometheus metrics (``tickwire.framework.metrics.Metrics``).

Per query (label ``query`` = the stream or derived-stream name), on every progress event:

* ``tickwire_spark_input_rows_per_second`` / ``tickwire_spark_processed_rows_per_second``;
* ``tickwire_spark_batch_duration_seconds`` — the last micro-batch;
* ``tickwire_spark_kafka_offset_lag`` — Σ over partitions of latestOffset − endOffset (the
  records in Kafka the query has not read yet).

``tickwire_e2e_latency_seconds`` is observed by the writer after each commit.
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


class MetricsListener(StreamingQueryListener):
    def __init__(self, metrics):
        self.metrics = metrics
        self.last_progress: dict[str, object] = {}

    def onQueryStarted(self, event) -> None:
        log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

    def onQueryProgress(self, event) -> None:
        p = event.progress
        name = p.name or str(p.id)
        self.last_progress[name] = p
        m = self.metrics
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
