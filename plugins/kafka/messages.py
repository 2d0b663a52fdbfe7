"""A Kafka message as the sink handles it — ``(topic, key, value, headers)`` — and its framing in
the disk spool (framework/spool.py stores opaque bytes).

Spooled message: topic length u16, key length i32 (-1 = no key), header count u8, the topic,
the key, per header (name length u16, name, value length u32, value), then the value; big endian.
"""

from __future__ import annotations

import struct

Message = tuple[str, "bytes | None", bytes, list[tuple[str, bytes]]]
# (topic, partition) → its messages, in order; None: partition not known yet (see Producer.enqueue)
Groups = dict["tuple[str, int] | None", list[Message]]

_HEAD = struct.Struct(">HiB")
_HEADER_NAME = struct.Struct(">H")
_HEADER_VALUE = struct.Struct(">I")


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
