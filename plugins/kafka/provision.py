"""Create the topics of a plan (:mod:`tickwire.plugins.kafka.topics`) on the brokers.

Missing topics are created; existing ones are compared and every difference is reported, never
changed, because repartitioning or shortening retention of a live topic is a decision for a
person. Used by `tickwire kafka provision` and by the sink at start with ``provision: true``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from tickwire.plugins.kafka.topics import Topic

TOPIC_ALREADY_EXISTS = 36  # Kafka's error code: a concurrent provision created it first


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


async def provision(settings: dict, wanted: list[Topic], report: Callable[[str], None] = print) -> ProvisionReport:
    """Create the missing topics of ``wanted`` on the brokers of ``settings`` (aiokafka client
    settings, :func:`~tickwire.plugins.kafka.client.client_settings`); report differences."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    bootstrap = settings["bootstrap_servers"]
    admin = AIOKafkaAdminClient(**settings, request_timeout_ms=15000)
    result = ProvisionReport()
    try:
        try:
            await asyncio.wait_for(admin.start(), 20)
            existing = set(await admin.list_topics())
        except (KafkaError, OSError, asyncio.TimeoutError) as error:
            raise ProvisionError(f"cannot reach Kafka at {bootstrap}: {error!r}", unreachable=True) from error

        missing = [t for t in wanted if t.name not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(t.name, num_partitions=t.partitions, replication_factor=t.replication_factor, topic_configs=dict(t.config))
                for t in missing
            ])
            for name, code, message in _topic_errors(response):
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise ProvisionError(f"Kafka at {bootstrap} refused to create topic {name}: error {code} {message or ''}".rstrip())
            for t in missing:
                result.created.append(t.name)
                report(f"created topic {t.name} ({t.partitions} partitions, replication {t.replication_factor})")

        present = [t for t in wanted if t.name in existing]
        if present:
            described = {d["topic"]: d for d in await admin.describe_topics([t.name for t in present])}
            resources = [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in present]
            configs = _configs_by_topic(await admin.describe_configs(resources))
            for t in present:
                found = _differences(t, described.get(t.name, {}), configs.get(t.name, {}))
                if found:
                    result.differences.extend(found)
                    for line in found:
                        report(f"differs (not changed): {line}")
                else:
                    result.unchanged.append(t.name)
                    report(f"topic {t.name} exists as declared")
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


def _differences(wanted: Topic, described: dict, configs: dict[str, str]) -> list[str]:
    name = wanted.name
    out = []
    partitions = described.get("partitions", [])
    if partitions and len(partitions) != wanted.partitions:
        out.append(f"{name}: {len(partitions)} partitions, streams.yaml says {wanted.partitions}")
    if partitions:
        replication = min(len(p.get("replicas", [])) for p in partitions)
        if replication != wanted.replication_factor:
            out.append(f"{name}: replication factor {replication}, streams.yaml says {wanted.replication_factor}")
    for key, value in sorted(wanted.config.items()):
        actual = configs.get(key)
        if actual is not None and str(actual) != str(value):
            out.append(f"{name}: {key}={actual}, streams.yaml says {value}")
    return out
