"""tickwire's Spark Structured Streaming job: Kafka (normalized records) → PostgreSQL.

One Spark application runs one streaming query per stream of the generated mapping
(`tickwire generate spark`), plus one per derived stream (candles), each in its own FAIR pool:

* :mod:`tickwire.spark.mapping` — the generated mapping (JSON) as dataclasses, checked on load;
* :mod:`tickwire.spark.jars` — the Kafka connector jars, fetched once with Maven into the cache;
* :mod:`tickwire.spark.records` — Kafka value JSON → typed columns, or a dead-letter reason;
* :mod:`tickwire.spark.dedup` — every event once: copies dropped by key within a bounded window;
* :mod:`tickwire.spark.candles` — OHLCV candles over event-time windows with a watermark;
* :mod:`tickwire.spark.postgres_writer` — the foreachBatch writer: COPY, upsert, progress, retries;
* :mod:`tickwire.spark.dead_letter_topic` — ingest's dead letters and lost ranges, from Kafka into the tables;
* :mod:`tickwire.spark.listener` — StreamingQueryListener → the tickwire Prometheus metrics;
* :mod:`tickwire.spark.job_metrics` — the job's own metrics (commit latency, duplicates, late rows);
* :mod:`tickwire.spark.job` — the application: session, queries, supervision (`python -m tickwire.spark.job`).

The job needs Python only on the driver: every per-row expression runs in the JVM, so a cluster's
executors need no tickwire install.
"""

from importlib.resources import files

# Shipped inside the package (package data), read where it is installed.
METRICS_PROPERTIES = files(__name__) / "metrics.properties"  # Spark's metrics settings (spark.metrics.conf)
POM = files(__name__) / "pom.xml"  # the Kafka connector jars Maven fetches (spark.jars)

# Defaults of the job and of `tickwire spark submit` (here, so the CLI needs no PySpark to show
# them), measured in spark/README.md ("Latency"): the lowest latency that keeps exactly-once.
# Event queries: a micro-batch as soon as the previous one ends (a batch takes longer than
# 100 ms), polling Kafka every 100 ms when idle instead of every 10 ms as "0 seconds" does.
DEFAULT_TRIGGER = "100 milliseconds"
# Candles: an aggregate updated in place; a slower pace leaves the CPU to the event queries.
DEFAULT_DERIVED_TRIGGER = "5 seconds"
# One task and one state store per stateful stage: the lowest per-batch cost; raise it on a
# cluster for throughput (a checkpoint keeps the number it was created with).
DEFAULT_SHUFFLE_PARTITIONS = 1
# How long an event query remembers a key to drop its copies (spark/dedup.py). Zero: no state,
# PostgreSQL's key drops the copies; half the per-batch cost of a stateful window (spark/README.md).
DEFAULT_DEDUP_WINDOW = "0 seconds"
# The window a checkpoint started with state keeps when the job is now asked for none (the
# default before it became zero): Spark cannot remove a stateful operator from a checkpoint.
STATEFUL_CHECKPOINT_WINDOW = "30 seconds"
