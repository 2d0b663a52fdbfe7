"""Codegen target ``spark``: what the Structured Streaming job needs to parse each topic.

Per stream: the StructType of the Kafka value (as ``StructType.jsonValue()`` JSON, loadable
with ``StructType.fromJson`` — generating it needs no pyspark) and the select/cast expressions
from the JSON strings to typed columns: decimals as DECIMAL(38,18), times as TIMESTAMP.
"""

from __future__ import annotations

import json

from tickwire.framework.components import CodegenSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.schemas import Column
from tickwire.plugins.codegen_postgres import CANDLE_KEY, DEAD_LETTER_TABLE, PROGRESS_TABLE, TRADE_GAPS_TABLE
from tickwire.plugins.kafka.formats import topic_format
from tickwire.plugins.kafka.topics import dead_letter_topic

DECIMAL_TYPE = "DECIMAL(38,18)"
JSON_TYPES = {  # how the value JSON carries each logical type (see docs/architecture.md)
    "decimal": "string",
    "bigint": "long",
    "integer": "integer",
    "text": "string",
    "boolean": "boolean",
    "timestamp_ms": "string",
}


def select_expression(column: Column) -> str:
    name = f"`{column.name}`"
    if column.logical == "decimal":
        return f"CAST({name} AS {DECIMAL_TYPE}) AS {name}"
    if column.logical == "timestamp_ms":
        return f"CAST({name} AS TIMESTAMP) AS {name}"
    return name


def value_schema(columns: list[Column]) -> dict:
    return {
        "type": "struct",
        "fields": [{"name": c.name, "type": JSON_TYPES[c.logical], "nullable": True, "metadata": {}} for c in columns],
    }


def mapping(config) -> dict:
    streams = []
    for stream in config.streams.values():
        if stream.topic is None:
            continue
        streams.append({
            "name": stream.name,
            "topic": stream.topic.name,
            "format": topic_format(stream),
            "table": stream.table,
            "primary_key": stream.primary_key,
            "event_time": stream.event_time,
            "value_schema": value_schema(stream.columns),
            "select": [select_expression(c) for c in stream.columns],
            "columns": [{"name": c.name, "logical": c.logical, "nullable": c.nullable} for c in stream.columns],
        })
    derived = [
        {"name": name, "kind": block["kind"], "from": block["from"], "interval": block["interval"],
         "watermark": block["watermark"], "table": block["table"], "primary_key": CANDLE_KEY}
        for name, block in config.derived.items()
    ]
    return {"streams": streams, "derived": derived, "dead_letter_table": DEAD_LETTER_TABLE, "progress_table": PROGRESS_TABLE,
            "trade_gaps_table": TRADE_GAPS_TABLE, "dead_letter_topic": dead_letter_topic(config)}


def generate(config) -> dict[str, str]:
    return {"spark-mapping.json": json.dumps(mapping(config), indent=2) + "\n"}


@hookimpl
def tickwire_register_codegen_targets(register):
    register(CodegenSpec(name="spark", factory=generate, description="Spark StructTypes and select/cast expressions per topic (JSON)"))
