"""Stream schemas and their ``x-tickwire`` annotations, turned into :class:`StreamSpec`.

One JSON Schema (2020-12) per payload says what Binance sends; its annotations say where each
field goes (column, logical type, keys, event time). Everything downstream — tables, the Spark
mapping, Kafka keys, the fast validator — is derived from the :class:`StreamSpec` built here.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

ANNOTATION = "x-tickwire"
LOGICAL_TYPES = ("decimal", "bigint", "integer", "text", "boolean", "timestamp_ms")


def shipped_schemas() -> Traversable:
    """The schemas that ship with tickwire (package data, the repository's schemas/): those of
    the default streams.yaml, streams.schema.json and the x-tickwire meta-schema."""
    return importlib.resources.files("tickwire") / "schemas"


class StreamSchemaError(ValueError):
    """A stream schema that a transform cannot compile. ``at`` is the path of the offending
    part inside the schema document, so config validation can report its line and column."""

    def __init__(self, reason: str, at: tuple = ()):
        super().__init__(reason)
        self.reason = reason
        self.at = tuple(at)


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (SQLite and PostgreSQL): ``"order"``. Identifiers are
    validated at config load (lowercase letters, digits, ``_``); quoting them as well lets
    reserved words such as ``select``, ``order`` or ``group`` be table and column names."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # column name in every store
    field: str  # key in the source payload
    logical: str  # one of LOGICAL_TYPES
    nullable: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int = 3
    replication_factor: int = 1
    config: dict = field(default_factory=dict)  # e.g. retention.ms, cleanup.policy
    format: str = "normalized"  # the value format (plugins/kafka/formats.py): normalized | binance


@dataclass
class StreamSpec:
    """One declared stream, with everything the engine, sinks and codegen need about it."""

    name: str
    source: str
    channel: str  # template, e.g. "{symbol}@trade"
    symbols: list[str]
    schema_path: Path
    schema: dict
    table: str
    topic: TopicSpec | None
    transforms: list[tuple[str, dict]]
    sinks: list[str] = field(default_factory=list)  # sink ids of the active profile
    selector: dict | None = None  # ``symbols: {select: …}``: the source resolves it, ``symbols`` is then empty
    retention_days: int | None = None  # `retention:` in streams.yaml; None keeps rows for ever

    @cached_property
    def annotation(self) -> dict:
        return self.schema.get(ANNOTATION, {})

    @property
    def schema_id(self) -> str:
        return self.schema.get("$id", self.schema_path.name)

    @property
    def schema_version(self) -> int:
        return int(self.annotation.get("version", 1))

    @property
    def event_type(self) -> str | None:
        return self.annotation.get("event_type")

    @property
    def primary_key(self) -> list[str]:
        return list(self.annotation.get("primary_key", []))

    @property
    def kafka_key(self) -> str:
        return self.annotation.get("kafka_key", "symbol")

    @property
    def event_time(self) -> str | None:
        return self.annotation.get("event_time")

    @property
    def partition_time(self) -> str | None:
        """The time column stores partition and expire rows by: ``x-tickwire.partition_time``,
        else the event time when every record has one (a required timestamp_ms column); None
        when there is neither. It must be stable per event (see plugins/postgres_partitions.py)."""
        explicit = self.annotation.get("partition_time")
        if explicit:
            return explicit
        column = next((c for c in self.columns if c.name == self.event_time), None)
        return column.name if column is not None and column.logical == "timestamp_ms" and not column.nullable else None

    @property
    def sequence(self) -> tuple[str, str] | None:
        """``(sequence column, partition column)`` from ``x-tickwire.sequence``: ids that grow
        by one per event within each value of the partition column (trade ids per symbol), or
        None for streams without one. Resume on restart and gap records rely on it."""
        note = self.annotation.get("sequence")
        return (note["column"], note["partition"]) if note else None

    @cached_property
    def columns(self) -> list[Column]:
        return columns_of(self.schema)

    def channels(self) -> dict[str, str]:
        """Channel name (as Binance spells it: lowercase) → symbol (uppercase)."""
        return {self.channel.format(symbol=s.lower()): s for s in self.symbols}


def columns_of(schema: dict) -> list[Column]:
    """The stored columns of a stream schema, in schema order, plus ``ingested_at``."""
    required = set(schema.get("required", []))
    columns = []
    for field_name, prop in schema.get("properties", {}).items():
        note = prop.get(ANNOTATION)
        if not note or "column" not in note:
            continue
        columns.append(
            Column(
                name=note["column"],
                field=field_name,
                logical=note["type"],
                nullable=field_name not in required,
                description=prop.get("description", ""),
            )
        )
    columns.append(Column("ingested_at", "", "timestamp_ms", False, "When tickwire received the event (UTC)."))
    return columns


def load_schema(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_meta_schema() -> dict[str, Any]:
    return json.loads((shipped_schemas() / "x-tickwire.meta.json").read_text(encoding="utf-8"))
