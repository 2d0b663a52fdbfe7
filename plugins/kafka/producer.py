"""The sink's aiokafka producer: sends in call order, waits for acknowledgements, and is given
up when Kafka is away.

A batch is split per partition into record batches handed to the producer whole
(``send_batch``); the acknowledgements of a write are awaited together. Writes enqueue under a
FIFO lock, in call order, so a key's records keep their order, and await their
acknowledgements outside it (``max_in_flight`` writes at once).

Abandoning: the first write not acknowledged within ``send_timeout_ms`` gives the producer up.
The writes still waiting for its acknowledgements stop waiting (they spool), and it is stopped
in the background with aiokafka's public ``stop()`` (its unsent batches expire after
``send_timeout_ms``). Every acknowledgement future we were handed has its outcome retrieved, so
nothing is left for asyncio to complain about.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from tickwire.plugins.kafka.client import KafkaSinkError
from tickwire.plugins.kafka.messages import Groups, Message


class Producer:
    """The current aiokafka producer (None while Kafka is away) and what outlives it: the key →
    partition cache, the send order, the producers being stopped."""

    def __init__(self, name: str, who: str, client_settings: dict[str, Any], producer_settings: dict[str, Any],
                 send_timeout: float, log):
        self.name = name
        self.who = who
        self.client_settings = client_settings  # the brokers, SASL, TLS: shared with consumers
        self._producer_settings = producer_settings
        self.send_timeout = send_timeout
        self.log = log
        self.current = None  # an AIOKafkaProducer, started
        # Writes enqueue into the producer one at a time, in call order (asyncio.Lock is FIFO).
        self.lock = asyncio.Lock()
        # Set when the current producer is given up: writes waiting for its acknowledgements
        # spool instead. A new event comes with each new producer.
        self.abandoned = asyncio.Event()
        self._retiring: set[asyncio.Task] = set()  # abandoned producers being stopped
        self._partitions: dict[str, list[int]] = {}
        self.partition_of_key: dict[str, dict[bytes | None, int]] = {}  # topic → key → partition

    async def start(self, timeout: float) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**self.client_settings, **self._producer_settings)
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except BaseException:
            await self._stop(producer)
            raise
        self.current = producer

    async def stop(self) -> None:
        producer, self.current = self.current, None
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

    def abandon(self) -> None:
        """Give the current producer up (Kafka is away and its records are being spooled):
        writes waiting for its acknowledgements stop waiting (they spool), and it is stopped in
        the background; :meth:`retired` waits for that."""
        producer, self.current = self.current, None
        self.abandoned.set()
        self.abandoned = asyncio.Event()
        if producer is not None:
            task = asyncio.create_task(self._stop(producer), name=f"tickwire-kafka-retire-{self.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def retired(self) -> None:
        """Until every abandoned producer stopped: its batches can no longer reach Kafka, so
        a replay of the spool cannot be overtaken by one of them."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def topics_on_broker(self) -> set[str]:
        """The topics the brokers know (the current producer's metadata)."""
        metadata = await self.current.client.fetch_all_metadata()
        return metadata.topics()

    async def partitions_for(self, topic: str) -> list[int]:
        return sorted(await self.current.partitions_for(topic))

    async def send(self, groups: Groups) -> None:
        """Send in order and wait until the broker acknowledged every message (spool replay)."""
        async with self.lock:
            abandoned = self.abandoned
            futures = await self.enqueue(self.current, groups)
        await self.acknowledged(futures, abandoned)

    async def acknowledged(self, futures: list[asyncio.Future], abandoned: asyncio.Event) -> None:
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

    async def enqueue(self, producer, groups: Groups) -> list[asyncio.Future]:
        """Hand the messages to ``producer``, per partition in order; returns the futures of
        their acknowledgements. Called under :attr:`lock`; not wrapped in a timeout (aiokafka
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
            partition = self.partition_of_key.get(topic, {}).get(key)
            if partition is None:
                partition = await self._partition_for(producer, topic, key)
            by_partition[(topic, partition)].append(message)
        futures = []
        for (topic, partition), group in by_partition.items():
            batch = producer.create_batch()
            append = batch.append  # the hot loop: one bound method per batch, not per message
            for _topic, key, value, headers in group:
                if append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(_retrieved(await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                    append = batch.append
                    if append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise KafkaSinkError(f"{self.who}: a message of {len(value)} bytes is larger than max_batch_bytes")
            futures.append(_retrieved(await producer.send_batch(batch, topic, partition=partition)))
        return futures

    async def _partition_for(self, producer, topic: str, key: bytes | None) -> int:
        """Kafka's default partitioner (murmur2 of the key), cached per key: a symbol always
        lands on the same partition, which keeps its records in order."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(await producer.partitions_for(topic))
        if key is None:
            return partitions[0]
        partition = partition_of(key, partitions)
        self.partition_of_key.setdefault(topic, {})[key] = partition
        return partition


def partition_of(key: bytes, partitions: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key) over a topic's ``partitions``."""
    from aiokafka.partitioner import murmur2

    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def _retrieve_exception(future: asyncio.Future) -> None:
    # An acknowledgement we stopped waiting for (abandoned, timed out) still fails later;
    # reading its exception keeps asyncio from logging "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _retrieved(future: asyncio.Future) -> asyncio.Future:
    """``future`` (an acknowledgement from aiokafka), its outcome read whenever it comes."""
    future.add_done_callback(_retrieve_exception)
    return future
