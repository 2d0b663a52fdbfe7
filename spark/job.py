"""The tickwire Spark application: one streaming query per stream and derived stream.

Run it with ``tickwire spark submit`` (which fetches the connector jars and generates the
mapping), or with a plain spark-submit (``tickwire spark submit --print-command`` prints it)::

    spark-submit --master 'local[*]' --conf spark.jars=<the jars of `python -m tickwire.spark.jars`> \
        <this file, where tickwire is installed> --mapping spark-mapping.json --bootstrap localhost:9092 \
        --dsn postgresql://... --checkpoint-dir /var/lib/tickwire/spark-checkpoints

Every query reads its topic, drops the copies of an event it has already seen (by primary key:
the table's, or first in Spark within ``--dedup-window``; :mod:`tickwire.spark.dedup`), writes
with :class:`~tickwire.spark.postgres_writer.PostgresWriter` in foreachBatch, checkpoints under
``<checkpoint-dir>/<query>``, and runs in a FAIR pool of its own name. One more query copies the
Kafka sink's dead-letter topic into ``dead_letters`` and ``trade_gaps``
(:mod:`tickwire.spark.dead_letter_topic`). A query that fails (PostgreSQL down past the writer's
retry budget, a broker gone) is restarted from its checkpoint with backoff; SIGTERM/SIGINT stop
all queries and exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

# Run as a file by spark-submit too: these imports then find the installed package (tickwire
# must be installed in the Python Spark uses, PYSPARK_PYTHON; the executors need nothing).
from tickwire.spark import (
    DEFAULT_DEDUP_WINDOW, DEFAULT_DERIVED_TRIGGER, DEFAULT_SHUFFLE_PARTITIONS, DEFAULT_TRIGGER, METRICS_PROPERTIES,
)
from tickwire.spark import candles as candle_queries
from tickwire.spark import dead_letter_topic, dedup
from tickwire.spark import mapping as mapping_module
from tickwire.spark import records
from tickwire.spark.postgres_writer import EVENT_TIME, PostgresWriter, TableTarget

log = logging.getLogger("tickwire.spark")


@dataclass
class JobOptions:
    mapping: str
    bootstrap: str
    dsn: str
    checkpoint_dir: str = "spark-checkpoints"
    master: str | None = "local[*]"  # None: keep what spark-submit set
    app_name: str = "tickwire"
    trigger: str = DEFAULT_TRIGGER  # processingTime; "0 seconds" = the next batch as soon as one ends
    derived_trigger: str | None = DEFAULT_DERIVED_TRIGGER  # the candle queries' interval; None = trigger
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = 200_000
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS
    dedup_window: str = DEFAULT_DEDUP_WINDOW
    metrics_host: str = "127.0.0.1"
    metrics_port: int | str = 9465  # "auto" = any free port, 0 = off (as `tickwire run`)
    ui_port: int | None = None  # None = Spark's default (4040, next free); < 0 = no UI
    retry_seconds: float = 600.0
    run_seconds: float | None = None  # stop after this long (tests, benchmarks)
    jars: list[str] = field(default_factory=list)
    conf: dict[str, str] = field(default_factory=dict)
    kafka_options: dict[str, str] = field(default_factory=dict)


def fair_scheduler_xml(queries: list[str]) -> str:
    pools = "\n".join(
        f"  <pool name={quoteattr(q)}><schedulingMode>FIFO</schedulingMode>"
        f"<weight>1</weight><minShare>1</minShare></pool>"
        for q in queries
    )
    return f'<?xml version="1.0"?>\n<allocations>\n{pools}\n</allocations>\n'


def spark_conf(opts: JobOptions, queries: list[str], allocation_file: str | None = None) -> dict[str, str]:
    """Every Spark setting the job needs; the same for local[*] and spark://."""
    conf = {
        "spark.app.name": opts.app_name,
        "spark.scheduler.mode": "FAIR",
        "spark.sql.shuffle.partitions": str(opts.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # a bad value must cast to NULL (→ dead letter), not fail the batch
        "spark.sql.ansi.enabled": "false",
        "spark.sql.streaming.metricsEnabled": "true",
        "spark.ui.prometheus.enabled": "true",
        "spark.metrics.conf": str(METRICS_PROPERTIES),
        # no extra batch only to advance a watermark: the event queries' processing-time watermark
        # (dedup.py) moves every batch, so each data batch was followed by an empty one that took
        # the next trigger slot (latency); state is evicted at the next data batch instead
        "spark.sql.streaming.noDataMicroBatches.enabled": "false",
        # micro-batches are small: no adaptive re-planning, no progress bars in the log
        "spark.sql.adaptive.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # de-duplication state (every key within its window, in the event and candle queries): RocksDB
        # with changelog checkpoints writes only what changed per batch, where the default
        # provider copies the whole map each batch. Applies to new checkpoints only (Spark keeps
        # a checkpoint's provider).
        "spark.sql.streaming.stateStore.providerClass":
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
        # checkpoint files on a local disk without a .crc file beside each: the offset and commit
        # logs are written twice per batch, and the checksummed file system doubled their cost
        # (~130 → ~60 ms of a ~400 ms batch, spark/README.md "Latency"). Other schemes (HDFS, S3)
        # are unaffected.
        "spark.hadoop.fs.AbstractFileSystem.file.impl": "org.apache.hadoop.fs.local.RawLocalFs",
        # the default 1 GiB heap is ~80 % full with the candle state and a backlog batch: GC time
        "spark.driver.memory": "2g",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    if opts.master:
        conf["spark.master"] = opts.master
    if allocation_file:
        conf["spark.scheduler.allocation.file"] = allocation_file
    if opts.jars:
        conf["spark.jars"] = ",".join(opts.jars)
    if opts.ui_port is not None:
        if opts.ui_port < 0:
            conf["spark.ui.enabled"] = "false"
        else:
            conf["spark.ui.port"] = str(opts.ui_port)
    conf.update(opts.conf)
    return conf


class Job:
    def __init__(self, opts: JobOptions, metrics=None):
        self.opts = opts
        self.mapping = mapping_module.load(opts.mapping)
        self.metrics = metrics
        self.spark = None
        self.writers: dict[str, PostgresWriter] = {}
        self._stop = threading.Event()

    # -- set-up ---------------------------------------------------------------------------------

    def start_session(self):
        from pyspark.sql import SparkSession

        queries = self.mapping.query_names
        self._scratch = Path(tempfile.mkdtemp(prefix="tickwire-spark-"))
        allocation = self._scratch / "fairscheduler.xml"
        allocation.write_text(fair_scheduler_xml(queries))
        builder = SparkSession.builder
        for key, value in spark_conf(self.opts, queries, str(allocation)).items():
            builder = builder.config(key, value)
        self.spark = builder.getOrCreate()
        self.spark.sparkContext.setLogLevel(os.environ.get("TICKWIRE_SPARK_LOG_LEVEL", "WARN"))
        if self.metrics is not None:
            from tickwire.spark.listener import MetricsListener

            streams = {s.name: s.name for s in self.mapping.streams} | {d.name: d.source for d in self.mapping.derived}
            streams[dead_letter_topic.QUERY] = ""  # every stream's
            self.listener = MetricsListener(self.metrics, streams)
            self.spark.streams.addListener(self.listener)
        return self.spark

    def kafka_options(self) -> dict[str, str]:
        options = {
            "kafka.bootstrap.servers": self.opts.bootstrap,
            "startingOffsets": self.opts.starting_offsets,
            "failOnDataLoss": "false",
        }
        if self.opts.max_offsets_per_trigger:
            options["maxOffsetsPerTrigger"] = str(self.opts.max_offsets_per_trigger)
        options.update(self.opts.kafka_options)
        return options

    def _writer(self, query: str, stream: str, target: TableTarget, event_time: str | None, dead: bool):
        writer = self.writers.get(query)
        if writer is None:
            writer = self.writers[query] = PostgresWriter(
                self.opts.dsn, query, stream, target, event_time,
                self.mapping.dead_letter_table, self.mapping.progress_table,
                metrics=self.metrics, retry_seconds=self.opts.retry_seconds, has_dead_letters=dead,
            )
        return writer

    def checkpoint_has(self, query: str, entry: str) -> bool:
        """Whether ``<checkpoint-dir>/<query>/<entry>`` exists, on whatever file system the
        checkpoint is (local, HDFS, an object store), through Spark's Hadoop configuration."""
        jvm = self.spark._jvm
        path = jvm.org.apache.hadoop.fs.Path(f"{self.opts.checkpoint_dir.rstrip('/')}/{query}/{entry}")
        return bool(path.getFileSystem(self.spark._jsc.hadoopConfiguration()).exists(path))

    def dedup_window(self, query: str) -> str:
        """``--dedup-window``, unless the query's checkpoint was started with the other kind of
        plan (stateful or not): then the checkpoint's, with a warning."""
        window, why = dedup.window_for_checkpoint(
            self.opts.dedup_window, self.checkpoint_has(query, "offsets"), self.checkpoint_has(query, "state"))
        if why:
            log.warning("query %s: %s", query, why)
        return window

    def start_query(self, name: str):
        """Start (or restart, from its checkpoint) the query called ``name``."""
        m = self.mapping
        stream = next((s for s in m.streams if s.name == name), None)
        if name == dead_letter_topic.QUERY:
            frame, mode = dead_letter_topic.read(self.spark, m.dead_letter_topic, self.kafka_options()), "append"
            writer = self.writers.get(name)
            if writer is None:
                writer = self.writers[name] = dead_letter_topic.DeadLetterTopicWriter(
                    self.opts.dsn, m.dead_letter_table, m.progress_table, m.trade_gaps_table,
                    metrics=self.metrics, retry_seconds=self.opts.retry_seconds)
            # rare records: the candles' slower pace, fewer idle offset polls
            trigger = self.opts.derived_trigger or self.opts.trigger
        elif stream is not None:
            parsed = records.parse(records.read_kafka(self.spark, stream.topic, self.kafka_options()), stream)
            target = TableTarget(stream.table, stream.column_names, list(stream.primary_key))
            writer = self._writer(name, stream.name, target, stream.event_time, True)
            window = self.dedup_window(name)
            frame, mode = dedup.drop_duplicate_events(parsed, stream, window), "append"
            # the batch's work in as many tasks as --shuffle-partitions (1 by default): without it a
            # stateless batch is a task per Kafka partition plus a shuffle to one task for the writer's
            # aggregate, two stages where one does
            frame = frame.coalesce(self.opts.shuffle_partitions)
            trigger = self.opts.trigger
        else:
            derived = next(d for d in m.derived if d.name == name)
            source = m.stream(derived.source)
            parsed = records.parse(records.read_kafka(self.spark, source.topic, self.kafka_options()), source)
            frame = candle_queries.candles(records.valid(parsed), derived, source)
            target = TableTarget(
                derived.table, list(candle_queries.OUTPUT_COLUMNS), list(derived.primary_key), upsert=True,
                computed=dict(candle_queries.COMPUTED_COLUMNS),
            )
            writer = self._writer(name, derived.source, target, EVENT_TIME, False)
            mode = "update"
            trigger = self.opts.derived_trigger or self.opts.trigger
        sc = self.spark.sparkContext
        sc.setLocalProperty("spark.scheduler.pool", name)
        try:
            return (
                frame.writeStream.queryName(name)
                .outputMode(mode)
                .option("checkpointLocation", f"{self.opts.checkpoint_dir.rstrip('/')}/{name}")
                .trigger(processingTime=trigger)
                .foreachBatch(writer)
                .start()
            )
        finally:
            sc.setLocalProperty("spark.scheduler.pool", None)

    # -- running --------------------------------------------------------------------------------

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def run(self) -> int:
        if self.spark is None:
            self.start_session()
        names = self.mapping.query_names
        running = {name: self.start_query(name) for name in names}
        log.info("started %d queries: %s", len(running), ", ".join(names))
        restarts: dict[str, int] = {}
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.opts.run_seconds is not None and time.monotonic() - started > self.opts.run_seconds:
                    break
                self._stop.wait(1.0)
                for name, query in list(running.items()):
                    if query.isActive:
                        continue
                    error = query.exception()
                    n = restarts[name] = restarts.get(name, 0) + 1
                    delay = min(60.0, 2.0 ** min(n, 6))
                    log.error("query %s stopped (%s); restart %d in %.0fs", name,
                              str(error).splitlines()[0] if error else "no error", n, delay)
                    if self._stop.wait(delay):
                        break
                    running[name] = self.start_query(name)
        finally:
            self.stop(list(running.values()))
        return 0

    def stop(self, queries=()) -> None:
        for query in queries:
            try:
                query.stop()
            except Exception as error:  # noqa: BLE001 - stopping must go on for the others
                log.warning("stopping query %s: %s", query.name, error)
        for writer in self.writers.values():
            writer.close()
        if self.spark is not None:
            self.spark.stop()
            self.spark = None
        if getattr(self, "_scratch", None) is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark/job.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--mapping", required=True, help="the JSON of `tickwire generate spark`")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--dsn", required=True, help="PostgreSQL connection string")
    p.add_argument("--checkpoint-dir", default="spark-checkpoints")
    p.add_argument("--master", default=None, help="default: what spark-submit set, else local[*]")
    p.add_argument("--trigger", default=DEFAULT_TRIGGER, help="micro-batch interval; 0 seconds = back to back")
    p.add_argument("--derived-trigger", default=DEFAULT_DERIVED_TRIGGER, help="the candle queries' interval")
    p.add_argument("--starting-offsets", default="earliest")
    p.add_argument("--max-offsets-per-trigger", type=int, default=200_000)
    p.add_argument("--shuffle-partitions", type=int, default=DEFAULT_SHUFFLE_PARTITIONS)
    p.add_argument("--dedup-window", default=DEFAULT_DEDUP_WINDOW,
                   help="how long (processing time) an event query remembers a key to drop its copies; "
                        "0 seconds = no state, PostgreSQL's key drops them")
    p.add_argument("--metrics-port", default="9465", help="auto = any free port, 0 = off")
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--ui-port", type=int, default=None, help="<0 = no Spark UI")
    p.add_argument("--retry-seconds", type=float, default=600.0)
    p.add_argument("--run-seconds", type=float, default=None)
    p.add_argument("--jars", default="", help="comma-separated; default: none (spark-submit --jars)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    return p


def options_from_args(args: argparse.Namespace) -> JobOptions:
    conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--conf {item!r}: expected KEY=VALUE")
        conf[key] = value
    master = args.master or conf.pop("spark.master", None)
    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        master = "local[*]"  # under spark-submit (gateway set) its --master stands
    return JobOptions(
        mapping=args.mapping, bootstrap=args.bootstrap, dsn=args.dsn,
        checkpoint_dir=args.checkpoint_dir, master=master, trigger=args.trigger, derived_trigger=args.derived_trigger,
        starting_offsets=args.starting_offsets, max_offsets_per_trigger=args.max_offsets_per_trigger,
        shuffle_partitions=args.shuffle_partitions, dedup_window=args.dedup_window, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host, ui_port=args.ui_port, retry_seconds=args.retry_seconds,
        run_seconds=args.run_seconds, jars=[j for j in args.jars.split(",") if j], conf=conf,
    )


def run(opts: JobOptions) -> int:
    """Run the job in this process until stopped; serve the tickwire metrics meanwhile."""
    from tickwire.framework.metrics import Metrics
    from tickwire.spark.job_metrics import SparkMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = Metrics()
    port = metrics.serve(opts.metrics_host, opts.metrics_port if opts.metrics_port == "auto" else int(opts.metrics_port))
    if port is not None:
        print(f"tickwire spark metrics on http://{opts.metrics_host}:{port}/metrics", flush=True)
    job = Job(opts, SparkMetrics(metrics))
    signal.signal(signal.SIGTERM, job.request_stop)
    signal.signal(signal.SIGINT, job.request_stop)
    try:
        return job.run()
    finally:
        metrics.stop()


def main(argv: list[str] | None = None) -> int:
    return run(options_from_args(parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
