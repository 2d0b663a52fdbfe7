"""The Kafka topics tickwire writes to, from the streams' :class:`StreamSpec` (``stream.topic``
holds each stream's name, partitions, replication and configs) plus the dead-letter topic.

One plan for every user of it: ``provision: true`` at the sink's start, `tickwire kafka
provision`, and the ``kafka`` and ``compose`` codegen targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tickwire.framework.schemas import StreamSpec
from tickwire.plugins.kafka.options import complete

if TYPE_CHECKING:
    from tickwire.framework.config import Config

SINK_TYPE = "kafka"
# Dead letters are kept for inspection and replay, one partition (their order is arrival order).
DEAD_LETTER_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "2592000000"}  # 30 days


@dataclass(frozen=True)
class Topic:
    """A topic as it should exist on the brokers; config values are strings, as Kafka's are."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def stream_topic(stream: StreamSpec) -> Topic:
    """The topic of ``stream`` (which has one: ``stream.topic`` is not None)."""
    spec = stream.topic
    return Topic(spec.name, spec.partitions, spec.replication_factor, {k: str(v) for k, v in sorted(spec.config.items())})


def dead_letter_topic_plan(name: str, stream_topics: Iterable[Topic]) -> Topic:
    """The dead-letter topic, replicated like the most replicated stream topic."""
    replication = max([t.replication_factor for t in stream_topics] or [1])
    return Topic(name, 1, replication, dict(DEAD_LETTER_TOPIC_CONFIG))


def topics_of(streams: Iterable[StreamSpec], dead_letter_topic: str | None) -> list[Topic]:
    """Every topic of ``streams`` (those that have one), then the dead-letter topic if named."""
    topics = [stream_topic(stream) for stream in streams if stream.topic is not None]
    if dead_letter_topic:
        topics.append(dead_letter_topic_plan(dead_letter_topic, topics))
    return topics


def dead_letter_topic(config: Config) -> str | None:
    """The dead-letter topic of the config's first kafka sink; None when it has none."""
    for kind, options in config.sinks.values():
        if kind == SINK_TYPE:
            return complete(options)["dead_letter_topic"]
    return None


def config_topics(config: Config) -> list[Topic]:
    """Every stream topic streams.yaml declares, and the dead-letter topic of its kafka sink."""
    return topics_of(config.streams.values(), dead_letter_topic(config))
