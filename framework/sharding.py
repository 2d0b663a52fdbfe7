"""Sharding: N processes (or machines) split the symbols between them, ``--shard I/N``.

A symbol belongs to shard ``crc32(SYMBOL) mod N``. The hash is fixed (zlib's CRC-32 of the
upper-case symbol, not Python's ``hash()``, which is salted per process), so every process,
on every machine and in every release, puts a symbol on the same shard, and a symbol never
moves when others are listed or delisted: only N decides. The shards of one N partition the
symbols exactly — each symbol is on one shard and one only.

``tickwire run --shard I/N`` and ``tickwire symbols --shard I/N`` take it; so does the
environment variable ``TICKWIRE_SHARD`` (the flag wins). Shards count from 0: ``0/2`` and
``1/2`` are the two halves. See docs/scaling.md for sizing N.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Iterable

import click

SHARD_ENV = "TICKWIRE_SHARD"
_SHARD_TEXT = re.compile(r"^\s*(\d{1,4})\s*/\s*(\d{1,4})\s*$")
MAX_SHARDS = 1024


def shard_of(symbol: str, count: int) -> int:
    """The shard (0 … count-1) that ``symbol`` belongs to among ``count`` shards."""
    return zlib.crc32(symbol.upper().encode("ascii")) % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; ``Shard(0, 1)`` (:data:`WHOLE`) is everything."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"shard count {self.count} is not between 1 and {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index counts from 0 and must be below {self.count}")

    def owns(self, symbol: str) -> bool:
        """Whether ``symbol`` is this shard's."""
        return self.count == 1 or shard_of(symbol, self.count) == self.index

    def select(self, symbols: Iterable[str]) -> list[str]:
        """This shard's symbols, in the order given."""
        return [s for s in symbols if self.owns(s)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard(0, 1)


def parse_shard(text: str) -> Shard:
    """``"1/4"`` → ``Shard(1, 4)``; ValueError with a reason for anything else."""
    match = _SHARD_TEXT.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a shard: write I/N, e.g. 0/2 (shard I of N, counting from 0)")
    return Shard(int(match.group(1)), int(match.group(2)))


class ShardParam(click.ParamType):
    """``--shard I/N`` (click reads ``TICKWIRE_SHARD`` when the flag is absent)."""

    name = "I/N"

    def convert(self, value, param, ctx):
        if isinstance(value, Shard):
            return value
        try:
            return parse_shard(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def shard_option(command):
    """The ``--shard I/N`` option (envvar ``TICKWIRE_SHARD``), as ``shard`` (a :class:`Shard`
    or None)."""
    return click.option(
        "--shard", "shard", type=ShardParam(), envvar=SHARD_ENV, default=None, show_envvar=True,
        help="Take only this shard's symbols: shard I of N (from 0), by a stable hash of the symbol "
             "(docs/scaling.md).",
    )(command)
