"""Command ``tickwire kafka provision``: create the Kafka topics streams.yaml declares.

The plan (:mod:`tickwire.plugins.kafka.topics`, the same one ``tickwire generate kafka``
prints): one topic per stream with its partitions, replication factor and configs (retention,
cleanup policy), plus the dead-letter topic. Missing topics are created; differences on existing
ones are reported, never changed. ``tickwire run`` does the same at start when the kafka sink
has ``provision: true``.

Exit codes: 0 when every topic exists (created or already there, differences only reported),
1 when Kafka could not be reached or refused to create a topic, 2 for a configuration problem.
"""

from __future__ import annotations

import asyncio

import click

from tickwire.framework.extras import KAFKA, requires
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.kafka.client import KafkaSinkError, client_settings
from tickwire.plugins.kafka.options import complete
from tickwire.plugins.kafka.provision import ProvisionError, provision
from tickwire.plugins.kafka.topics import SINK_TYPE, config_topics

EXIT_FAILED = 1
EXIT_USAGE = 2


def _kafka_sink_options(config, sink_id: str | None) -> tuple[str, dict]:
    candidates = {sid: options for sid, (kind, options) in config.sinks.items() if kind == SINK_TYPE}
    if sink_id is not None:
        if sink_id not in candidates:
            raise click.UsageError(f"no kafka sink {sink_id!r} under sinks: (kafka sinks: {', '.join(candidates) or 'none'})")
        return sink_id, candidates[sink_id]
    if not candidates:
        raise click.UsageError("streams.yaml declares no sink of type kafka; pass --bootstrap-servers")
    first = sorted(candidates)[0]
    return first, candidates[first]


@click.group("kafka")
def kafka_group() -> None:
    """Kafka topics for the kafka sink."""


@requires(KAFKA)
@kafka_group.command("provision")
@click.option("--sink", "sink_id", metavar="ID", help="Kafka sink whose connection settings to use (default: the only/first one).")
@click.option("--bootstrap-servers", metavar="HOST:PORT", help="Override the sink's bootstrap_servers.")
@click.pass_obj
def provision_command(app, sink_id: str | None, bootstrap_servers: str | None) -> None:
    """Create missing topics (partitions, replication, retention, cleanup policy) as
    `tickwire generate kafka` describes them; report, never change, differences on existing ones."""
    config = app.config
    try:
        _, options = _kafka_sink_options(config, sink_id)
    except click.UsageError:
        if not bootstrap_servers:
            raise
        options = {}
    options = complete(options)
    if bootstrap_servers:
        options["bootstrap_servers"] = bootstrap_servers
    try:
        settings = client_settings(options, "kafka provision")
        result = asyncio.run(provision(settings, config_topics(config), report=click.echo))
    except KafkaSinkError as error:
        click.echo(f"tickwire kafka provision: {error}", err=True)
        raise SystemExit(EXIT_USAGE)
    except ProvisionError as error:
        click.echo(f"tickwire kafka provision: {error}", err=True)
        raise SystemExit(EXIT_FAILED)
    summary = f"{len(result.created)} created, {len(result.unchanged)} unchanged"
    if result.differences:
        summary += f", {len(result.differences)} difference(s) reported and left as they are"
    click.echo(summary)


@hookimpl
def tickwire_register_commands(cli: click.Group) -> None:
    cli.add_command(kafka_group)
