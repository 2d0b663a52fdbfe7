"""Kafka value formats, named and versioned in the ``tickwire-format`` header of every message.

* ``normalized/1`` (default): the normalized record as JSON — columns by their names, decimals
  as exact strings, times as ISO-8601 UTC with milliseconds (docs/architecture.md). The Spark
  job reads this format.
* ``binance/1`` (topic option ``format: binance``): the payload as Binance sends it (``{"e":
  "trade", "E": 1700000000123, "s": "BTCUSDT", "p": "…", …}``), for consumers written for
  the original pipeline (docs/migrating.md). The payload is the one received when the stream's
  normalize transform keeps it (``include_raw: true``: byte for byte what Binance sent, fields
  tickwire does not store included); otherwise it is rebuilt from the record's columns (every
  field the schema maps to a column, plus ``e``: the schema's event type).

A reader checks the header's name before it parses the value and its version before it trusts
the layout; a new layout of a format is a new version (``normalized/2``), never a silent change.
"""

from __future__ import annotations

from typing import Any, Callable

from tickwire.framework.schemas import StreamSpec
from tickwire.framework.timestamps import ms_of_iso

FORMAT_HEADER = "tickwire-format"
FORMAT_VERSIONS = {"normalized": "normalized/1", "binance": "binance/1"}
RAW_KEY = "raw"  # where normalize's include_raw puts the payload (plugins/normalize.py)


def format_header(stream: StreamSpec) -> tuple[str, bytes]:
    """The ``tickwire-format`` header of ``stream``'s messages."""
    return FORMAT_HEADER, FORMAT_VERSIONS[topic_format(stream)].encode()


def topic_format(stream: StreamSpec) -> str:
    return getattr(stream.topic, "format", "normalized") or "normalized"


def value_encoder(stream: StreamSpec, dumps: Callable[[Any], bytes]) -> Callable[[dict], bytes]:
    """record → the Kafka value of ``stream``'s format."""
    if topic_format(stream) != "binance":
        return dumps
    fields = [(c.name, c.field, c.logical == "timestamp_ms") for c in stream.columns if c.field]
    event_type = stream.event_type

    def binance_payload(record: dict) -> bytes:
        raw = record.get(RAW_KEY)
        if raw is not None:
            return dumps(raw)
        payload: dict[str, Any] = {"e": event_type} if event_type else {}
        for column, field, is_time in fields:
            value = record.get(column)
            if value is not None or column in record:
                payload[field] = ms_of_iso(value) if is_time and isinstance(value, str) else value
        return dumps(payload)

    return binance_payload
