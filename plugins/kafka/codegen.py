"""Codegen target ``kafka``: topics (partitions, replication, configs) and record keys, the plan
`tickwire kafka provision` and the kafka sink's ``provision: true`` carry out."""

from __future__ import annotations

import dataclasses
import json

from tickwire.framework.components import CodegenSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.plugins.kafka.topics import dead_letter_topic, dead_letter_topic_plan, stream_topic


def topics(config) -> dict:
    """Every stream topic with its key and schema, and the dead-letter topic (with a kafka sink)."""
    declared = [(stream, stream_topic(stream)) for stream in config.streams.values() if stream.topic is not None]
    out = [
        {
            "name": topic.name,
            "stream": stream.name,
            "partitions": topic.partitions,
            "replication_factor": topic.replication_factor,
            "config": topic.config,
            "key": stream.kafka_key,
            "schema": stream.schema_id,
            "schema_version": stream.schema_version,
        }
        for stream, topic in declared
    ]
    result: dict = {"topics": out}
    name = dead_letter_topic(config)
    if name:
        result["dead_letter_topic"] = dataclasses.asdict(dead_letter_topic_plan(name, [topic for _, topic in declared]))
    return result


def generate(config) -> dict[str, str]:
    return {"kafka-topics.json": json.dumps(topics(config), indent=2) + "\n"}


@hookimpl
def tickwire_register_codegen_targets(register):
    register(CodegenSpec(name="kafka", factory=generate, description="Kafka topics, partitions, keys and configs (JSON)"))
