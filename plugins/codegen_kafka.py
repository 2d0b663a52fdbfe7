"""Codegen target ``kafka``: topics (partitions, replication, configs) and record keys, as
used by ``tickwire kafka provision`` and the kafka sink."""

from __future__ import annotations

import json

from tickwire.framework.components import CodegenSpec
from tickwire.framework.hookspecs import hookimpl

DEFAULT_DEAD_LETTER_TOPIC = "tickwire.dead-letter"


def dead_letter_topic(config) -> str | None:
    for kind, options in config.sinks.values():
        if kind == "kafka":
            return options.get("dead_letter_topic", DEFAULT_DEAD_LETTER_TOPIC)
    return None


def topics(config) -> dict:
    out = []
    for stream in config.streams.values():
        if stream.topic is None:
            continue
        out.append({
            "name": stream.topic.name,
            "stream": stream.name,
            "partitions": stream.topic.partitions,
            "replication_factor": stream.topic.replication_factor,
            "config": {k: str(v) for k, v in sorted(stream.topic.config.items())},
            "key": stream.kafka_key,
            "schema": stream.schema_id,
            "schema_version": stream.schema_version,
        })
    result = {"topics": out}
    dlq = dead_letter_topic(config)
    if dlq:
        result["dead_letter_topic"] = {"name": dlq, "partitions": 1, "replication_factor": max([t["replication_factor"] for t in out] or [1]),
                                       "config": {"cleanup.policy": "delete", "retention.ms": "2592000000"}}
    return result


def generate(config) -> dict[str, str]:
    return {"kafka-topics.json": json.dumps(topics(config), indent=2) + "\n"}


@hookimpl
def tickwire_register_codegen_targets(register):
    register(CodegenSpec(name="kafka", factory=generate, description="Kafka topics, partitions, keys and configs (JSON)"))
