"""Derived streams inside ``tickwire run``: the contract between the engine and a derived-kind
plugin (``derived: … kind: candles`` in streams.yaml; the Spark job computes the same blocks).

A plugin registers a :class:`~tickwire.framework.components.DerivedSpec` whose ``name`` is the
``kind``; its factory gets the derived stream's name, its block (defaults filled in) and the
source :class:`StreamSpec`, and returns a :class:`Deriver`. The engine then

* routes every valid record of the source stream, after its transforms, through
  :meth:`Deriver.observe`; what it returns are records of :attr:`Deriver.stream`, which go to
  the source stream's sinks whose spec says ``stores_derived`` (SQLite, PostgreSQL; not Kafka:
  on the Kafka profile the Spark job computes them). Sinks write a :class:`DerivedStreamSpec`
  with an upsert on its key, so the last record of a key wins;
* hands a sink's derived batch to the sink queue *before* the source batch it follows from, so
  every committed source record has its derived update committed too (a crash can leave a
  derived row ahead of its source rows, never behind);
* at start, before the sources run, gives :meth:`Deriver.recover` the stored source records
  of the last :attr:`Deriver.recovery_span_ms` (sink method ``tail_records``), so windows that
  were open at the last stop are rebuilt from what is stored, and re-emits what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tickwire.framework.schemas import Column, StreamSpec


@dataclass
class DerivedStreamSpec(StreamSpec):
    """A stream computed by tickwire, shaped like a declared one for the sinks and the engine:
    its columns and key are the deriver's, not a JSON Schema's, and it is written by upsert."""

    derived_columns: list[Column] = field(default_factory=list)
    derived_key: list[str] = field(default_factory=list)
    time_column: str | None = None
    source_stream: str = ""
    upsert = True  # the sinks' ON CONFLICT … DO UPDATE: a derived row is recomputed, not appended

    @property
    def columns(self) -> list[Column]:  # type: ignore[override]
        return self.derived_columns

    @property
    def primary_key(self) -> list[str]:
        return list(self.derived_key)

    @property
    def event_time(self) -> str | None:
        return self.time_column

    @property
    def sequence(self) -> None:
        return None


class Deriver(Protocol):
    """What a derived-kind factory returns (see the module docstring)."""

    stream: DerivedStreamSpec
    time_column: str  # the source column whose recent records recover() needs
    recovery_span_ms: int  # how far back from the newest stored value of time_column

    def observe(self, record: dict) -> list[dict] | None:
        """One valid source record in; the derived records it changes out (None: nothing)."""

    def recover(self, records: list[dict]) -> list[dict]:
        """Rebuild the state from stored source records; return the derived records to rewrite."""


def derived_stream(name: str, table: str, columns: list[Column], key: list[str], time_column: str | None,
                   source: StreamSpec) -> DerivedStreamSpec:
    """The :class:`DerivedStreamSpec` of a derived block computed from ``source``."""
    return DerivedStreamSpec(
        name=name, source=source.source, channel="", symbols=list(source.symbols), schema_path=source.schema_path,
        schema={"title": f"derived from {source.name}"}, table=table, topic=None, transforms=[], sinks=[],
        derived_columns=list(columns), derived_key=list(key), time_column=time_column, source_stream=source.name,
    )


def keep_last_per_key(stream: StreamSpec, records: list[dict]) -> list[dict]:
    """For an upsert stream: one record per key, the last one (a batch may hold many updates of
    the same candle; PostgreSQL's DO UPDATE cannot touch a row twice in one statement)."""
    if not isinstance(stream, DerivedStreamSpec):
        return records
    key = stream.primary_key
    latest: dict[tuple, dict] = {}
    for record in records:
        latest[tuple(record[k] for k in key)] = record
    return list(latest.values()) if len(latest) < len(records) else records
