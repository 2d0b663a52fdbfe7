"""The generated Spark mapping (``tickwire generate spark``), loaded and checked.

Shape (JSON)::

    {"streams": [{"name", "topic", "format"?: "normalized", "table", "primary_key": [...], "event_time",
                  "value_schema": <StructType.jsonValue()>, "select": ["CAST(...) AS col", ...],
                  "columns": [{"name", "logical", "nullable"}]}],
     "derived": [{"name", "kind": "candles", "from", "interval", "watermark", "table",
                  "primary_key": [...], "time_column"?: "trade_time"}],
     "dead_letter_table": "dead_letters", "progress_table": "stream_progress"}

Adding a stream or a derived stream to streams.yaml and regenerating adds a query: nothing here
or in the job names a stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOGICAL_TYPES = {"decimal", "bigint", "integer", "text", "boolean", "timestamp_ms"}
DERIVED_KINDS = {"candles"}
READABLE_FORMAT = "normalized"  # the Kafka value format (plugins/kafka/formats.py) the job parses


def unreadable_format(stream: str, topic: str, value_format: str) -> str | None:
    """Why the job cannot read ``topic`` (of ``stream``) in ``value_format``; None when it can."""
    if value_format == READABLE_FORMAT:
        return None
    return (f"stream '{stream}': topic {topic} carries format '{value_format}' (the Binance payload), but the Spark job "
            f"reads only '{READABLE_FORMAT}' topics: every record would go to the dead letters; set the topic's "
            f"format: {READABLE_FORMAT} (docs/migrating.md)")


class MappingError(ValueError):
    """The mapping file is not what `tickwire generate spark` writes; the message says where."""


@dataclass(frozen=True)
class Column:
    name: str
    logical: str
    nullable: bool


@dataclass(frozen=True)
class StreamMapping:
    name: str
    topic: str
    table: str
    primary_key: tuple[str, ...]
    event_time: str
    value_schema: dict[str, Any]
    select: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class DerivedMapping:
    name: str
    kind: str
    source: str  # the "from" stream
    interval: str
    watermark: str
    table: str
    primary_key: tuple[str, ...]
    time_column: str | None = None


# the query of the dead-letter topic (spark/dead_letter_topic.py); a hyphen: never a stream's name
DEAD_LETTER_QUERY = "dead-letters"


@dataclass(frozen=True)
class Mapping:
    streams: tuple[StreamMapping, ...]
    derived: tuple[DerivedMapping, ...] = ()
    dead_letter_table: str = "dead_letters"
    progress_table: str = "stream_progress"
    trade_gaps_table: str = "trade_gaps"
    dead_letter_topic: str | None = None  # the Kafka sink's; copied into the tables (dead_letter_topic.py)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def stream(self, name: str) -> StreamMapping:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def query_names(self) -> list[str]:
        return ([s.name for s in self.streams] + [d.name for d in self.derived]
                + ([DEAD_LETTER_QUERY] if self.dead_letter_topic else []))


def _require(obj: dict, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj:
        raise MappingError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise MappingError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _stream(obj: dict, where: str) -> StreamMapping:
    columns = []
    for i, c in enumerate(_require(obj, "columns", where, list)):
        cw = f"{where}.columns[{i}]"
        logical = _require(c, "logical", cw)
        if logical not in LOGICAL_TYPES:
            raise MappingError(f"{cw}.logical: {logical!r} is not one of {sorted(LOGICAL_TYPES)}")
        columns.append(Column(_require(c, "name", cw), logical, bool(c.get("nullable", True))))
    stream = StreamMapping(
        name=_require(obj, "name", where),
        topic=_require(obj, "topic", where),
        table=_require(obj, "table", where),
        primary_key=tuple(_require(obj, "primary_key", where, list)),
        event_time=_require(obj, "event_time", where),
        value_schema=_require(obj, "value_schema", where, dict),
        select=tuple(_require(obj, "select", where, list)),
        columns=tuple(columns),
    )
    refused = unreadable_format(stream.name, stream.topic, obj.get("format", READABLE_FORMAT))
    if refused:
        raise MappingError(f"{where}: {refused}")
    names = set(stream.column_names)
    for key in (*stream.primary_key, stream.event_time):
        if key not in names:
            raise MappingError(f"{where}: {key!r} is not one of its columns {sorted(names)}")
    if stream.value_schema.get("type") != "struct":
        raise MappingError(f"{where}.value_schema: expected a StructType JSON ({{'type': 'struct', ...}})")
    return stream


def _derived(obj: dict, where: str, streams: dict[str, StreamMapping]) -> DerivedMapping:
    kind = _require(obj, "kind", where)
    if kind not in DERIVED_KINDS:
        raise MappingError(f"{where}.kind: {kind!r} is not one of {sorted(DERIVED_KINDS)}")
    source = _require(obj, "from", where)
    if source not in streams:
        raise MappingError(f"{where}.from: no stream named {source!r} (streams: {sorted(streams)})")
    derived = DerivedMapping(
        name=_require(obj, "name", where),
        kind=kind,
        source=source,
        interval=_require(obj, "interval", where),
        watermark=_require(obj, "watermark", where),
        table=_require(obj, "table", where),
        primary_key=tuple(obj.get("primary_key") or ("symbol", "window_start")),
        time_column=obj.get("time_column"),
    )
    if derived.time_column and derived.time_column not in streams[source].column_names:
        raise MappingError(f"{where}.time_column: {derived.time_column!r} is not a column of {source!r}")
    return derived


def parse(obj: dict, origin: str = "mapping") -> Mapping:
    if not isinstance(obj, dict):
        raise MappingError(f"{origin}: expected a JSON object")
    streams = [_stream(s, f"{origin}: streams[{i}]") for i, s in enumerate(_require(obj, "streams", origin, list))]
    by_name = {s.name: s for s in streams}
    derived = [_derived(d, f"{origin}: derived[{i}]", by_name) for i, d in enumerate(obj.get("derived") or [])]
    names = [s.name for s in streams] + [d.name for d in derived]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MappingError(f"{origin}: query names must be unique, repeated: {duplicates}")
    return Mapping(
        streams=tuple(streams),
        derived=tuple(derived),
        dead_letter_table=obj.get("dead_letter_table") or "dead_letters",
        progress_table=obj.get("progress_table") or "stream_progress",
        trade_gaps_table=obj.get("trade_gaps_table") or "trade_gaps",
        dead_letter_topic=obj.get("dead_letter_topic") or None,
        raw=obj,
    )


def load(path: str | Path) -> Mapping:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MappingError(f"{path}: {error}") from error
    return parse(obj, str(path))
