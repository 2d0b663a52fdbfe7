"""Command ``tickwire kafka provision``: create the Kafka topics streams.yaml declares.

The plan is the output of the ``kafka`` codegen target (``tickwire generate kafka``): one topic
per stream with its partitions, replication factor and configs (retention, cleanup policy), plus
the dead-letter topic. Missing topics are created; existing ones are compared and every
difference is reported, never changed, because repartitioning or shortening retention of a live
topic is a decision for a person. ``tickwire run`` does the same at start when the kafka sink
has ``provision: true``.

Exit codes: 0 when every topic exists (created or already there, differences only reported),
1 when Kafka could not be reached or refused to create a topic, 2 for a configuration problem.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Callable

import click

from tickwire.framework.extras import KAFKA, requires
from tickwire.framework.hookspecs import hookimpl

EXIT_FAILED = 1
EXIT_USAGE = 2


class ProvisionError(Exception):
    """Kafka refused or could not be reached; the message says which topic and why."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable  # an outage (try again later), not a refusal


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # human-readable, one per mismatch


def topic_plan(config) -> list[dict]:
    """Topics to provision, from the ``kafka`` codegen target: dicts with ``name``,
    ``partitions``, ``replication_factor`` and ``config``."""
    target = config.manager.codegen.get("kafka") if getattr(config, "manager", None) else None
    if target is None:
        raise ProvisionError("no codegen target 'kafka' (is the codegen-kafka plugin blocked?)")
    files = target.factory(config)
    plan = json.loads(files["kafka-topics.json"])
    topics = list(plan["topics"])
    if plan.get("dead_letter_topic"):
        topics.append(plan["dead_letter_topic"])
    return topics


async def provision(config, options: dict, report: Callable[[str], None] = print, topics: list[dict] | None = None) -> ProvisionReport:
    """Create the missing topics of ``config`` on the brokers of a kafka sink's ``options``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    from tickwire.plugins.kafka_sink import client_settings

    wanted = topics if topics is not None else topic_plan(config)
    settings = client_settings(options, "kafka provision")
    bootstrap = settings["bootstrap_servers"]
    admin = AIOKafkaAdminClient(**settings, request_timeout_ms=15000)
    result = ProvisionReport()
    try:
        try:
            await asyncio.wait_for(admin.start(), 20)
            existing = set(await admin.list_topics())
        except (KafkaError, OSError, asyncio.TimeoutError) as error:
            raise ProvisionError(f"cannot reach Kafka at {bootstrap}: {error!r}", unreachable=True) from error

        missing = [t for t in wanted if t["name"] not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(t["name"], num_partitions=t["partitions"], replication_factor=t["replication_factor"],
                         topic_configs={k: str(v) for k, v in t.get("config", {}).items()})
                for t in missing
            ])
            for name, code, message in _topic_errors(response):
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent provision)
                    raise ProvisionError(f"Kafka at {bootstrap} refused to create topic {name}: error {code} {message or ''}".rstrip())
            for t in missing:
                result.created.append(t["name"])
                report(f"created topic {t['name']} ({t['partitions']} partitions, replication {t['replication_factor']})")

        present = [t for t in wanted if t["name"] in existing]
        if present:
            described = {d["topic"]: d for d in await admin.describe_topics([t["name"] for t in present])}
            resources = [ConfigResource(ConfigResourceType.TOPIC, t["name"]) for t in present]
            configs = _configs_by_topic(await admin.describe_configs(resources))
            for t in present:
                found = _differences(t, described.get(t["name"], {}), configs.get(t["name"], {}))
                if found:
                    result.differences.extend(found)
                    for line in found:
                        report(f"differs (not changed): {line}")
                else:
                    result.unchanged.append(t["name"])
                    report(f"topic {t['name']} exists as declared")
    finally:
        await admin.close()
    return result


def _topic_errors(response) -> list[tuple[str, int, str | None]]:
    obj = response.to_object()
    entries = obj.get("topic_errors") or obj.get("topics") or []
    out = []
    for entry in entries:
        out.append((entry.get("topic") or entry.get("name"), entry.get("error_code", 0), entry.get("error_message")))
    return out


def _configs_by_topic(responses) -> dict[str, dict[str, str]]:
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object().get("resources", []):
            entries = resource.get("config_entries", [])
            configs[resource["resource_name"]] = {e["config_names"] if "config_names" in e else e["config_name"]: e["config_value"] for e in entries}
    return configs


def _differences(wanted: dict, described: dict, configs: dict[str, str]) -> list[str]:
    name = wanted["name"]
    out = []
    partitions = described.get("partitions", [])
    if partitions and len(partitions) != wanted["partitions"]:
        out.append(f"{name}: {len(partitions)} partitions, streams.yaml says {wanted['partitions']}")
    if partitions:
        replication = min(len(p.get("replicas", [])) for p in partitions)
        if replication != wanted["replication_factor"]:
            out.append(f"{name}: replication factor {replication}, streams.yaml says {wanted['replication_factor']}")
    for key, value in sorted(wanted.get("config", {}).items()):
        actual = configs.get(key)
        if actual is not None and str(actual) != str(value):
            out.append(f"{name}: {key}={actual}, streams.yaml says {value}")
    return out


def _kafka_sink_options(config, sink_id: str | None) -> tuple[str, dict]:
    candidates = {sid: options for sid, (kind, options) in config.sinks.items() if kind == "kafka"}
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
    options = dict(options)
    if bootstrap_servers:
        options["bootstrap_servers"] = bootstrap_servers
    from tickwire.plugins.kafka_sink import KafkaSinkError

    try:
        result = asyncio.run(provision(config, options, report=click.echo))
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
