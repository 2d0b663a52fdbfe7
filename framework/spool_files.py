"""The files of a spool directory (framework/spool.py): segment files and the ``acked`` file.

A segment is named by a growing number (``00000000000000000001.seg``) and holds framed records
(framework/spool_format.py); :class:`Segment` is what the spool knows of one, and walks its
records past the damaged ranges found at open. The ``acked`` file holds the :class:`Position`
before which everything is acknowledged, replaced write-then-rename so a crash leaves the old or
the new position, never half of one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tickwire.framework.spool_format import CURRENT, Layout

SEGMENT_SUFFIX = ".seg"
ACK_FILE = "acked"


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the spool: a segment's number and a byte offset inside it."""

    segment: int
    offset: int


@dataclass(slots=True)
class Segment:
    """One segment file: its valid size, its record count and its layout (format version)."""

    number: int
    path: Path
    size: int  # valid bytes
    records: int
    layout: Layout = CURRENT
    # damaged ranges found at open, start → end: readers jump over them (offsets stay as written)
    holes: dict[int, int] | None = None

    def records_from(self, reader: BinaryIO, offset: int) -> int:
        """How many records start at or after ``offset`` (a record boundary)."""
        header, length_at = self.layout.header, self.layout.length_at
        count = 0
        while offset < self.size:
            if self.holes and offset in self.holes:
                offset = self.holes[offset]
                continue
            reader.seek(offset)
            offset += header.size + header.unpack(reader.read(header.size))[length_at]
            count += 1
        return count


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:020d}{SEGMENT_SUFFIX}"


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segment files in ``directory``, oldest first."""
    return sorted(int(p.stem) for p in directory.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())


def load_ack(directory: Path, log: logging.Logger) -> Position:
    """The acknowledged position; the start when there is none, or when it cannot be read
    (then everything is replayed: delivery is at least once)."""
    try:
        text = (directory / ACK_FILE).read_text().split()
        return Position(int(text[0]), int(text[1]))
    except FileNotFoundError:
        return Position(0, 0)
    except (ValueError, IndexError):
        log.warning("spool %s: unreadable ack file, replaying everything", directory)
        return Position(0, 0)


def save_ack(directory: Path, position: Position, fsync: bool) -> None:
    # Write-then-rename: a crash leaves the old or the new position, never half of one.
    temporary = directory / (ACK_FILE + ".tmp")
    with open(temporary, "w") as ack_file:
        ack_file.write(f"{position.segment} {position.offset}\n")
        if fsync:
            ack_file.flush()
            os.fsync(ack_file.fileno())
    os.replace(temporary, directory / ACK_FILE)


def fsync_directory(directory: Path) -> None:
    """Make a new file's name in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
