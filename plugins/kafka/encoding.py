"""Records → Kafka messages (docs/architecture.md): key = the stream's ``kafka_key`` column
(UTF-8), value = the record as JSON in the topic's format (plugins/kafka/formats.py), headers
``tickwire-stream``, ``tickwire-schema``, ``tickwire-schema-version``, ``tickwire-schema-fingerprint``
(docs/schema-evolution.md), ``tickwire-format``,
``tickwire-ingested-at``; grouped by partition in the one loop over
a batch. This is the sink's hot path (bench/kafka_bench.py)."""

from __future__ import annotations

import msgspec

from tickwire.framework.schema_lock import FINGERPRINT_HEADER, fingerprint
from tickwire.framework.schemas import StreamSpec
from tickwire.plugins.kafka.client import KafkaSinkError
from tickwire.plugins.kafka.formats import format_header, value_encoder
from tickwire.plugins.kafka.messages import Groups, Message

# A high-cardinality kafka_key: past this many keys the caches start over rather than grow.
MAX_CACHED_KEYS = 100_000


class RecordEncoder:
    """Encodes records of the streams :meth:`declare`-d to it. ``partition_of_key`` (topic →
    key → partition) is the producer's cache, shared: keys it knows are grouped by partition
    here, the others go to the ``None`` group and get theirs when enqueued."""

    def __init__(self, who: str, partition_of_key: dict[str, dict[bytes | None, int]]):
        self.who = who
        self.topics: dict[str, str] = {}  # stream name → topic
        self._headers: dict[str, list[tuple[str, bytes]]] = {}
        self._values: dict[str, object] = {}  # stream name → record → value bytes (its topic's format)
        self._partition_of_key = partition_of_key
        self._key_bytes: dict[object, bytes] = {}
        # msgspec, not orjson: orjson returns each value in a 4 KiB allocation, and the values
        # of every write in flight are kept until acknowledged (to spool them if Kafka is away)
        # — at full speed that was ~150 MB of RSS; msgspec allocates what the JSON needs.
        self._encode = msgspec.json.Encoder().encode

    def declare(self, stream: StreamSpec) -> None:
        """Accept records of ``stream`` from now on; it must have a topic."""
        if stream.topic is None:
            raise KafkaSinkError(
                f"{self.who}: stream {stream.name!r} has no Kafka topic; add `topic: {{name: ...}}` "
                f"under streams.{stream.name} in streams.yaml"
            )
        self.topics[stream.name] = stream.topic.name
        self._headers[stream.name] = [
            ("tickwire-stream", stream.name.encode()),
            ("tickwire-schema", str(stream.schema_id).encode()),
            ("tickwire-schema-version", str(stream.schema_version).encode()),
            # computed once per stream here, never per record (framework/schema_lock.py)
            (FINGERPRINT_HEADER, fingerprint(stream.schema).encode()),
            format_header(stream),
        ]
        self._values[stream.name] = value_encoder(stream, self._encode)

    def messages(self, stream: StreamSpec, records: list[dict]) -> Groups:
        """``records`` as messages of ``stream``'s topic, each key's in order in one group."""
        topic = self.topics.get(stream.name)
        if topic is None:
            raise KafkaSinkError(f"{self.who}: stream {stream.name!r} was not declared to this sink at open")
        key_column = stream.kafka_key
        base_headers = self._headers[stream.name]
        dumps = self._values[stream.name]
        key_bytes = self._key_bytes
        partition_of = self._partition_of_key.get(topic) or {}
        if len(key_bytes) > MAX_CACHED_KEYS:
            key_bytes.clear()
            partition_of.clear()
        groups: dict[int | None, list[Message]] = {}
        # key → (its bytes, its partition's group): one lookup per record for what depends
        # only on the key (keys repeat: symbols)
        slots: dict[object, tuple[bytes | None, list[Message]]] = {}
        # Normalize stamps every record of one millisecond with the same ingested_at string,
        # so the headers list is built once per string and shared rather than once per record.
        last_ingested = headers = None
        for record in records:
            ingested = record.get("ingested_at", "")
            if ingested is not last_ingested or headers is None:
                last_ingested = ingested
                headers = base_headers + [("tickwire-ingested-at", str(ingested).encode())]
            key = record.get(key_column)
            slot = slots.get(key)
            if slot is None:
                if key is None:
                    encoded_key = None
                else:
                    encoded_key = key_bytes.get(key)
                    if encoded_key is None:
                        encoded_key = key_bytes[key] = str(key).encode()
                partition = partition_of.get(encoded_key)
                group = groups.get(partition)
                if group is None:
                    group = groups[partition] = []
                slot = slots[key] = (encoded_key, group)
            slot[1].append((topic, slot[0], dumps(record), headers))
        return {(topic, partition) if partition is not None else None: group for partition, group in groups.items()}
