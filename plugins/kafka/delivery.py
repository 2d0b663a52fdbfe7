"""Send, or spool while Kafka is away, and replay the spool once it is back.

When the broker is unreachable, a batch that is not acknowledged within ``send_timeout_ms`` goes
to the local disk spool (framework/spool.py), and so does every later batch until the spool is
empty again: a write then returns as soon as its batch is on disk, so the engine's queue keeps
moving and the WebSocket keeps being read. With several writes in flight the spool keeps their
order too: the first failure switches to spooling and abandons the producer (the writes still
waiting for its acknowledgements spool too), and a write goes to the spool only once every
earlier write has settled (acknowledged or spooled).

The drainer, a background task, replays the spool in order once the broker answers and the
abandoned producer is gone, and switches back to direct sends only when every write has
settled. A spool left by a killed process is replayed on the next start; corrupt records in it
are skipped, logged and counted in ``tickwire_spool_records_lost_total``. Delivery is at least
once: a batch whose acknowledgement was lost is sent again (consumers upsert on the key).

When the spool reaches ``spool.max_bytes``: ``on_full: block`` makes the write wait (the engine
then slows the source down), ``drop_oldest`` drops the oldest spooled records and counts them in
``tickwire_spool_dropped_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tickwire.framework.backoff import Backoff
from tickwire.framework.metrics import Metrics
from tickwire.framework.spool import Spool, SpoolError, SpoolFull
from tickwire.plugins.kafka.client import KafkaSinkError, is_transient
from tickwire.plugins.kafka.messages import Groups, Message, decode_spooled, encode_spooled
from tickwire.plugins.kafka.producer import Producer

SPOOL_FULL_POLL_SECONDS = 0.2  # on_full: block — how often a waiting write looks for room


class Delivery:
    """The sink's writes: straight to :class:`Producer`, or to ``spool`` while Kafka is away.
    ``reconnect`` starts a new producer (after provisioning, if still pending) for the drainer;
    it raises :class:`KafkaSinkError` when Kafka answers and refuses."""

    def __init__(self, name: str, who: str, producer: Producer, spool: Spool, replay_batch_records: int,
                 metrics: Metrics, log, reconnect: Callable[[], Awaitable[None]]):
        self.who = who
        self.name = name
        self.producer = producer
        self.spool = spool
        self.replay_batch_records = replay_batch_records
        self.log = log
        self._reconnect = reconnect
        self.spooling = False
        # Resolved once the latest write and every earlier one settled (acknowledged, spooled or
        # failed): a write that must spool waits for its predecessor's, so the spool keeps order.
        self._settled: asyncio.Future | None = None
        self._drainer: asyncio.Task | None = None
        self._spool_bytes = metrics.spool_bytes.labels(sink=name)
        self._spool_records = metrics.spool_records.labels(sink=name)
        self._spool_age = metrics.spool_oldest_age_seconds.labels(sink=name)
        self._spool_dropped = metrics.spool_dropped.labels(sink=name)
        self._spool_lost = metrics.spool_records_lost.labels(sink=name)
        self.send_errors = metrics.send_errors.labels(sink=name)

    def open_spool(self) -> None:
        """Open the spool (recovering what an earlier run left), counting corrupt records lost."""
        try:
            self.spool.open()
        except SpoolError as error:
            raise KafkaSinkError(f"{self.who}: {error}") from error
        if self.spool.lost_records:
            self._spool_lost.inc(self.spool.lost_records)

    def start_spooling(self) -> None:
        """Kafka is away (or the spool holds an earlier run's records): spool every write until
        the drainer has replayed the spool."""
        self.spooling = True
        self._start_drainer()

    async def close(self, drain_timeout: float) -> None:
        """Replay the spool for up to ``drain_timeout`` seconds, stop the producer (waiting for
        its acknowledgements at most ``send_timeout_ms``), close the spool. Cancelled (the
        engine's shutdown deadline), it still closes the spool: what is in it is sent next start."""
        try:
            if self._drainer is not None and not self._drainer.done():
                await asyncio.wait({self._drainer}, timeout=drain_timeout)
                self._drainer.cancel()
                await asyncio.gather(self._drainer, return_exceptions=True)
            if self.spool.pending_records():
                self.log.warning(
                    f"{self.who}: {self.spool.pending_records()} records stay in the spool {self.spool.directory}; "
                    "they are sent on the next start"
                )
            await self.producer.stop()
            await self.producer.retired()
        finally:
            if self._drainer is not None:
                self._drainer.cancel()
            self.spool.close()
            self.update_metrics()

    # -- writes ----------------------------------------------------------------------------------

    async def deliver(self, groups: Groups) -> None:
        """Send ``groups``, or spool them while Kafka is away. Several calls may run at once
        (``max_in_flight``): everything up to the producer's lock runs without an await, so calls
        take their turn in call order."""
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

    async def _deliver_in_turn(self, groups: Groups, previous: asyncio.Future | None) -> None:
        if not self.spooling:
            link = self.producer
            producer = None
            try:
                async with link.lock:  # FIFO: producer order = call order; no cancel inside
                    if not self.spooling:
                        producer, abandoned = link.current, link.abandoned
                        futures = await link.enqueue(producer, groups)
                if producer is not None:
                    await link.acknowledged(futures, abandoned)
                    return
            except Exception as error:
                # Already spooling (another write failed first, or this producer was abandoned):
                # whatever this error is, it is that outage; spool in turn below.
                if not self.spooling and producer is link.current:
                    if not is_transient(error):
                        raise KafkaSinkError(f"{self.who}: Kafka refused a batch: {error!r}") from error
                    self.send_errors.inc()
                    self.log.warning(
                        f"{self.who}: batch not acknowledged within {link.send_timeout:g}s ({error!r}); "
                        f"spooling to {self.spool.directory} until Kafka is back"
                    )
                    # From now on every write spools; the producer is abandoned so the writes
                    # still in flight spool now rather than at their own timeouts.
                    self.spooling = True
                    link.abandon()
                    self._start_drainer()
                elif not self.spooling:
                    self.start_spooling()
        # Spool only after every earlier write settled: they were enqueued before this one, so
        # their records must be in Kafka or in the spool first. Group after group: a key's
        # records are all in one group, so its order is kept.
        if previous is not None and not previous.done():
            await previous
        await self._spool([message for group in groups.values() for message in group])

    async def _spool(self, messages: list[Message]) -> None:
        payloads = [encode_spooled(message) for message in messages]
        waiting = False
        while True:
            try:
                dropped = self.spool.append(payloads)
                break
            except SpoolFull:
                if not waiting:
                    waiting = True
                    self.log.warning(f"{self.who}: spool {self.spool.directory} is full; ingest waits for Kafka (on_full: block)")
                await asyncio.sleep(SPOOL_FULL_POLL_SECONDS)
            except SpoolError as error:
                raise KafkaSinkError(f"{self.who}: {error}") from error
        if dropped:
            self._spool_dropped.inc(dropped)
        self.update_metrics()

    # -- replay ----------------------------------------------------------------------------------

    def _start_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=f"tickwire-kafka-drain-{self.name}")

    async def _drain(self) -> None:
        """Replay the spool in order until it is empty, then switch back to direct sends."""
        unreachable = Backoff(initial=0.5, maximum=5.0)  # Kafka away, or a replayed batch failed
        refused = Backoff(initial=0.5, maximum=30.0)  # Kafka answers and refuses: a person must act
        replayed = 0
        started = time.monotonic()
        while True:
            self.update_metrics()
            if self.producer.current is None:
                try:
                    await self.producer.retired()  # the abandoned producer's batches must be gone first
                    await self._reconnect()
                except KafkaSinkError as error:  # Kafka answers, and refuses: say so, keep spooling
                    delay = refused.next_delay()
                    self.log.error(f"{error}; records stay in the spool, retrying in {delay:.1f}s")
                    await asyncio.sleep(delay)
                    continue
                except Exception as error:
                    self.log.debug(f"{self.who}: Kafka still unreachable: {error!r}")
                    await asyncio.sleep(unreachable.next_delay())
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
                self.spooling = False
                self.update_metrics()
                self.log.info(f"{self.who}: Kafka is back; replayed {replayed} spooled records in {time.monotonic() - started:.1f}s")
                return
            try:
                await self.producer.send({None: [decode_spooled(record) for record in records]})
            except Exception as error:
                self.spool.rewind()
                self.send_errors.inc()
                delay = unreachable.next_delay()
                if not is_transient(error):
                    self.log.error(f"{self.who}: Kafka refused spooled records ({error!r}); retrying in {delay:.1f}s")
                self.producer.abandon()  # a fresh producer id: sequence numbers start over
                await asyncio.sleep(delay)
                continue
            self.spool.ack(position)
            replayed += len(records)
            unreachable.reset()
            refused.reset()

    def update_metrics(self) -> None:
        self._spool_bytes.set(self.spool.pending_bytes())
        self._spool_records.set(self.spool.pending_records())
        oldest = self.spool.oldest_written_at() if self.spool.pending_records() else None
        self._spool_age.set(0 if oldest is None else max(0.0, time.time() - oldest))
