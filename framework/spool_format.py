"""The disk spool's record format: how records are framed in a segment file, and the recovery
scan that checks every record of a segment when a spool is opened (framework/spool.py keeps the
segment files and the acknowledgements; this module only reads and frames bytes).

A segment starts with ``TWSPOOL\\x02`` (8 bytes); each record in it is framed as
``magic u32 (f5 54 57 02) | length u32 | crc32 u32 | written_at_ms u64 | payload``, big endian;
the CRC covers ``written_at_ms``, ``length`` and the payload. A bad record (a flipped bit, a torn
write, garbage) does not cost the records after it: :func:`recover_segment` resynchronises on the
next place where the magic starts a record whose length fits and whose CRC matches, and returns
the damaged ranges as holes to skip (the bytes are not rewritten, so acknowledged offsets stay
valid). It logs, per damaged range, the segment, the offset, the bytes skipped and the records
lost (the record markers in them, at least one). Damage that runs to the end of a segment — a
process killed with SIGKILL mid-write, or a power cut with ``fsync: never`` — is truncated, so
appending can continue, and logged as a torn record at the end.

Segments written before this framing (no ``TWSPOOL`` header: ``length | crc32 | written_at_ms
| payload``) are still read as they are; they have no marker to resynchronise on, so their
recovery truncates at the first bad record and logs the bytes discarded. New records always go
to a new-format segment.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

SEGMENT_HEADER = b"TWSPOOL\x02"  # first bytes of a segment in the current format
RECORD_MAGIC = b"\xf5TW\x02"  # 0xf5 never occurs in UTF-8 text: rare inside JSON payloads
RECORD_HEADER = struct.Struct(">4sIIQ")  # magic, length, crc32, written_at_ms
LEGACY_HEADER = struct.Struct(">IIQ")  # segments without SEGMENT_HEADER: length, crc32, written_at_ms
# A length beyond this cannot be a record we wrote: treat it as garbage from a torn write.
MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Layout:
    """How records are framed in a segment: the header struct and where its fields are."""

    header: struct.Struct
    length_at: int  # index of the length in the unpacked header
    stamp_at: int  # index of written_at_ms
    start: int  # offset of the first record


CURRENT = Layout(RECORD_HEADER, 1, 3, len(SEGMENT_HEADER))
LEGACY = Layout(LEGACY_HEADER, 0, 2, 0)


def frame_records(payloads: list[bytes], written_at_ms: int) -> list[bytes]:
    """Each payload framed as a current-format record (header + payload), all stamped alike."""
    stamp_crc = zlib.crc32(written_at_ms.to_bytes(8, "big"))
    crc32, pack = zlib.crc32, RECORD_HEADER.pack
    frames = []
    for payload in payloads:
        length = len(payload)
        frames.append(pack(RECORD_MAGIC, length, crc32(payload, crc32(length.to_bytes(4, "big"), stamp_crc)), written_at_ms) + payload)
    return frames


@dataclass(slots=True)
class Recovered:
    """What :func:`recover_segment` found in a segment file (already truncated to ``size``)."""

    size: int  # valid bytes
    records: int
    layout: Layout
    # damaged ranges, start → end: readers jump over them (offsets stay as written)
    holes: dict[int, int] | None
    lost_records: int  # at least one per damaged range
    lost_bytes: int


def recover_segment(path: Path, log: logging.Logger, spool: Path) -> Recovered:
    """Check every record of the segment at ``path``: skip damaged ranges (resynchronising on
    the next valid record), truncate damage that runs to the end; log (naming the ``spool``
    directory and the segment) and count what was lost."""
    data = path.read_bytes()
    if not data.startswith(SEGMENT_HEADER):
        if _legacy_record_end(data, 0) is not None:
            return _recover_legacy_segment(path, data, log, spool)
        log.warning("spool %s: %s: damaged segment header; reading its records anyway", spool, path.name)
    size = len(data)
    offset = CURRENT.start
    records = lost_records = lost_bytes = 0
    holes: dict[int, int] = {}
    # the loop of _valid_record_end inlined, with the CRC of a batch's shared stamp reused:
    # this runs over every spooled record when a spool is replayed after a restart
    view, unpack_from, header_size, crc32 = memoryview(data), RECORD_HEADER.unpack_from, RECORD_HEADER.size, zlib.crc32
    last_stamp = last_stamp_crc = None
    while offset < size:
        if offset + header_size <= size:
            magic, length, crc, stamp = unpack_from(data, offset)
            end = offset + header_size + length
            if magic == RECORD_MAGIC and end <= size and length <= MAX_RECORD_BYTES:
                if stamp != last_stamp:
                    last_stamp, last_stamp_crc = stamp, crc32(stamp.to_bytes(8, "big"))
                if crc32(view[offset + header_size:end], crc32(length.to_bytes(4, "big"), last_stamp_crc)) == crc:
                    offset = end
                    records += 1
                    continue
        resume = _next_valid_record(data, offset + 1)
        lost = max(1, data.count(RECORD_MAGIC, offset, size if resume is None else resume))
        lost_records += lost
        if resume is None:
            lost_bytes += size - offset
            log.warning(
                "spool %s: %s: %d damaged bytes at the end, from offset %d (%d record(s) lost): a torn "
                "write (the process was killed mid-write) or corruption; truncated there",
                spool, path.name, size - offset, offset, lost,
            )
            _truncate(path, offset)
            size = offset
            break
        lost_bytes += resume - offset
        log.warning(
            "spool %s: %s: corrupt record at offset %d: skipped %d bytes to the next valid record at "
            "offset %d (%d record(s) lost); the records after it are kept",
            spool, path.name, offset, resume - offset, resume, lost,
        )
        holes[offset] = resume
        offset = resume
    return Recovered(size, records, CURRENT, holes or None, lost_records, lost_bytes)


def _recover_legacy_segment(path: Path, data: bytes, log: logging.Logger, spool: Path) -> Recovered:
    """A segment from before record markers: valid records up to the first bad one; what
    follows cannot be told apart from garbage, so it is truncated (and said so)."""
    size = len(data)
    offset = records = 0
    while (end := _legacy_record_end(data, offset)) is not None:
        offset = end
        records += 1
    if offset == size:
        return Recovered(offset, records, LEGACY, None, 0, 0)
    log.warning(
        "spool %s: %s (old format, no record markers): bad record at offset %d; the %d bytes from "
        "there to the end are discarded (at least 1 record lost; this format cannot resynchronise)",
        spool, path.name, offset, size - offset,
    )
    _truncate(path, offset)
    return Recovered(offset, records, LEGACY, None, 1, size - offset)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as segment:
        segment.truncate(size)
        os.fsync(segment.fileno())


def _valid_record_end(data: bytes, offset: int) -> int | None:
    """Where the record at ``offset`` ends, if a whole valid record starts there."""
    if data[offset:offset + 4] != RECORD_MAGIC or offset + RECORD_HEADER.size > len(data):
        return None
    _magic, length, crc, written_at = RECORD_HEADER.unpack_from(data, offset)
    end = offset + RECORD_HEADER.size + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    check = zlib.crc32(length.to_bytes(4, "big"), zlib.crc32(written_at.to_bytes(8, "big")))
    if zlib.crc32(memoryview(data)[offset + RECORD_HEADER.size:end], check) != crc:
        return None
    return end


def _next_valid_record(data: bytes, start: int) -> int | None:
    """The offset of the first valid record at or after ``start``, or None."""
    offset = data.find(RECORD_MAGIC, start)
    while offset >= 0:
        if _valid_record_end(data, offset) is not None:
            return offset
        offset = data.find(RECORD_MAGIC, offset + 1)
    return None


def _legacy_record_end(data: bytes, offset: int) -> int | None:
    """Like :func:`_valid_record_end`, for a record of an old-format segment."""
    if offset + LEGACY_HEADER.size > len(data):
        return None
    length, crc, written_at = LEGACY_HEADER.unpack_from(data, offset)
    end = offset + LEGACY_HEADER.size + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    if zlib.crc32(memoryview(data)[offset + LEGACY_HEADER.size:end], zlib.crc32(written_at.to_bytes(8, "big"))) != crc:
        return None
    return end
