"""Sink ``kafka``: publish normalized records to one Kafka topic per stream, and dead letters to
the shared dead-letter topic, without losing anything while the broker is away.

Per record (docs/architecture.md): key = the stream's ``kafka_key`` column (UTF-8), value = the
record as JSON, headers ``tickwire-stream``, ``tickwire-schema``, ``tickwire-schema-version``,
``tickwire-ingested-at``. Dead letters: value = the raw frame, headers ``tickwire-stream``,
``tickwire-reason``, ``tickwire-plugin``.

Producer: aiokafka with ``acks=all`` and idempotence, zstd compression (lz4, then gzip, when the
codec library is missing). A batch is split per partition into record batches that are handed
to the producer whole (``send_batch``) and awaited together: ``write()`` returns once the broker
acknowledged every record of the batch, which is what the engine counts as written.
``max_in_flight`` (default 8) such writes run at once (the engine's ``max_in_flight`` sink
attribute): each is enqueued into the producer under a FIFO lock in call order, so a key's
records keep their order, and the acknowledgements are awaited outside it. Without that the
ingest rate is one batch per acknowledgement round trip (linger + zstd + acks=all).

When the broker is unreachable, a batch that is not acknowledged within ``send_timeout_ms`` goes
to a local disk spool (framework/spool.py), and so does every later batch until the spool is
empty again: ``write()`` then returns as soon as the batch is on disk, so the engine's queue
keeps moving and the WebSocket keeps being read. With several writes in flight the spool keeps
their order too: the first failure switches the sink to spooling and abandons the producer — the
writes still waiting for its acknowledgements stop waiting and spool too — and a write goes to
the spool only once every earlier write has settled (acknowledged or spooled). The abandoned
producer is stopped in the background with aiokafka's public ``stop()`` (its unsent batches
expire after ``send_timeout_ms``); every acknowledgement future we were handed has its outcome
retrieved, so nothing is left for asyncio to complain about. A background task replays the
spool, in order, once the broker answers and the abandoned producer is gone, and switches back
to direct sends only when every write has settled. A spool left by a killed process is
replayed on the next start; corrupt records in it are skipped, logged and counted in
``tickwire_spool_records_lost_total``.
Delivery is at least once: a batch whose acknowledgement was lost is sent again (consumers
upsert on the primary key).

When the spool reaches ``spool.max_bytes``: ``on_full: block`` makes ``write()`` wait (the engine
then slows the source down), ``drop_oldest`` drops the oldest spooled records and counts them
in ``tickwire_spool_dropped_total``.

Resume (``last_sequence_ids``): the last trade ids per symbol are read from the end of the
stream's topic (plugins/kafka_resume.py) together with the records still in the spool, which
count as held. Trades lost for good (``write_gaps``) go to the dead-letter topic, the range and
reason in the ``tickwire-reason`` header and the value (JSON).

Secrets come from the environment only: ``sasl_password_env`` and ``ssl_key_password_env`` name
the variables; streams.yaml never holds a password.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections import defaultdict
from pathlib import Path

import msgspec

from tickwire.framework.components import DeadLetter, RunContext, SinkSpec, TradeGap
from tickwire.framework.extras import KAFKA
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.resume import complete_up_to, gap_dead_letter, holes_in
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.spool import Spool, SpoolError, SpoolFull

SINK_TYPE = "kafka"
DEFAULT_DEAD_LETTER_TOPIC = "tickwire.dead-letter"

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "bootstrap_servers": {
            "type": "string",
            "default": "127.0.0.1:9092",
            "description": "Comma-separated host:port list of brokers.",
            "examples": ["${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"],
        },
        "client_id": {"type": "string", "default": "tickwire", "description": "Client id shown in broker logs and quotas."},
        "dead_letter_topic": {
            "type": "string",
            "default": DEFAULT_DEAD_LETTER_TOPIC,
            "description": "Topic receiving dead letters (raw frame as value, reason in headers).",
        },
        "provision": {
            "type": "boolean",
            "default": False,
            "description": "Create missing topics at start, as `tickwire kafka provision` does.",
        },
        "compression": {
            "enum": ["zstd", "lz4", "gzip", "none"],
            "default": "zstd",
            "description": "Batch compression; zstd falls back to lz4, then gzip, when its codec is not installed.",
        },
        "linger_ms": {
            "type": "integer", "minimum": 0, "default": 5,
            "description": "How long the producer waits to fill a record batch (the engine already batches).",
        },
        "max_batch_bytes": {
            "type": "integer", "minimum": 16384, "maximum": 1000000, "default": 524288,
            "description": "Largest record batch per partition and request (below the broker's message.max.bytes).",
        },
        "max_in_flight": {
            "type": "integer", "minimum": 1, "maximum": 64, "default": 8,
            "description": "Batches the engine may hand to this sink before the first is acknowledged: they are enqueued in the producer in order (per key order is kept) and their acknowledgements awaited together. 1 waits for each batch's acknowledgement before sending the next.",
        },
        "send_timeout_ms": {
            "type": "integer", "minimum": 500, "default": 5000,
            "description": "A batch not acknowledged within this time goes to the spool: how long a broker outage blocks ingest.",
        },
        "connect_timeout_ms": {
            "type": "integer", "minimum": 500, "default": 10000,
            "description": "How long start-up waits for a broker before spooling.",
        },
        "close_drain_timeout_ms": {
            "type": "integer", "minimum": 0, "default": 10000,
            "description": "On shutdown, how long to keep replaying the spool; what remains is sent on the next start.",
        },
        "security_protocol": {
            "enum": ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
            "default": "PLAINTEXT",
            "description": "How to talk to the brokers.",
        },
        "sasl_mechanism": {
            "enum": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            "default": "PLAIN",
            "description": "SASL mechanism for SASL_PLAINTEXT and SASL_SSL.",
        },
        "sasl_username": {
            "type": "string",
            "description": "SASL user name; defaults to the KAFKA_SASL_USERNAME environment variable.",
        },
        "sasl_password_env": {
            "type": "string",
            "default": "KAFKA_SASL_PASSWORD",
            "description": "Name of the environment variable holding the SASL password (never the password itself).",
        },
        "ssl_cafile": {"type": "string", "description": "CA bundle (PEM) to verify the brokers; the system's by default."},
        "ssl_certfile": {"type": "string", "description": "Client certificate (PEM) for mutual TLS."},
        "ssl_keyfile": {"type": "string", "description": "Private key (PEM) of the client certificate."},
        "ssl_key_password_env": {
            "type": "string",
            "default": "KAFKA_SSL_KEY_PASSWORD",
            "description": "Name of the environment variable holding the private key's password, if it has one.",
        },
        "ssl_check_hostname": {"type": "boolean", "default": True, "description": "Verify broker host names against certificates."},
        "spool": {
            "type": "object",
            "additionalProperties": False,
            "description": "Local disk spool used while the broker is unreachable.",
            "properties": {
                "directory": {
                    "type": "string",
                    "description": "Where segments live (relative to streams.yaml); default data/spool/<sink id>.",
                },
                "max_bytes": {"type": "integer", "minimum": 1048576, "default": 1073741824, "description": "Spool size limit."},
                "segment_bytes": {"type": "integer", "minimum": 65536, "default": 67108864, "description": "Size of one segment file."},
                "fsync": {
                    "enum": ["always", "batch", "never"],
                    "default": "batch",
                    "description": "fsync after every record, after every batch, or never (survives a crash of tickwire, not of the machine).",
                },
                "on_full": {
                    "enum": ["block", "drop_oldest"],
                    "default": "block",
                    "description": "When full: slow ingest down (block) or drop the oldest spooled records (drop_oldest, counted in tickwire_spool_dropped_total).",
                },
                "replay_batch_records": {"type": "integer", "minimum": 1, "default": 5000, "description": "Records per replayed batch."},
            },
        },
    },
}

# A spooled message: topic, key (-1 = none), header count, headers, then the value.
_HEAD = struct.Struct(">HiB")
_HEADER_NAME = struct.Struct(">H")
_HEADER_VALUE = struct.Struct(">I")

Message = tuple[str, "bytes | None", bytes, list[tuple[str, bytes]]]


class KafkaSinkError(Exception):
    """Configuration or broker problem that retrying will not fix; the message says what to do."""


def encode_spooled(message: Message) -> bytes:
    topic, key, value, headers = message
    topic_bytes = topic.encode()
    parts = [_HEAD.pack(len(topic_bytes), -1 if key is None else len(key), len(headers)), topic_bytes]
    if key is not None:
        parts.append(key)
    for name, header_value in headers:
        name_bytes = name.encode()
        parts += [_HEADER_NAME.pack(len(name_bytes)), name_bytes, _HEADER_VALUE.pack(len(header_value)), header_value]
    parts.append(value)
    return b"".join(parts)


def decode_spooled(data: bytes) -> Message:
    topic_length, key_length, header_count = _HEAD.unpack_from(data)
    offset = _HEAD.size
    topic = data[offset:offset + topic_length].decode()
    offset += topic_length
    key = None
    if key_length >= 0:
        key = data[offset:offset + key_length]
        offset += key_length
    headers = []
    for _ in range(header_count):
        (name_length,) = _HEADER_NAME.unpack_from(data, offset)
        offset += _HEADER_NAME.size
        name = data[offset:offset + name_length].decode()
        offset += name_length
        (value_length,) = _HEADER_VALUE.unpack_from(data, offset)
        offset += _HEADER_VALUE.size
        headers.append((name, data[offset:offset + value_length]))
        offset += value_length
    return topic, key, data[offset:], headers


def pick_compression(wanted: str) -> str | None:
    """The wanted codec if aiokafka can use it here, else the next best one available."""
    from aiokafka import codec

    available = {"zstd": codec.has_zstd(), "lz4": codec.has_lz4(), "gzip": codec.has_gzip()}
    if wanted == "none":
        return None
    for candidate in {"zstd": ["zstd", "lz4", "gzip"], "lz4": ["lz4", "gzip"], "gzip": ["gzip"]}[wanted]:
        if available[candidate]:
            return candidate
    return None


def client_settings(options: dict, who: str) -> dict:
    """aiokafka connection keyword arguments (brokers, SASL, TLS) from the sink's options and
    the environment; shared with `tickwire kafka provision`."""
    settings = {
        "bootstrap_servers": options.get("bootstrap_servers") or "127.0.0.1:9092",
        "client_id": options.get("client_id", "tickwire"),
        "security_protocol": options.get("security_protocol", "PLAINTEXT"),
    }
    protocol = settings["security_protocol"]
    if protocol.startswith("SASL_"):
        username = options.get("sasl_username") or os.environ.get("KAFKA_SASL_USERNAME")
        password_variable = options.get("sasl_password_env", "KAFKA_SASL_PASSWORD")
        password = os.environ.get(password_variable)
        if not username or password is None:
            raise KafkaSinkError(
                f"{who}: security_protocol {protocol} needs a user name (sasl_username or "
                f"KAFKA_SASL_USERNAME) and the password in the environment variable {password_variable}"
            )
        settings.update(sasl_mechanism=options.get("sasl_mechanism", "PLAIN"), sasl_plain_username=username, sasl_plain_password=password)
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        key_password = os.environ.get(options.get("ssl_key_password_env", "KAFKA_SSL_KEY_PASSWORD"))
        try:
            context = create_ssl_context(
                cafile=options.get("ssl_cafile"),
                certfile=options.get("ssl_certfile"),
                keyfile=options.get("ssl_keyfile"),
                password=key_password,
            )
        except (OSError, ValueError) as error:
            raise KafkaSinkError(f"{who}: cannot load the TLS files: {error}") from error
        context.check_hostname = options.get("ssl_check_hostname", True)
        settings["ssl_context"] = context
    return settings


def _is_transient(error: BaseException) -> bool:
    """A broker outage (spool and retry) as opposed to a mistake retrying will not fix."""
    from aiokafka.errors import KafkaError

    if isinstance(error, (asyncio.TimeoutError, OSError)):
        return True
    if isinstance(error, KafkaError):
        from aiokafka.errors import KafkaTimeoutError

        return error.retriable or isinstance(error, KafkaTimeoutError)
    return False


class KafkaSink:
    supports_dead_letters = True
    idempotent = False  # a replayed batch is appended again; consumers upsert on the key

    def __init__(self, name: str, options: dict, ctx: RunContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.log = ctx.log
        self.who = f"sink {name!r} (plugin kafka)"
        self.dead_letter_topic = options.get("dead_letter_topic", DEFAULT_DEAD_LETTER_TOPIC)
        self.send_timeout = options.get("send_timeout_ms", 5000) / 1000
        spool_options = dict(options.get("spool") or {})
        directory = Path(spool_options.get("directory") or Path("data") / "spool" / name)
        if not directory.is_absolute():
            directory = Path(ctx.config_dir) / directory
        self.replay_batch_records = spool_options.get("replay_batch_records", 5000)
        self.spool = Spool(
            directory,
            max_bytes=spool_options.get("max_bytes", 1024**3),
            segment_bytes=spool_options.get("segment_bytes", 64 * 1024**2),
            fsync=spool_options.get("fsync", "batch"),
            on_full=spool_options.get("on_full", "block"),
            log=_StdlibLogAdapter(ctx.log),
        )
        self.producer = None
        self._spooling = False
        self._provision_pending = False  # provision: true, and the topics are not created yet
        self.max_in_flight = int(options.get("max_in_flight", 8))  # read by the engine
        # msgspec, not orjson: orjson returns each value in a 4 KiB allocation, and the values
        # of every write in flight are kept until acknowledged (to spool them if Kafka is away)
        # — at full speed that was ~150 MB of RSS; msgspec allocates what the JSON needs.
        self._encode = msgspec.json.Encoder().encode
        # Writes enqueue into the producer one at a time, in call order (asyncio.Lock is FIFO).
        self._send_lock = asyncio.Lock()
        # Resolved once the latest write and every earlier one settled (acknowledged, spooled or
        # failed): a write that must spool waits for its predecessor's, so the spool keeps order.
        self._settled: asyncio.Future | None = None
        self._drainer: asyncio.Task | None = None
        # Set when the current producer is given up: writes waiting for its acknowledgements
        # spool instead. A new event comes with each new producer.
        self._abandoned = asyncio.Event()
        self._retiring: set[asyncio.Task] = set()  # abandoned producers being stopped
        self._partitions: dict[str, list[int]] = {}
        self._partition_of_key: dict[str, dict[bytes | None, int]] = {}  # topic → key → partition
        self._key_bytes: dict[object, bytes] = {}
        self._stream_headers: dict[str, list[tuple[str, bytes]]] = {}
        self._topics: dict[str, str] = {}
        self._spooled_ids: dict[str, dict[str, set[int]]] = {}  # see _ids_in_spool
        self._dead_letter_topic_exists: bool | None = None  # checked at the first write_gaps
        m = ctx.metrics
        self._spool_bytes = m.spool_bytes.labels(sink=name)
        self._spool_records = m.spool_records.labels(sink=name)
        self._spool_age = m.spool_oldest_age_seconds.labels(sink=name)
        self._spool_dropped = m.spool_dropped.labels(sink=name)
        self._send_errors = m.send_errors.labels(sink=name)
        self._spool_lost = m.spool_records_lost.labels(sink=name)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        for stream in self.ctx.streams:
            if stream.topic is None:
                raise KafkaSinkError(
                    f"{self.who}: stream {stream.name!r} has no Kafka topic; add `topic: {{name: ...}}` "
                    f"under streams.{stream.name} in streams.yaml"
                )
            self._topics[stream.name] = stream.topic.name
            self._stream_headers[stream.name] = [
                ("tickwire-stream", stream.name.encode()),
                ("tickwire-schema", str(stream.schema_id).encode()),
                ("tickwire-schema-version", str(stream.schema_version).encode()),
            ]
        self.compression = pick_compression(self.options.get("compression", "zstd"))
        if self.compression != self.options.get("compression", "zstd"):
            self.log.warning(f"{self.who}: compression {self.options.get('compression', 'zstd')} unavailable, using {self.compression}")
        self._client_settings = client_settings(self.options, self.who)
        try:
            self.spool.open()
        except SpoolError as error:
            raise KafkaSinkError(f"{self.who}: {error}") from error
        if self.spool.lost_records:
            self._spool_lost.inc(self.spool.lost_records)
        self._provision_pending = bool(self.options.get("provision"))
        try:
            await self._provision_if_pending()
            await self._start_producer(self.options.get("connect_timeout_ms", 10000) / 1000)
            await self._check_topics()
        except KafkaSinkError:
            await self._stop_producer()
            raise
        except Exception as error:
            if not _is_transient(error):
                raise KafkaSinkError(f"{self.who}: cannot connect to {self._client_settings['bootstrap_servers']}: {error}") from error
            self.log.error(
                f"{self.who}: Kafka at {self._client_settings['bootstrap_servers']} is unreachable ({error!r}); "
                f"spooling to {self.spool.directory} until it answers"
            )
            await self._stop_producer()
            self._spooling = True
        if self.spool.pending_records():
            self._spooling = True
            self.log.info(f"{self.who}: {self.spool.pending_records()} spooled records from an earlier run will be sent first")
        self._spooled_ids = self._ids_in_spool()  # before the drainer reads it
        if self._spooling:
            self._start_drainer()
        self._update_spool_metrics()

    async def _provision_if_pending(self) -> None:
        """``provision: true``: create missing topics before the first send. With the broker
        away at start this waits for it (the records spool meanwhile): unreachable is an
        outage; a refusal (ACLs, bad settings) is a KafkaSinkError."""
        if not self._provision_pending:
            return
        from tickwire.plugins.kafka_provision import ProvisionError, provision

        try:
            await provision(self.ctx.config, self.options, report=lambda line: self.log.info(f"{self.who}: {line}"))
        except ProvisionError as error:
            if error.unreachable:
                raise ConnectionError(str(error)) from error  # transient: spool and retry
            raise KafkaSinkError(f"{self.who}: {error}") from error
        self._provision_pending = False

    async def close(self) -> None:
        """Replay the spool for up to ``close_drain_timeout_ms``, stop the producer (waiting
        for its acknowledgements at most ``send_timeout_ms``), close the spool. Cancelled (the
        engine's shutdown deadline), it still closes the spool: what is in it is sent next start."""
        try:
            if self._drainer is not None and not self._drainer.done():
                await asyncio.wait({self._drainer}, timeout=self.options.get("close_drain_timeout_ms", 10000) / 1000)
                self._drainer.cancel()
                await asyncio.gather(self._drainer, return_exceptions=True)
            if self.spool.pending_records():
                self.log.warning(
                    f"{self.who}: {self.spool.pending_records()} records stay in the spool {self.spool.directory}; "
                    "they are sent on the next start"
                )
            await self._stop_producer()
            await self._retired()
        finally:
            if self._drainer is not None:
                self._drainer.cancel()
            self.spool.close()
            self._update_spool_metrics()

    # -- writing -----------------------------------------------------------------------------

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        topic = self._topics.get(stream.name)
        if topic is None:
            raise KafkaSinkError(f"{self.who}: stream {stream.name!r} was not declared to this sink at open")
        key_column = stream.kafka_key
        base_headers = self._stream_headers[stream.name]
        dumps = self._encode
        key_bytes = self._key_bytes
        partition_of = self._partition_of_key.get(topic) or {}
        if len(key_bytes) > 100_000:  # a high-cardinality kafka_key: do not grow without bound
            key_bytes.clear()
            partition_of.clear()
        # Grouped by partition here, in the one loop over the records; keys not seen before go
        # to the None group and get their partition in _send_unbounded. Either way all records
        # of a key are in one group, in order.
        groups: dict[int | None, list[Message]] = {}
        # The hot path (bench/kafka_bench.py): normalize stamps every record of one millisecond
        # with the same ingested_at string, and keys repeat (symbols), so the headers list and
        # the key bytes are built once and shared rather than once per record.
        last_ingested = headers = None
        for record in records:
            ingested = record.get("ingested_at", "")
            if ingested is not last_ingested or headers is None:
                last_ingested = ingested
                headers = base_headers + [("tickwire-ingested-at", str(ingested).encode())]
            key = record.get(key_column)
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
            group.append((topic, encoded_key, dumps(record), headers))
        await self._deliver({(topic, partition) if partition is not None else None: group for partition, group in groups.items()})

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        messages = []
        for letter in letters:
            stream = (letter.stream or "").encode()
            headers = [
                ("tickwire-stream", stream),
                ("tickwire-reason", letter.reason.encode()),
                ("tickwire-plugin", letter.plugin.encode()),
                ("tickwire-received-at", letter.received_at.encode()),
            ]
            raw = letter.raw.encode() if isinstance(letter.raw, str) else bytes(letter.raw)
            messages.append((self.dead_letter_topic, stream or None, raw, headers))
        await self._deliver({None: messages})

    # -- resume and lost ranges (optional Sink members) ------------------------------------

    async def last_sequence_ids(self, stream: StreamSpec) -> dict[str, int] | None:
        """Per symbol, the last trade id in the topic or the spool with no hole below it among
        the records read; None when the broker cannot be read and the spool holds nothing."""
        from tickwire.plugins.kafka_resume import read_topic_tail

        if stream.sequence is None or stream.topic is None:
            return None
        ids = {symbol: set(found) for symbol, found in self._spooled_ids.get(stream.name, {}).items()}
        started = time.monotonic()
        try:
            if self.producer is None:
                raise ConnectionError("Kafka is unreachable")
            partitions = sorted(await self.producer.partitions_for(stream.topic.name))
            in_topic, unfinished = await read_topic_tail(self._client_settings, stream, partitions)
        except Exception as error:  # unreachable, no such topic…: what the spool holds is all we know
            self.log.warning(f"{self.who}, stream {stream.name!r}: cannot read the end of topic {stream.topic.name} "
                             f"to resume ({error!r}); {'the spool alone decides' if ids else 'it cannot tell'}")
            return {symbol: complete_up_to(max(found), holes_in(found)) for symbol, found in ids.items()} or None
        for symbol, found in in_topic.items():
            ids.setdefault(symbol, set()).update(found)
        if unfinished:
            self.log.warning(f"{self.who}, stream {stream.name!r}: no record of {', '.join(unfinished)} found near the end "
                             f"of topic {stream.topic.name} in time; they start from the live stream")
        self.log.info(f"{self.who}, stream {stream.name!r}: read the end of topic {stream.topic.name} in "
                      f"{time.monotonic() - started:.2f}s", stream=stream.name)
        return {symbol: complete_up_to(max(found), holes_in(found)) for symbol, found in ids.items()}

    def _ids_in_spool(self) -> dict[str, dict[str, set[int]]]:
        """stream → symbol → trade ids of the records waiting in the spool (read once at open,
        then rewound so the drainer replays them all)."""
        from tickwire.plugins.kafka_resume import _decoder, add_ids

        by_topic = {self._topics[s.name]: s for s in self.ctx.streams if s.sequence is not None and s.name in self._topics}
        if not by_topic or not self.spool.pending_records():
            return {}
        values: dict[str, list[bytes]] = {}
        while True:
            records, _ = self.spool.read(self.replay_batch_records)
            if not records:
                break
            for record in records:
                topic, _key, value, _headers = decode_spooled(record)
                if topic in by_topic:
                    values.setdefault(topic, []).append(value)
        self.spool.rewind()
        out: dict[str, dict[str, set[int]]] = {}
        for topic, topic_values in values.items():
            stream = by_topic[topic]
            add_ids(out.setdefault(stream.name, {}), topic_values, stream.sequence, _decoder(stream.sequence).decode)
        return out

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """Trades lost for good: one record per range on the dead-letter topic. Should that
        topic not exist (it is provisioned with the stream topics), the log line and the
        metric the engine made are the record: waiting for the topic would stall every write."""
        if self._dead_letter_topic_exists is None and self.producer is not None and not self._spooling:
            metadata = await self.producer.client.fetch_all_metadata()
            self._dead_letter_topic_exists = self.dead_letter_topic in metadata.topics()
        if self._dead_letter_topic_exists is False:
            self.log.error(f"{self.who}: topic {self.dead_letter_topic} does not exist; {len(gaps)} lost range(s) not "
                           "recorded in Kafka (run `tickwire kafka provision`)")
            return
        await self.write_dead_letters([gap_dead_letter(gap, f"{SINK_TYPE}:{self.name}") for gap in gaps])

    async def _deliver(self, groups: dict[tuple[str, int] | None, list[Message]]) -> None:
        """Send ``groups`` ((topic, partition) → messages; None: partition not known yet), or spool
        them while Kafka is away. Several calls may run at once (``max_in_flight``): everything up
        to the lock below runs without an await, so calls take their turn in call order."""
        if not any(groups.values()):
            return
        previous = self._settled
        settled = self._settled = asyncio.get_running_loop().create_future()
        try:
            await self._deliver_in_turn(groups, previous)
        finally:
            if previous is None or previous.done():
                settled.set_result(None)
            else:  # settled means "this one and every earlier one": chain it
                previous.add_done_callback(lambda _: settled.done() or settled.set_result(None))

    async def _deliver_in_turn(self, groups, previous: asyncio.Future | None) -> None:
        if not self._spooling:
            producer = None
            try:
                async with self._send_lock:  # FIFO: producer order = call order; no cancel inside
                    if not self._spooling:
                        producer, abandoned = self.producer, self._abandoned
                        futures = await self._enqueue(producer, groups)
                if producer is not None:
                    await self._acknowledged(futures, abandoned)
                    return
            except Exception as error:
                # Already spooling (another write failed first, or this producer was abandoned):
                # whatever this error is, it is that outage; spool in turn below.
                if not self._spooling and producer is self.producer:
                    if not _is_transient(error):
                        raise KafkaSinkError(f"{self.who}: Kafka refused a batch: {error!r}") from error
                    self._send_errors.inc()
                    self.log.warning(
                        f"{self.who}: batch not acknowledged within {self.send_timeout:g}s ({error!r}); "
                        f"spooling to {self.spool.directory} until Kafka is back"
                    )
                    # From now on every write spools; the producer is abandoned so the writes
                    # still in flight spool now rather than at their own timeouts.
                    self._spooling = True
                    self._abandon_producer()
                    self._start_drainer()
                elif not self._spooling:
                    self._spooling = True
                    self._start_drainer()
        # Spool only after every earlier write settled: they were enqueued before this one, so
        # their records must be in Kafka or in the spool first. Group after group: a key's
        # records are all in one group, so its order is kept.
        if previous is not None and not previous.done():
            await previous
        await self._spool([message for group in groups.values() for message in group])

    async def _spool(self, messages: list[Message]) -> None:
        payloads = [encode_spooled(message) for message in messages]
        waiting_since = None
        while True:
            try:
                dropped = self.spool.append(payloads)
                break
            except SpoolFull:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    self.log.warning(f"{self.who}: spool {self.spool.directory} is full; ingest waits for Kafka (on_full: block)")
                await asyncio.sleep(0.2)
            except SpoolError as error:
                raise KafkaSinkError(f"{self.who}: {error}") from error
        if dropped:
            self._spool_dropped.inc(dropped)
        self._update_spool_metrics()

    # -- Kafka -------------------------------------------------------------------------------

    async def _start_producer(self, timeout: float) -> None:
        from aiokafka import AIOKafkaProducer

        timeout_ms = int(self.send_timeout * 1000)
        producer = AIOKafkaProducer(
            **self._client_settings,
            acks="all",
            enable_idempotence=True,
            compression_type=self.compression,
            linger_ms=self.options.get("linger_ms", 5),
            max_batch_size=self.options.get("max_batch_bytes", 524288),
            max_request_size=max(1048576, self.options.get("max_batch_bytes", 524288)),
            # Batches expire when the broker is away this long: then we spool them.
            request_timeout_ms=timeout_ms,
            retry_backoff_ms=100,
            metadata_max_age_ms=60000,
        )
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except BaseException:
            await self._stop(producer)
            raise
        self.producer = producer

    async def _stop_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await self._stop(producer)

    async def _stop(self, producer) -> None:
        """aiokafka's ``stop()``: it sends what it holds, or waits for it to expire
        (``request_timeout_ms`` = ``send_timeout_ms``); bounded a little beyond that."""
        try:
            await asyncio.wait_for(producer.stop(), self.send_timeout + 5)
        except asyncio.TimeoutError:
            self.log.warning(f"{self.who}: the Kafka producer did not stop within {self.send_timeout + 5:g}s; left behind")
        except Exception as error:  # stopping a producer whose broker is gone: nothing more to do
            self.log.debug(f"{self.who}: stopping the Kafka producer: {error!r}")

    def _abandon_producer(self) -> None:
        """Give the current producer up (Kafka is away and its records are being spooled):
        writes waiting for its acknowledgements stop waiting (they spool), and it is stopped in
        the background; :meth:`_retired` waits for that."""
        producer, self.producer = self.producer, None
        self._abandoned.set()
        self._abandoned = asyncio.Event()
        if producer is not None:
            task = asyncio.create_task(self._stop(producer), name=f"tickwire-kafka-retire-{self.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retired(self) -> None:
        """Until every abandoned producer stopped: its batches can no longer reach Kafka, so
        a replay of the spool cannot be overtaken by one of them."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _acknowledged(self, futures: list[asyncio.Future], abandoned: asyncio.Event) -> None:
        """Until the broker acknowledged every future (an error of one raises), for at most
        ``send_timeout`` + 1 s (TimeoutError), or until the producer is abandoned
        (ConnectionError)."""
        acks = asyncio.gather(*futures)
        acks.add_done_callback(_retrieve_exception)
        given_up = asyncio.ensure_future(abandoned.wait())
        try:
            done, _ = await asyncio.wait({acks, given_up}, timeout=self.send_timeout + 1,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            given_up.cancel()
            acks.cancel()  # no-op when done; else it only stops our waiting (aiokafka shields its batches)
        if acks in done:
            acks.result()
            return
        if given_up in done:
            raise ConnectionError("the Kafka producer was abandoned (another write timed out)")
        raise asyncio.TimeoutError(f"not acknowledged within {self.send_timeout + 1:g}s")

    async def _check_topics(self) -> None:
        metadata = await self.producer.client.fetch_all_metadata()
        known = metadata.topics()
        wanted = set(self._topics.values())
        if self.ctx.config is not None and _dead_letters_go_here(self.ctx.config, self.name):
            wanted.add(self.dead_letter_topic)
        missing = sorted(wanted - known)
        if missing:
            raise KafkaSinkError(
                f"{self.who}: topic(s) {', '.join(missing)} do not exist on {self._client_settings['bootstrap_servers']}; "
                "run `tickwire kafka provision` or set `provision: true` on the sink"
            )

    async def _send(self, groups: dict[tuple[str, int] | None, list[Message]]) -> None:
        """Send in order and wait until the broker acknowledged every message (spool replay)."""
        async with self._send_lock:
            abandoned = self._abandoned
            futures = await self._enqueue(self.producer, groups)
        await self._acknowledged(futures, abandoned)

    async def _enqueue(self, producer, groups: dict[tuple[str, int] | None, list[Message]]) -> list[asyncio.Future]:
        """Hand the messages to the producer, per partition in order; returns the futures of
        their acknowledgements. Called under ``_send_lock``; not wrapped in a timeout (aiokafka
        bounds its metadata and queue waits by request_timeout_ms = send_timeout_ms) so it is
        never cancelled half way through a send_batch."""
        if producer is None:
            raise ConnectionError("no producer: Kafka was unreachable")
        by_partition: dict[tuple[str, int], list[Message]] = defaultdict(list)
        for where, group in groups.items():
            if where is not None:
                by_partition[where].extend(group)
        for message in groups.get(None, ()):  # a new copy: the caller may still spool ``groups``
            topic, key = message[0], message[1]
            partition = self._partition_of_key.get(topic, {}).get(key)
            if partition is None:
                partition = await self._partition_for(producer, topic, key)
            by_partition[(topic, partition)].append(message)
        futures = []
        for (topic, partition), group in by_partition.items():
            batch = producer.create_batch()
            for _topic, key, value, headers in group:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(_retrieved(await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise KafkaSinkError(f"{self.who}: a message of {len(value)} bytes is larger than max_batch_bytes")
            futures.append(_retrieved(await producer.send_batch(batch, topic, partition=partition)))
        return futures

    async def _partition_for(self, producer, topic: str, key: bytes | None) -> int:
        """Kafka's default partitioner (murmur2 of the key), cached per key: a symbol always
        lands on the same partition, which keeps its records in order."""
        from aiokafka.partitioner import murmur2

        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(await producer.partitions_for(topic))
        if key is None:
            return partitions[0]
        partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        self._partition_of_key.setdefault(topic, {})[key] = partition
        return partition

    # -- spool replay ------------------------------------------------------------------------

    def _start_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=f"tickwire-kafka-drain-{self.name}")

    async def _drain(self) -> None:
        """Replay the spool in order until it is empty, then switch back to direct sends."""
        backoff = 0.5
        replayed = 0
        started = time.monotonic()
        while True:
            self._update_spool_metrics()
            if self.producer is None:
                try:
                    await self._retired()  # the abandoned producer's batches must be gone first
                    await self._provision_if_pending()
                    await self._start_producer(self.send_timeout)
                except KafkaSinkError as error:  # Kafka answers, and refuses: say so, keep spooling
                    self.log.error(f"{error}; records stay in the spool, retrying in {backoff:g}s")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                except Exception as error:
                    self.log.debug(f"{self.who}: Kafka still unreachable: {error!r}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            records, position = self.spool.read(self.replay_batch_records)
            if not records and self._settled is not None and not self._settled.done():
                # A write still in flight may yet spool: its records go before any later
                # write's, so wait for it, then look again.
                await asyncio.shield(self._settled)
                continue
            if not records:
                # Nothing left, every write settled, and no await since the read: the next
                # write goes straight out.
                self._spooling = False
                self._update_spool_metrics()
                self.log.info(f"{self.who}: Kafka is back; replayed {replayed} spooled records in {time.monotonic() - started:.1f}s")
                return
            try:
                await self._send({None: [decode_spooled(record) for record in records]})
            except Exception as error:
                self.spool.rewind()
                self._send_errors.inc()
                if not _is_transient(error):
                    self.log.error(f"{self.who}: Kafka refused spooled records ({error!r}); retrying in {backoff:g}s")
                self._abandon_producer()  # a fresh producer id: sequence numbers start over
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.spool.ack(position)
            replayed += len(records)
            backoff = 0.5

    def _update_spool_metrics(self) -> None:
        self._spool_bytes.set(self.spool.pending_bytes())
        self._spool_records.set(self.spool.pending_records())
        oldest = self.spool.oldest_written_at() if self.spool.pending_records() else None
        self._spool_age.set(0 if oldest is None else max(0.0, time.time() - oldest))


def _retrieve_exception(future: asyncio.Future) -> None:
    # An acknowledgement we stopped waiting for (abandoned, timed out) still fails later;
    # reading its exception keeps asyncio from logging "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _retrieved(future: asyncio.Future) -> asyncio.Future:
    """``future`` (an acknowledgement from aiokafka), its outcome read whenever it comes."""
    future.add_done_callback(_retrieve_exception)
    return future


def _dead_letters_go_here(config, sink_name: str) -> bool:
    """Whether some profile sends its dead letters to this sink (then that topic must exist)."""
    profiles = (getattr(config, "data", None) or {}).get("profiles") or {}
    return any(isinstance(block, dict) and block.get("dead_letter") == sink_name for block in profiles.values())


class _StdlibLogAdapter:
    """The spool logs with %-style arguments (stdlib logging); structlog loggers take one message."""

    def __init__(self, log):
        self._log = log

    def info(self, message, *args):
        self._log.info(message % args if args else message)

    def warning(self, message, *args):
        self._log.warning(message % args if args else message)


KAFKA_SINK = SinkSpec(
    name=SINK_TYPE,
    factory=KafkaSink,
    description="Kafka topics per stream (acks=all, idempotent) with a disk spool for broker outages",
    config_schema=OPTIONS_SCHEMA,
    supports_dead_letters=True,
    requires=KAFKA,
)


@hookimpl
def tickwire_register_sinks(register):
    register(KAFKA_SINK)
