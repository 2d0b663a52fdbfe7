"""`tickwire spark submit` / `tickwire spark jars`: run the Spark job (Kafka → PostgreSQL).

``submit`` generates the mapping from streams.yaml (codegen target ``spark``, unless ``--mapping``
names a file), fetches the Kafka connector jars once (Maven, cached in
``${TICKWIRE_CACHE:-~/.cache/tickwire}/spark-jars/<pyspark version>``) and runs the application
in this process, as the Spark driver: ``--master local[*]`` or ``spark://host:7077`` (client
mode), same settings either way. ``--print-command`` prints the equivalent plain spark-submit
line instead of running.

Everything the job does is in ``spark/`` (see ``spark/__init__.py``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from tickwire.framework.documents import DocumentError, Problem, dotted
from tickwire.framework.extras import SPARK, requires
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.kafka.formats import topic_format
from tickwire.spark import DEFAULT_DEDUP_WINDOW, DEFAULT_DERIVED_TRIGGER, DEFAULT_SHUFFLE_PARTITIONS, DEFAULT_TRIGGER


def _spark_modules():
    """The job and jars modules, imported when a spark command runs (they need pyspark)."""
    from tickwire.spark import jars, job

    return job, jars


def refuse_unreadable_topics(config) -> None:
    """Before Spark starts: a stream whose topic the job cannot parse (``format: binance``) is a
    config error at its ``format:`` line — else every record of it would be a dead letter."""
    from tickwire.spark.mapping import unreadable_format

    problems = []
    for name, stream in config.streams.items():
        refused = unreadable_format(name, stream.topic.name, topic_format(stream)) if stream.topic is not None else None
        if refused:
            path = ("streams", name, "topic", "format")
            problems.append(Problem(config.doc.mark(path), dotted(path), refused))
    if problems:
        raise DocumentError(problems)


def _mapping_file(app, mapping: Path | None, where: Path) -> Path:
    if mapping is not None:
        return mapping
    app.manager.raise_errors()
    target = app.manager.codegen.get("spark")
    if target is None:
        raise click.ClickException("no codegen target 'spark' (is the codegen-spark plugin blocked?); pass --mapping")
    files = target.factory(app.config)
    where.mkdir(parents=True, exist_ok=True)
    path = where / "spark-mapping.json"
    path.write_text(files["spark-mapping.json"])
    return path


@click.group("spark")
def spark_group() -> None:
    """Spark Structured Streaming: Kafka topics → PostgreSQL tables and candles."""


@requires(SPARK)
@spark_group.command("jars")
def jars_command() -> None:
    """Fetch the Kafka connector jars for the installed PySpark (once) and print their paths."""
    _job, jars = _spark_modules()
    try:
        for path in jars.fetch_jars():
            click.echo(str(path))
    except jars.JarsError as error:
        raise click.ClickException(str(error)) from error


@requires(SPARK)
@spark_group.command("submit")
@click.option("--mapping", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The JSON of `tickwire generate spark` (default: generate it from the config).")
@click.option("--master", envvar="TICKWIRE_SPARK_MASTER", show_envvar=True, default="local[*]", show_default=True,
              help="local[N], local[*] or spark://host:port.")
@click.option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", show_envvar=True, default="127.0.0.1:9092",
              show_default=True, help="Kafka bootstrap servers.")
@click.option("--dsn", envvar=["TICKWIRE_SPARK_PG_DSN", "TICKWIRE_PG_DSN"], show_envvar=True, required=True,
              help="PostgreSQL connection of the writer role (prefer the environment variable).")
@click.option("--checkpoint-dir", envvar="TICKWIRE_SPARK_CHECKPOINT_DIR", show_envvar=True,
              default="spark-checkpoints", show_default=True,
              help="One subfolder per query; a local path or any Hadoop URI (hdfs://, s3a://).")
@click.option("--trigger", default=DEFAULT_TRIGGER, show_default=True,
              help="Micro-batch interval; '0 seconds' starts the next batch as soon as one ends.")
@click.option("--derived-trigger", default=DEFAULT_DERIVED_TRIGGER, show_default=True,
              help="Micro-batch interval of the derived (candle) queries.")
@click.option("--starting-offsets", default="earliest", show_default=True,
              help="Where a query without a checkpoint starts: earliest or latest.")
@click.option("--max-offsets-per-trigger", type=int, default=200_000, show_default=True)
@click.option("--shuffle-partitions", type=int, default=DEFAULT_SHUFFLE_PARTITIONS, show_default=True)
@click.option("--dedup-window", default=DEFAULT_DEDUP_WINDOW, show_default=True,
              help="How long (processing time) an event query remembers a key, to drop its copies in "
              "Spark; 0 seconds = no state, PostgreSQL's key drops them (the lowest latency). A "
              "checkpoint keeps the kind it started with.")
@click.option("--metrics-port", envvar="TICKWIRE_SPARK_METRICS_PORT", show_envvar=True, default="9465", show_default=True,
              help="tickwire_spark_* metrics: auto = any free port, 0 = off.")
@click.option("--metrics-host", envvar=["TICKWIRE_SPARK_METRICS_HOST", "TICKWIRE_METRICS_HOST"], show_envvar=True,
              default="127.0.0.1", show_default=True, help="0.0.0.0 in a container, for Prometheus.")
@click.option("--ui-port", type=int, default=None, help="Spark UI (and its PrometheusServlet); <0 = no UI.")
@click.option("--retry-seconds", type=float, default=600.0, show_default=True,
              help="How long a batch retries PostgreSQL before its query fails and restarts.")
@click.option("--run-seconds", type=float, default=None, help="Stop after this long (benchmarks).")
@click.option("--conf", "confs", multiple=True, metavar="KEY=VALUE", help="Extra Spark setting (repeatable).")
@click.option("--print-command", is_flag=True, help="Print the plain spark-submit line and exit.")
@click.pass_obj
def submit_command(app, mapping, master, bootstrap, dsn, checkpoint_dir, trigger, derived_trigger, starting_offsets,
                   max_offsets_per_trigger, shuffle_partitions, dedup_window, metrics_port, metrics_host, ui_port,
                   retry_seconds, run_seconds, confs, print_command) -> None:
    """Run one streaming query per stream and derived stream of the config, until stopped."""
    from tickwire.spark.mapping import MappingError, load

    # before Spark starts (and before the jars are fetched): refuse what the job could not read
    if mapping is None:
        refuse_unreadable_topics(app.config)
    else:
        try:
            load(mapping)
        except MappingError as error:
            raise click.ClickException(str(error)) from error
    job, jars = _spark_modules()
    try:
        jar_paths = [str(p) for p in jars.fetch_jars()]
    except jars.JarsError as error:
        raise click.ClickException(str(error)) from error
    where = Path.cwd() if print_command else Path(checkpoint_dir if "://" not in checkpoint_dir else ".")
    mapping_path = _mapping_file(app, mapping, where)
    args = [
        "--mapping", str(mapping_path), "--bootstrap", bootstrap, "--dsn", dsn,
        "--checkpoint-dir", checkpoint_dir, "--trigger", trigger, "--derived-trigger", derived_trigger,
        "--starting-offsets", starting_offsets,
        "--max-offsets-per-trigger", str(max_offsets_per_trigger), "--shuffle-partitions", str(shuffle_partitions),
        "--dedup-window", dedup_window,
        "--metrics-port", str(metrics_port), "--metrics-host", metrics_host, "--retry-seconds", str(retry_seconds),
    ]
    if ui_port is not None:
        args += ["--ui-port", str(ui_port)]
    if run_seconds is not None:
        args += ["--run-seconds", str(run_seconds)]
    for item in confs:
        args += ["--conf", item]
    if print_command:
        opts = job.options_from_args(job.parser().parse_args(args + ["--master", master]))
        opts.jars = jar_paths
        conf = job.spark_conf(opts, [])
        conf.pop("spark.master", None)
        line = ["spark-submit", "--master", master]
        for key, value in conf.items():
            line += ["--conf", f"{key}={value}"]
        click.echo(_render(line + [str(Path(job.__file__).resolve())] + args))
        return
    args += ["--master", master, "--jars", ",".join(jar_paths)]
    raise SystemExit(job.run(job.options_from_args(job.parser().parse_args(args))))


def _render(line: list[str]) -> str:
    """One option (and its value) per line; the DSN is read from the environment, not printed."""
    out: list[str] = []
    i = 0
    while i < len(line):
        part = line[i]
        has_value = part.startswith("--") and i + 1 < len(line) and not line[i + 1].startswith("--")
        if part == "--dsn":
            out.append('--dsn "$TICKWIRE_SPARK_PG_DSN"')
        elif has_value:
            out.append(f"{part} {shlex.quote(line[i + 1])}")
        else:
            out.append(shlex.quote(part))
        i += 2 if has_value else 1
    return " \\\n  ".join(out)


@hookimpl
def tickwire_register_commands(cli: click.Group) -> None:
    cli.add_command(spark_group)
