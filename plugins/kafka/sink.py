"""Sink ``kafka``: publish normalized records to one Kafka topic per stream, and dead letters to
the dead-letter topic, without losing anything while the broker is away.

The parts, one job each: :mod:`.encoding` (records → keyed messages with headers, the hot path),
:mod:`.producer` (acks=all and idempotence, sends in call order, giving a producer up),
:mod:`.delivery` (send, or spool during an outage and replay after), :mod:`.dead_letters`
(dead letters and lost trade ranges), :mod:`.resume` (where a restart resumes). This module
wires them to the engine's Sink contract.

``write()`` returns once the broker acknowledged every record of the batch (or, during an
outage, once the batch is in the disk spool), which is what the engine counts as written.
``max_in_flight`` (default 8) such writes run at once: each is enqueued into the producer in
call order, so a key's records keep their order, and the acknowledgements are awaited outside
it. Without that the ingest rate is one batch per acknowledgement round trip (linger + zstd +
acks=all). Compression is zstd (lz4, then gzip, when the codec library is missing).

Secrets come from the environment only: ``sasl_password_env`` and ``ssl_key_password_env`` name
the variables; streams.yaml never holds a password.
"""

from __future__ import annotations

from pathlib import Path

from tickwire.framework.components import DeadLetter, RunContext, SinkSpec, TradeGap
from tickwire.framework.extras import KAFKA
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.spool import Spool
from tickwire.plugins.kafka import resume
from tickwire.plugins.kafka.client import KafkaSinkError, client_settings, is_transient, pick_compression, producer_settings
from tickwire.plugins.kafka.dead_letters import DeadLetterTopic
from tickwire.plugins.kafka.delivery import Delivery
from tickwire.plugins.kafka.encoding import RecordEncoder
from tickwire.plugins.kafka.options import OPTIONS_SCHEMA, complete
from tickwire.plugins.kafka.producer import Producer
from tickwire.plugins.kafka.provision import ProvisionError, provision
from tickwire.plugins.kafka.topics import SINK_TYPE, topics_of


class KafkaSink:
    supports_dead_letters = True
    idempotent = False  # a replayed batch is appended again; consumers upsert on the key

    def __init__(self, name: str, options: dict, ctx: RunContext):
        options = complete(options)  # a no-op for the engine's complete options; fills them for direct calls
        self.name = name
        self.options = options
        self.ctx = ctx
        self.log = ctx.log
        self.who = f"sink {name!r} (plugin kafka)"
        self.max_in_flight = options["max_in_flight"]  # read by the engine
        self.compression = pick_compression(options["compression"])
        if self.compression != options["compression"]:
            self.log.warning(f"{self.who}: compression {options['compression']} unavailable, using {self.compression}")
        send_timeout = options["send_timeout_ms"] / 1000
        self.producer = Producer(name, self.who, client_settings(options, self.who),
                                 producer_settings(options, self.compression), send_timeout, ctx.log)
        self.encoder = RecordEncoder(self.who, self.producer.partition_of_key)
        spool_options = options["spool"]
        directory = Path(spool_options.get("directory") or Path("data") / "spool" / name)
        if not directory.is_absolute():
            directory = Path(ctx.config_dir) / directory
        spool = Spool(directory, max_bytes=spool_options["max_bytes"], segment_bytes=spool_options["segment_bytes"],
                      fsync=spool_options["fsync"], on_full=spool_options["on_full"], log=_StdlibLogAdapter(ctx.log))
        self.delivery = Delivery(name, self.who, self.producer, spool, spool_options["replay_batch_records"],
                                 ctx.metrics, ctx.log, reconnect=self._reconnect)
        self.dead_letters = DeadLetterTopic(name, self.who, options["dead_letter_topic"], self.delivery, ctx.log)
        self._provision_pending = False  # provision: true, and the topics are not created yet
        self._spooled_ids: dict[str, dict[str, set[int]]] = {}  # stream → symbol → ids, at open

    @property
    def spooling(self) -> bool:
        """Whether writes go to the spool (Kafka is away, or the spool is being replayed)."""
        return self.delivery.spooling

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        for stream in self.ctx.streams:
            self.encoder.declare(stream)
        spool = self.delivery.spool
        self.delivery.open_spool()
        self._provision_pending = self.options["provision"]
        bootstrap = self.producer.client_settings["bootstrap_servers"]
        try:
            await self._provision_if_pending()
            await self.producer.start(self.options["connect_timeout_ms"] / 1000)
            await self._check_topics()
        except KafkaSinkError:
            await self.producer.stop()
            raise
        except Exception as error:
            if not is_transient(error):
                raise KafkaSinkError(f"{self.who}: cannot connect to {bootstrap}: {error}") from error
            self.log.error(f"{self.who}: Kafka at {bootstrap} is unreachable ({error!r}); "
                           f"spooling to {spool.directory} until it answers")
            await self.producer.stop()
            self.delivery.spooling = True
        if spool.pending_records():
            self.delivery.spooling = True
            self.log.info(f"{self.who}: {spool.pending_records()} spooled records from an earlier run will be sent first")
        sequenced = {self.encoder.topics[s.name]: s for s in self.ctx.streams if s.sequence is not None}
        self._spooled_ids = resume.ids_in_spool(spool, sequenced, self.delivery.replay_batch_records)  # before the drainer reads it
        if self.delivery.spooling:
            self.delivery.start_spooling()
        self.delivery.update_metrics()

    async def _check_topics(self) -> None:
        wanted = set(self.encoder.topics.values())
        if self.ctx.dead_letters:
            wanted.add(self.dead_letters.topic)
        missing = sorted(wanted - await self.producer.topics_on_broker())
        if missing:
            raise KafkaSinkError(
                f"{self.who}: topic(s) {', '.join(missing)} do not exist on {self.producer.client_settings['bootstrap_servers']}; "
                "run `tickwire kafka provision` or set `provision: true` on the sink"
            )

    async def _provision_if_pending(self) -> None:
        """``provision: true``: create the missing topics of this sink's streams and the
        dead-letter topic before the first send. With the broker away at start this waits for
        it (the records spool meanwhile): unreachable is an outage; a refusal (ACLs, bad
        settings) is a KafkaSinkError."""
        if not self._provision_pending:
            return
        wanted = topics_of(self.ctx.streams, self.dead_letters.topic)
        try:
            await provision(self.producer.client_settings, wanted, report=lambda line: self.log.info(f"{self.who}: {line}"))
        except ProvisionError as error:
            if error.unreachable:
                raise ConnectionError(str(error)) from error  # transient: spool and retry
            raise KafkaSinkError(f"{self.who}: {error}") from error
        self._provision_pending = False

    async def _reconnect(self) -> None:
        """For the drainer, once Kafka may be back: provision if still pending, new producer."""
        await self._provision_if_pending()
        await self.producer.start(self.producer.send_timeout)

    async def close(self) -> None:
        await self.delivery.close(self.options["close_drain_timeout_ms"] / 1000)

    # -- writing -----------------------------------------------------------------------------

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        await self.delivery.deliver(self.encoder.messages(stream, records))

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None:
        await self.dead_letters.write(letters)

    # -- resume and lost ranges (optional Sink members) ------------------------------------

    async def last_sequence_ids(self, stream: StreamSpec) -> dict[str, int] | None:
        """Per symbol, the last trade id in the topic or the spool with no hole below it among
        the records read; None when the broker cannot be read and the spool holds nothing."""
        if stream.sequence is None or stream.topic is None:
            return None
        return await resume.last_sequence_ids(self.producer, stream, self._spooled_ids.get(stream.name, {}), self.who, self.log)

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """Trades lost for good: one record per range on the dead-letter topic."""
        await self.dead_letters.write_gaps(gaps)


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
