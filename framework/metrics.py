"""Prometheus metrics: one :class:`Metrics` (with its own registry) per engine.

Every metric of docs/architecture.md is an attribute here, so the engine, sources, sinks and
the Spark job all update the same objects through ``ctx.metrics``::

    ctx.metrics.reconnects.labels(source=self.name).inc()
    ctx.metrics.connections_open.labels(source=self.name).set(1)

The hot path does not touch these objects per record: the engine counts in plain integers and
adds them to the counters a few times a second (see ``Engine``), so ``/metrics`` lags by at most
that interval.

Serving: :meth:`Metrics.serve` starts an HTTP server in a daemon thread that answers
``GET /metrics``. Port semantics (the same in streams.yaml ``metrics.port`` and
``tickwire run --metrics-port``):

* ``port > 0`` — listen there (default 127.0.0.1:9464);
* ``port == 0`` — no endpoint (as the streams.yaml schema documents);
* ``"auto"`` (``--metrics-port auto``) — let the OS pick a free port, for tests and parallel
  runs; the chosen port is returned and shown at start.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest
from prometheus_client.exposition import start_http_server

from tickwire.framework.latency import LatencyMetrics


# Commit latency: a sink batch takes from ~1 ms (SQLite) to seconds (a slow remote store).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """All tickwire metrics, registered in ``self.registry`` (not the global default one, so
    several engines — or tests — never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self._server = None
        if registry is None:  # process_cpu_seconds_total, process_resident_memory_bytes, …
            ProcessCollector(registry=r)

        # engine: records
        self.messages_received = Counter(
            "tickwire_messages_received_total", "Payloads handed to the engine by sources.", ["stream"], registry=r
        )
        self.messages_written = Counter(
            "tickwire_messages_written_total",
            "Records committed by a sink (counted only when Sink.write returned).",
            ["stream", "sink"],
            registry=r,
        )
        self.messages_invalid = Counter(
            "tickwire_messages_invalid_total", "Records rejected by a transform.", ["stream"], registry=r
        )
        self.dead_letters = Counter(
            "tickwire_dead_letters_total",
            "Dead letters produced (invalid records and malformed frames); stream 'unknown' when none.",
            ["stream"],
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "tickwire_duplicates_dropped_total",
            "Records dropped as duplicates (already stored or already seen).",
            ["stream"],
            registry=r,
        )
        # engine: sinks
        self.queue_depth = Gauge(
            "tickwire_queue_depth", "Records waiting in a sink's queue (including the batch being written).", ["sink"], registry=r
        )
        self.batch_commit_seconds = Histogram(
            "tickwire_batch_commit_seconds", "Time for Sink.write of one batch to commit.", ["sink"],
            buckets=COMMIT_BUCKETS, registry=r,
        )
        # latency at every hop (framework/latency.py): event → received, received → commit,
        # event → commit; and the clock offset that corrects the event-time ones
        self.latency = LatencyMetrics(r)
        self.event_lag_seconds = self.latency.event_lag
        # sources
        self.reconnects = Counter("tickwire_reconnects_total", "Source reconnections.", ["source"], registry=r)
        self.connections_open = Gauge("tickwire_connections_open", "Open source connections.", ["source"], registry=r)
        self.gaps_detected = Counter(
            "tickwire_gaps_detected_total", "Gaps detected in trade ids.", ["symbol"], registry=r
        )
        self.gap_trades_missing = Counter(
            "tickwire_gap_trades_missing_total", "Trades missing in detected gaps.", ["symbol"], registry=r
        )
        self.gaps_filled = Counter("tickwire_gaps_filled_total", "Gaps filled (e.g. from REST).", ["symbol"], registry=r)
        self.gap_trades_filled = Counter(
            "tickwire_gap_trades_filled_total", "Trades recovered when filling gaps.", ["symbol"], registry=r
        )
        self.records_abandoned = Counter(
            "tickwire_records_abandoned_total",
            "Records not committed when a stop reached engine.shutdown_timeout_s (or a forced exit).",
            ["sink", "stream"], registry=r,
        )
        self.trade_gap_trades_lost = Counter(
            "tickwire_trade_gap_trades_lost_total",
            "Trades lost for good: ranges a source could not fill (recorded in trade_gaps), by reason.",
            ["stream", "symbol", "reason"],
            registry=r,
        )
        # spooling sinks (Kafka)
        self.spool_bytes = Gauge("tickwire_spool_bytes", "Bytes in a sink's local spool.", ["sink"], registry=r)
        self.spool_records = Gauge("tickwire_spool_records", "Records in a sink's local spool.", ["sink"], registry=r)
        self.spool_oldest_age_seconds = Gauge(
            "tickwire_spool_oldest_age_seconds", "Age of the oldest spooled record.", ["sink"], registry=r
        )
        self.spool_dropped = Counter(
            "tickwire_spool_dropped_total", "Records dropped because a spool was full.", ["sink"], registry=r
        )
        self.spool_records_lost = Counter(
            "tickwire_spool_records_lost_total",
            "Spooled records found corrupt when a spool was opened, skipped.", ["sink"], registry=r,
        )
        self.send_errors = Counter("tickwire_send_errors_total", "Failed sends to a remote sink.", ["sink"], registry=r)
        # Spark job
        self.spark_input_rows_per_second = Gauge(
            "tickwire_spark_input_rows_per_second", "Spark input rate.", ["query"], registry=r
        )
        self.spark_processed_rows_per_second = Gauge(
            "tickwire_spark_processed_rows_per_second", "Spark processing rate.", ["query"], registry=r
        )
        self.spark_batch_duration_seconds = Gauge(
            "tickwire_spark_batch_duration_seconds", "Duration of the last Spark micro-batch.", ["query"], registry=r
        )
        self.spark_kafka_offset_lag = Gauge(
            "tickwire_spark_kafka_offset_lag", "Kafka offsets not yet processed by a query.", ["query"], registry=r
        )
        self.e2e_latency_seconds = Histogram(
            "tickwire_e2e_latency_seconds", "PostgreSQL commit time minus the Binance event time E.", ["query"],
            buckets=E2E_BUCKETS, registry=r,
        )

    def identify(self, instance: str) -> None:
        """``tickwire_instance_info{name="…"} 1``: which process these series come from, so two
        redundant instances scraped side by side can be told apart (join on Prometheus's target
        label ``instance``; ``name`` avoids colliding with it)."""
        Info("tickwire_instance", "The tickwire run process (--instance / TICKWIRE_INSTANCE).",
             registry=self.registry).info({"name": instance})

    # -- serving -----------------------------------------------------------------------------

    def serve(self, host: str, port: int | str) -> int | None:
        """Serve ``/metrics``; return the bound port (``None`` when ``port`` is 0: disabled)."""
        if port == "auto":
            port = 0
        elif not port or int(port) <= 0:
            return None
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def exposition(self) -> bytes:
        """The text exposition format, as ``/metrics`` returns it."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels) -> float:
        """A sample's current value (0.0 if absent); for tests and the summary."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v
