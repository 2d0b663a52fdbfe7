"""A local disk spool: an ordered, durable queue of byte records in append-only segment files.

A sink that cannot reach its store (Kafka while the broker is down) writes batches here and
replays them, in order, once the store is back. The spool is generic: a record is opaque bytes.

On disk, in the spool directory (framework/spool_files.py)::

    00000000000000000001.seg   segment files, named by a growing sequence number
    00000000000000000002.seg
    acked                      "<segment> <offset>": everything before it is acknowledged

Records are framed with a marker and a CRC (framework/spool_format.py). :meth:`Spool.open`
checks every record: a damaged range is skipped, and a torn end truncated, at the cost of the
records in it only; :attr:`Spool.lost_records` sums those for a metric (the Kafka sink's
``tickwire_spool_records_lost_total``).

Delivery is at least once: records replayed but not yet acknowledged when the process dies are
replayed again on the next start. Fully acknowledged segments are deleted.

``fsync`` policy: ``always`` syncs after every record, ``batch`` after every :meth:`append`
call (one sink batch), ``never`` leaves it to the OS (survives a process crash, not a power cut).

When the spool holds ``max_bytes``, ``on_full`` decides: ``block`` makes :meth:`append` raise
:class:`SpoolFull` (the caller waits and retries, which pushes back on its producer);
``drop_oldest`` deletes the oldest segments, unacknowledged records and all, and returns how
many records were dropped so the caller can count them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tickwire.framework.spool_files import (
    Position, Segment, fsync_directory, load_ack, save_ack, segment_numbers, segment_path,
)
from tickwire.framework.spool_format import (  # noqa: F401  the format's names, re-exported
    CURRENT, LEGACY_HEADER, RECORD_HEADER, RECORD_MAGIC, SEGMENT_HEADER, frame_records, recover_segment,
)

FSYNC_POLICIES = ("always", "batch", "never")
ON_FULL_POLICIES = ("block", "drop_oldest")


class SpoolError(Exception):
    """The spool directory is unusable (permissions, a foreign file, a bad setting)."""


class SpoolFull(SpoolError):
    """``on_full: block`` and the spool holds ``max_bytes``: retry after some replay."""


class Spool:
    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = 1024**3,
        segment_bytes: int = 64 * 1024**2,
        fsync: str = "batch",
        on_full: str = "block",
        log: logging.Logger | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise SpoolError(f"spool fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        if on_full not in ON_FULL_POLICIES:
            raise SpoolError(f"spool on_full must be one of {', '.join(ON_FULL_POLICIES)}, not {on_full!r}")
        if segment_bytes > max_bytes:
            raise SpoolError(f"spool segment_bytes ({segment_bytes}) is larger than max_bytes ({max_bytes})")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.on_full = on_full
        self.log = log or logging.getLogger(__name__)
        self._segments: list[Segment] = []  # oldest first; the last one is written to
        self._acked = Position(0, 0)
        self._read = Position(0, 0)
        self._pending = 0  # unacknowledged records
        # (end position, records read since the ack position) of each read() not yet acked,
        # so ack() knows how many records it covers without rescanning the segment.
        self._outstanding: list[tuple[Position, int]] = []
        self._write_fd: int | None = None
        self._read_file = None
        self._read_file_segment = -1
        self._opened = False
        self.lost_records = 0  # corrupt records skipped by open() (at least one per damaged range)
        self.lost_bytes = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory or recover what a previous process left, dropping a torn last
        record. After this, :meth:`read` starts at the oldest unacknowledged record."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {self.directory}: {error}") from error
        self._acked = load_ack(self.directory, self.log)
        for number in segment_numbers(self.directory):
            path = segment_path(self.directory, number)
            if number < self._acked.segment or path.stat().st_size == 0:
                path.unlink()  # acknowledged before the crash (deletion did not happen), or empty
                continue
            segment = self._recover_segment(number, path)
            size = segment.size
            self._segments.append(segment)
            if number == self._acked.segment and self._acked.offset > size:
                # The ack was saved but the data behind it was lost (fsync: never + power cut).
                self._acked = Position(number, size)
        if self._segments and self._acked.segment < self._segments[0].number:
            self._acked = Position(self._segments[0].number, 0)
        self._read = self._acked
        self._pending = sum(self._unacked_records_in(segment) for segment in self._segments)
        self._opened = True
        if self.pending_records():
            self.log.info(
                "spool %s recovered %d unacknowledged records (%d bytes)",
                self.directory, self.pending_records(), self.pending_bytes(),
            )

    def close(self) -> None:
        if self._write_fd is not None:
            if self.fsync != "never":
                os.fsync(self._write_fd)
            os.close(self._write_fd)
            self._write_fd = None
        self._close_reader()
        self._opened = False

    # -- writing -----------------------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> int:
        """Append records durably (per the fsync policy), in order. Returns how many older
        records were dropped to make room (``on_full: drop_oldest``), else 0."""
        if not payloads:
            return 0
        frames = frame_records(payloads, time.time_ns() // 1_000_000)
        incoming = sum(len(frame) for frame in frames)
        dropped = self._make_room(incoming)
        # Keep each call's records together in as few writes as possible, rolling segments at
        # record boundaries only.
        pending: list[bytes] = []
        pending_size = 0
        for frame in frames:
            segment = self._writable_segment()
            if segment.size + pending_size + len(frame) > self.segment_bytes and (segment.size + pending_size) > CURRENT.start:
                self._write(pending, pending_size)
                pending, pending_size = [], 0
                self._roll_segment()
            pending.append(frame)
            pending_size += len(frame)
            if self.fsync == "always":
                self._write(pending, pending_size)
                pending, pending_size = [], 0
        self._write(pending, pending_size)
        if self.fsync == "batch":
            os.fsync(self._write_fd)
        self._pending += len(frames)
        return dropped

    def _write(self, frames: list[bytes], size: int) -> None:
        if not frames:
            return
        segment = self._segments[-1]
        data = b"".join(frames)
        written = 0
        while written < len(data):
            written += os.write(self._write_fd, data[written:])
        segment.size += size
        segment.records += len(frames)
        if self.fsync == "always":
            os.fsync(self._write_fd)

    def _writable_segment(self) -> Segment:
        if not self._segments or self._write_fd is None:
            if self._segments and self._segments[-1].layout is CURRENT:
                segment = self._segments[-1]
                self._write_fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
            else:  # none yet, or an old-format one: new records go to a new-format segment
                self._roll_segment()
        return self._segments[-1]

    def _roll_segment(self) -> None:
        if self._write_fd is not None:
            if self.fsync != "never":
                os.fsync(self._write_fd)
            os.close(self._write_fd)
        number = self._segments[-1].number + 1 if self._segments else max(1, self._acked.segment)
        path = segment_path(self.directory, number)
        self._write_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.write(self._write_fd, SEGMENT_HEADER)
        self._segments.append(Segment(number, path, len(SEGMENT_HEADER), 0))
        if self.fsync != "never":
            fsync_directory(self.directory)  # the new file's name must survive a crash too
        if self._acked.segment < self._segments[0].number:
            self._acked = Position(self._segments[0].number, 0)
        if self._read < self._acked:
            self._read = self._acked

    def _make_room(self, incoming: int) -> int:
        if incoming > self.max_bytes:
            raise SpoolError(f"a batch of {incoming} bytes does not fit in a spool of max_bytes {self.max_bytes}")
        if self.total_bytes() + incoming <= self.max_bytes:
            return 0
        if self.on_full == "block":
            raise SpoolFull(f"spool {self.directory} is full ({self.total_bytes()} of {self.max_bytes} bytes)")
        dropped = 0
        while self._segments and self.total_bytes() + incoming > self.max_bytes:
            oldest = self._segments[0]
            if len(self._segments) == 1:
                # Everything sits in the active segment: start a new one so the old can go.
                self._roll_segment()
            dropped += self._unacked_records_in(oldest)
            self._delete_segment(oldest)
            first = self._segments[0].number
            self._acked = max(self._acked, Position(first, 0))
            # Reads in flight from the dropped segment can no longer be acknowledged.
            self._read = max(self._read, self._acked)
            self._outstanding.clear()
            save_ack(self.directory, self._acked, self.fsync != "never")
        self._pending -= dropped
        if dropped:
            self.log.warning("spool %s full: dropped the %d oldest records", self.directory, dropped)
        return dropped

    # -- reading and acknowledging -----------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 16 * 1024**2) -> tuple[list[bytes], Position]:
        """The next records after those already read (in append order), and the position to
        pass to :meth:`ack` once they are safely delivered. Empty when all was read."""
        records: list[bytes] = []
        size = 0
        position = self._read
        already_read = self._outstanding[-1][1] if self._outstanding else 0
        for segment in self._segments:
            if segment.number < position.segment:
                continue
            if segment.number > position.segment:
                position = Position(segment.number, 0)
            layout = segment.layout
            unpack, header_size, length_at = layout.header.unpack, layout.header.size, layout.length_at
            holes = segment.holes
            reader = self._reader_for(segment)
            offset = max(position.offset, layout.start)
            reader.seek(offset)
            while offset < segment.size and len(records) < max_records and size < max_bytes:
                if holes and offset in holes:
                    offset = holes[offset]
                    reader.seek(offset)
                    continue
                length = unpack(reader.read(header_size))[length_at]
                records.append(reader.read(length))
                offset += header_size + length
                size += length
            position = Position(segment.number, offset)
            if len(records) >= max_records or size >= max_bytes:
                break
        self._read = position
        if records:
            self._outstanding.append((position, already_read + len(records)))
        return records, position

    def rewind(self) -> None:
        """Forget unacknowledged reads: the next :meth:`read` starts again at the oldest
        unacknowledged record (after a failed delivery)."""
        self._read = self._acked
        self._outstanding.clear()

    def ack(self, position: Position) -> None:
        """Everything before ``position`` is delivered: delete the segments it covers."""
        if position <= self._acked:
            return
        covered = None
        for index, (end, count) in enumerate(self._outstanding):
            if end == position:
                covered = count
                self._outstanding = [(e, c - count) for e, c in self._outstanding[index + 1:]]
                break
        if covered is None:
            raise SpoolError(f"ack({position}) does not match the end of a read() of spool {self.directory}")
        self._pending -= covered
        self._acked = position
        while self._segments and self._segments[0].number < position.segment:
            self._delete_segment(self._segments[0])
        if self._pending == 0 and self._segments:
            # Empty spool: remove the last segment too, so an idle spool takes no disk.
            last = self._segments[-1]
            self._delete_segment(last)
            self._acked = Position(last.number + 1, 0)
            self._read = self._acked
        save_ack(self.directory, self._acked, self.fsync != "never")

    # -- state -------------------------------------------------------------------------------

    def pending_records(self) -> int:
        return self._pending

    def pending_bytes(self) -> int:
        total = 0
        for segment in self._segments:
            if segment.number == self._acked.segment:
                total += segment.size - max(self._acked.offset, segment.layout.start)
            elif segment.number > self._acked.segment:
                total += segment.size - segment.layout.start
        return total

    def total_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    def oldest_written_at(self) -> float | None:
        """Unix time the oldest unacknowledged record was spooled, or None when empty."""
        for segment in self._segments:
            if segment.number < self._acked.segment:
                continue
            offset = self._acked.offset if segment.number == self._acked.segment else 0
            offset = max(offset, segment.layout.start)
            if segment.holes:
                offset = segment.holes.get(offset, offset)
            if offset >= segment.size:
                continue
            reader = self._reader_for(segment)
            reader.seek(offset)
            layout = segment.layout
            return layout.header.unpack(reader.read(layout.header.size))[layout.stamp_at] / 1000
        return None

    def __len__(self) -> int:
        return self.pending_records()

    # -- internals ---------------------------------------------------------------------------

    def _recover_segment(self, number: int, path: Path) -> Segment:
        found = recover_segment(path, self.log, self.directory)
        self.lost_records += found.lost_records
        self.lost_bytes += found.lost_bytes
        return Segment(number, path, found.size, found.records, found.layout, found.holes)

    def _unacked_records_in(self, segment: Segment) -> int:
        if segment.number < self._acked.segment:
            return 0
        if segment.number > self._acked.segment or self._acked.offset <= segment.layout.start:
            return segment.records
        # Partly acknowledged: count what lies after the ack offset.
        return segment.records_from(self._reader_for(segment), self._acked.offset)

    def _reader_for(self, segment: Segment):
        if self._read_file_segment != segment.number:
            self._close_reader()
            self._read_file = open(segment.path, "rb", buffering=256 * 1024)
            self._read_file_segment = segment.number
        return self._read_file

    def _close_reader(self) -> None:
        if self._read_file is not None:
            self._read_file.close()
        self._read_file = None
        self._read_file_segment = -1

    def _delete_segment(self, segment: Segment) -> None:
        if self._read_file_segment == segment.number:
            self._close_reader()
        if self._segments and segment is self._segments[-1] and self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        segment.path.unlink(missing_ok=True)
        self._segments.remove(segment)
