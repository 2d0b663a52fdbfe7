"""What the ``kafka`` sink already holds of a sequenced stream (trade ids per symbol), so a restart
resumes there: the newest records of the stream's topic, plus what still waits in the sink's spool
(:func:`ids_in_spool`, read once at open; those records count as held).

Kafka has no index by symbol, so :func:`read_topic_tail` reads each partition backwards, in
chunks of ``chunk`` records from its end:

* a stream with a symbol **list**: until every listed symbol the default partitioner sends to
  that partition was seen (or the partition's beginning, or the deadline);
* a stream with a **selector** (``symbols: {select: …}``, resolved by the source only after the
  resume points are read, so nobody knows the symbols yet): the newest ``scan`` records of every
  partition (TAIL_SCAN_RECORDS), and every symbol found there resumes. A symbol with no record
  among them (one that has not traded for that long) starts from the live stream, like a new
  listing; the engine's log names the symbols that resume, and the source logs the others.

Every symbol found is reported, listed or not: the engine keeps those of its shard, the source
those it subscribes. Only the sequence and partition fields of each value are decoded.
Measured with bench/kafka_resume_bench.py (local broker, 1M records of 3 symbols in 3
partitions): 0.40 s including the consumer's start, one
5,000-record chunk per partition; with a 4th symbol whose only records are the 100 oldest, its
partition (~333k records) is read to the start in 6.6 s (~50k records/s). The deadline
(TAIL_DEADLINE_SECONDS) bounds a topic far larger than that.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import msgspec

from tickwire.framework.resume import complete_up_to, holes_in
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.spool import Spool
from tickwire.plugins.kafka.messages import decode_spooled
from tickwire.plugins.kafka.producer import Producer, partition_of

TAIL_CHUNK_RECORDS = 5000
TAIL_DEADLINE_SECONDS = 30.0
# Records read back per partition when the symbols are chosen by a selector: 10 chunks, about
# 1 s per partition at the measured ~50k records/s.
TAIL_SCAN_RECORDS = 50_000


class TopicTail(NamedTuple):
    """What :func:`read_topic_tail` found."""

    ids: dict[str, set[int]]
    """symbol → trade ids read from the newest records."""
    unfinished: list[str]
    """Listed symbols not found in time though their partition was not read to its beginning."""
    bounded: list[int]
    """Selector streams: the partitions whose reading stopped at ``scan`` records, not at their
    beginning (a symbol whose last record is older than that is not in ``ids``)."""
    late: list[int]
    """Selector streams: the partitions the deadline cut short (read less than ``scan`` back)."""


def held_decoder(sequence: tuple[str, str]) -> msgspec.json.Decoder:
    """Decodes just the sequence (int) and partition (str) fields of a record value."""
    seq, part = sequence
    held = msgspec.defstruct("Held", [(seq, int | None, None), (part, str | None, None)], forbid_unknown_fields=False)
    return msgspec.json.Decoder(held)


def add_ids(out: dict[str, set[int]], values, sequence: tuple[str, str], decode) -> None:
    seq, part = sequence
    for value in values:
        try:
            held = decode(value)
        except msgspec.DecodeError:
            continue  # not a record of ours: nothing to resume from
        symbol, tid = getattr(held, part), getattr(held, seq)
        if symbol is not None and tid is not None:
            out.setdefault(symbol, set()).add(tid)


async def read_topic_tail(
    client_settings: dict, stream: StreamSpec, partitions: list[int], *, chunk: int = TAIL_CHUNK_RECORDS,
    deadline_s: float = TAIL_DEADLINE_SECONDS, scan: int = TAIL_SCAN_RECORDS,
) -> TopicTail:
    """The newest records of ``stream``'s topic (see the module doc: until the listed symbols
    are seen, or ``scan`` records per partition for a selector stream). ``partitions``: the
    topic's, as the producer knows them."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = stream.topic.name
    decode = held_decoder(stream.sequence).decode
    deadline = time.monotonic() + deadline_s
    consumer = AIOKafkaConsumer(**client_settings, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await asyncio.wait_for(consumer.start(), deadline_s)
    tail = TopicTail({}, [], [], [])
    listed = stream.selector is None
    try:
        partitions = sorted(partitions)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        for tp in tps:
            wanted = {s for s in stream.symbols if partition_of(s.encode(), partitions) == tp.partition}
            floor = begin[tp] if listed else max(begin[tp], end[tp] - scan)
            top = end[tp]
            while top > floor and not (listed and wanted <= tail.ids.keys()):
                if time.monotonic() > deadline:
                    tail.unfinished.extend(sorted(wanted - tail.ids.keys()))
                    if not listed:
                        tail.late.append(tp.partition)
                    break
                low = max(floor, top - chunk)
                add_ids(tail.ids, await read_range(consumer, tp, low, top, chunk, deadline), stream.sequence, decode)
                top = low
            if not listed and top == floor > begin[tp]:
                tail.bounded.append(tp.partition)
    finally:
        await consumer.stop()
    return tail


async def read_range(consumer, tp, low: int, top: int, chunk: int, deadline: float) -> list[bytes]:
    """The values at offsets ``low`` … ``top``-1 of ``tp`` (fewer when the deadline passes)."""
    consumer.seek(tp, low)
    values = []
    position = low
    while position < top:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=chunk)
        messages = batch.get(tp, [])
        if not messages:
            if time.monotonic() > deadline:
                break
            position = await consumer.position(tp)  # e.g. past aborted or compacted offsets
            continue
        values += [m.value for m in messages if m.offset < top]
        position = messages[-1].offset + 1
    return values


def ids_in_spool(spool: Spool, streams_by_topic: dict[str, StreamSpec], batch_records: int) -> dict[str, dict[str, set[int]]]:
    """stream → symbol → trade ids of the records of ``streams_by_topic`` (sequenced streams, by
    topic) waiting in ``spool``; the spool is rewound after, so the drainer replays them all."""
    if not streams_by_topic or not spool.pending_records():
        return {}
    values: dict[str, list[bytes]] = {}
    while True:
        records, _ = spool.read(batch_records)
        if not records:
            break
        for record in records:
            topic, _key, value, _headers = decode_spooled(record)
            if topic in streams_by_topic:
                values.setdefault(topic, []).append(value)
    spool.rewind()
    out: dict[str, dict[str, set[int]]] = {}
    for topic, topic_values in values.items():
        stream = streams_by_topic[topic]
        add_ids(out.setdefault(stream.name, {}), topic_values, stream.sequence, held_decoder(stream.sequence).decode)
    return out


async def last_sequence_ids(producer: Producer, stream: StreamSpec, spooled: dict[str, set[int]], who: str, log) -> dict[str, int] | None:
    """Per symbol, the last trade id in ``stream``'s topic or the spool (``spooled``) with no hole
    below it among the records read; None when the broker cannot be read and the spool holds
    nothing of the stream."""
    ids = {symbol: set(found) for symbol, found in spooled.items()}
    started = time.monotonic()
    try:
        if producer.current is None:
            raise ConnectionError("Kafka is unreachable")
        partitions = await producer.partitions_for(stream.topic.name)
        tail = await read_topic_tail(producer.client_settings, stream, partitions)
    except Exception as error:  # unreachable, no such topic…: what the spool holds is all we know
        log.warning(f"{who}, stream {stream.name!r}: cannot read the end of topic {stream.topic.name} "
                    f"to resume ({error!r}); {'the spool alone decides' if ids else 'it cannot tell'}")
        return {symbol: complete_up_to(max(found), holes_in(found)) for symbol, found in ids.items()} or None
    for symbol, found in tail.ids.items():
        ids.setdefault(symbol, set()).update(found)
    if tail.unfinished:
        log.warning(f"{who}, stream {stream.name!r}: no record of {', '.join(tail.unfinished)} found near the end "
                    f"of topic {stream.topic.name} in time; they start from the live stream")
    if tail.late:
        log.warning(f"{who}, stream {stream.name!r}: partition(s) {', '.join(map(str, tail.late))} of topic "
                    f"{stream.topic.name} not read {TAIL_SCAN_RECORDS} records back within {TAIL_DEADLINE_SECONDS:g}s; "
                    "a symbol with no record in what was read starts from the live stream")
    bound = (f"; the symbols are chosen by a selector, so the newest {TAIL_SCAN_RECORDS} records of partition(s) "
             f"{', '.join(map(str, tail.bounded))} were read: a symbol with no record among them starts from the live stream"
             if tail.bounded else "")
    log.info(f"{who}, stream {stream.name!r}: read the end of topic {stream.topic.name} in "
             f"{time.monotonic() - started:.2f}s: {len(tail.ids)} symbol(s) found{bound}", stream=stream.name)
    return {symbol: complete_up_to(max(found), holes_in(found)) for symbol, found in ids.items()}
