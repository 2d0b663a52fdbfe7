"""The JSON Schema (2020-12) of streams.yaml: the core's sections plus every fragment that the
installed plugins register (component option blocks and extra top-level sections).

``schemas/streams.schema.json`` is this schema generated with the built-in plugins
(``tickwire generate config-schema``); a test keeps the committed copy up to date.

Numbers have ranges: the core's options declare their own; a plugin option of type
``integer`` or ``number`` that declares no upper bound gets :data:`INTEGER_CEILING` or
:data:`NUMBER_CEILING` (so ``1e300`` seconds cannot overflow a timer). Integers must be written
as integers and numbers must be finite (see :mod:`tickwire.framework.validation`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tickwire.framework.plugins import PluginManager

SYMBOL_PATTERN = "^[A-Z0-9]{2,20}$"
# Lowercase, so unquoted and quoted spellings name the same table in PostgreSQL; SQLite keeps
# names starting with sqlite_ for itself. Identifiers are also quoted wherever SQL is built.
SQL_IDENTIFIER = "^(?!sqlite_)[a-z_][a-z0-9_]{0,62}$"
# A table name leaves room for what the sinks derive from it ("tickwire_staging_<table>")
# within PostgreSQL's 63 characters, which would otherwise silently cut and collide.
TABLE_NAME = "^(?!sqlite_)[a-z_][a-z0-9_]{0,45}$"
KAFKA_TOPIC = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,249}$"
COMPONENT_ID = "^[A-Za-z][A-Za-z0-9_-]{0,62}$"
DURATION = "^[0-9]{1,6} (second|seconds|minute|minutes|hour|hours)$"
RETENTION = "^[1-9][0-9]{0,4} (day|days)$"
_RETENTION = {
    "type": "string",
    "pattern": RETENTION,
    "description": "Keep rows this long, by the table's time column (x-tickwire.partition_time, else the event "
                   "time), e.g. '30 days'. PostgreSQL drops whole expired day partitions (`tickwire db maintain`); "
                   "SQLite deletes expired rows in bounded batches. Absent: rows are kept for ever.",
    "examples": ["30 days"],
}
INTEGER_CEILING = 2**53 - 1  # the largest integer every JSON reader keeps exact
NUMBER_CEILING = 1e9  # about 31 years in seconds; below the largest timeout threads accept

_TOPIC = {
    "type": "object",
    "description": "Kafka topic of the stream (used by the kafka sink and the Spark job).",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": KAFKA_TOPIC, "description": "Topic name."},
        "partitions": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 3, "description": "Partitions (records are keyed, so per-key order holds)."},
        "replication_factor": {"type": "integer", "minimum": 1, "maximum": 32, "default": 1, "description": "Replication factor."},
        "config": {
            "type": "object",
            "description": "Topic configs, e.g. retention.ms, cleanup.policy.",
            "additionalProperties": {"type": ["string", "integer"]},
        },
        "format": {
            "enum": ["normalized", "binance"],
            "default": "normalized",
            "description": "Value format, named and versioned in each message's `tickwire-format` header: "
            "`normalized` (normalized/1: the record's columns; what the Spark job reads) or `binance` "
            "(binance/1: the payload as Binance sends it, for consumers of the original pipeline; "
            "docs/migrating.md).",
        },
    },
}

_TRANSFORM = {
    "description": "A transform name, or a one-key mapping {name: {options}}.",
    "oneOf": [
        {"type": "string"},
        {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": {"type": "object"}},
    ],
}

_SYMBOL_LIST = {"type": "string", "pattern": SYMBOL_PATTERN}
_SYMBOL_NAMES = {"type": "array", "items": _SYMBOL_LIST, "uniqueItems": True, "maxItems": 10000}
_SELECTOR = {  # no "type": the field's own type list says it (one message for `symbols: 5`)
    "additionalProperties": False,
    "required": ["select"],
    "properties": {
        "select": {
            "description": "`all` (every symbol with status TRADING), or filters that must all hold.",
            "if": {"type": "string"},
            "then": {"const": "all"},
            "else": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "quote_assets": {"type": "array", "minItems": 1, "uniqueItems": True,
                                     "items": {"type": "string", "pattern": "^[A-Z0-9]{1,12}$"},
                                     "description": "Quote assets to take, e.g. [USDT, FDUSD] (default: any)."},
                    "status": {"enum": ["TRADING", "END_OF_DAY", "HALT", "BREAK"], "default": "TRADING",
                               "description": "Symbol status to take; a symbol leaving it is unsubscribed."},
                    "permissions": {"type": "array", "minItems": 1, "uniqueItems": True, "default": ["SPOT"],
                                    "items": {"type": "string", "pattern": "^[A-Z0-9_]{1,32}$"},
                                    "description": "Take a symbol when one of these is in its permission sets."},
                    "include": dict(_SYMBOL_NAMES, description="Always taken when listed with the selected status, whatever the other filters."),
                    "exclude": dict(_SYMBOL_NAMES, description="Never taken."),
                },
            },
        },
        "refresh_seconds": {"type": "number", "minimum": 1, "maximum": 86400, "default": 300,
                            "description": "Seconds between two reads of the symbol list: new listings are "
                                           "subscribed, delisted or halted symbols unsubscribed."},
    },
}


def _symbols(description: str, **extra) -> dict:
    """A ``symbols:`` field: a list of symbols, or a selector mapping."""
    return {
        "type": ["array", "object"],
        "description": description,
        "if": {"type": "array"},
        "then": {"items": _SYMBOL_LIST, "minItems": 1, "maxItems": 1024, "uniqueItems": True},
        "else": _SELECTOR,
        **extra,
    }


BASE_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://tickwire.dev/schemas/streams.schema.json",
    "title": "tickwire streams.yaml",
    "description": "What to ingest: sources, symbols, streams, sinks and profiles.",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "sources", "streams", "sinks", "profiles"],
    "properties": {
        "version": {"const": 1, "description": "Config format version."},
        "default_profile": {"type": "string", "pattern": COMPONENT_ID, "default": "local", "description": "Profile used when --profile is not given."},
        "symbols": _symbols("Symbols every stream subscribes to, unless the stream has its own: a list, or a "
                            "selector resolved from the exchange's symbol list (docs/scaling.md).",
                            default=["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
        "sources": {
            "type": "object",
            "description": "Where payloads come from, by id. `type` names a source plugin.",
            "minProperties": 1,
            "propertyNames": {"pattern": COMPONENT_ID},
            "additionalProperties": {"$ref": "#/$defs/source"},
        },
        "streams": {
            "type": "object",
            "description": "The streams to ingest, by name.",
            "minProperties": 1,
            "propertyNames": {"pattern": SQL_IDENTIFIER},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["channel", "schema", "table"],
                "properties": {
                    "source": {"type": "string", "description": "Source id; defaults to the only source."},
                    "channel": {"type": "string", "pattern": "\\{symbol\\}", "description": "Channel template, e.g. '{symbol}@trade'."},
                    "schema": {"type": "string", "description": "JSON Schema of the payload (relative to this file)."},
                    "table": {"type": "string", "pattern": TABLE_NAME, "description": "Target table in SQLite and PostgreSQL."},
                    "symbols": _symbols("Overrides the global symbols for this stream: a list, or a selector."),
                    "topic": _TOPIC,
                    "retention": _RETENTION,
                    "transforms": {
                        "type": "array",
                        "items": _TRANSFORM,
                        "default": ["validate", "normalize"],
                        "description": "Per-record transforms, in order.",
                    },
                },
            },
        },
        "derived": {
            "type": "object",
            "description": "Streams computed from other streams (e.g. candles): by `tickwire run` for the sinks that store tables (SQLite, PostgreSQL), by the Spark job on the Kafka path; the same rows either way.",
            "propertyNames": {"pattern": SQL_IDENTIFIER},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "from", "interval", "table"],
                "properties": {
                    "kind": {"enum": ["candles"], "description": "What to compute."},
                    "from": {"type": "string", "description": "Name of the input stream (trades)."},
                    "interval": {"type": "string", "pattern": DURATION, "description": "Window length, e.g. '1 minute'."},
                    "watermark": {"type": "string", "pattern": DURATION, "default": "30 seconds", "description": "How late a trade may arrive and still correct its candle."},
                    "table": {"type": "string", "pattern": TABLE_NAME, "description": "Target table (SQLite, PostgreSQL)."},
                    "retention": _RETENTION,
                },
            },
        },
        "sinks": {
            "type": "object",
            "description": "Where records go, by id. `type` names a sink plugin.",
            "minProperties": 1,
            "propertyNames": {"pattern": COMPONENT_ID},
            "additionalProperties": {"$ref": "#/$defs/sink"},
        },
        "profiles": {
            "type": "object",
            "description": "Named selections of sinks; `tickwire run --profile NAME`.",
            "minProperties": 1,
            "propertyNames": {"pattern": COMPONENT_ID},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["sinks"],
                "properties": {
                    "sinks": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True, "description": "Sink ids every stream writes to."},
                    "dead_letter": {"type": "string", "description": "Sink id receiving invalid records with their reason."},
                    "streams": {"type": "array", "items": {"type": "string"}, "description": "Only these streams (default: all)."},
                },
            },
        },
        "engine": {
            "type": "object",
            "additionalProperties": False,
            "description": "Batching and buffering.",
            "properties": {
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1000, "description": "Records per sink batch."},
                "batching": {"enum": ["adaptive", "linger"], "default": "adaptive", "description": "adaptive: a sink with no write in flight takes whatever records have arrived at once, and while it is busy they gather into bigger batches (up to batch_size): low latency at low rates, full batches under load. linger: a partial batch waits linger_ms (the behaviour before adaptive batching)."},
                "linger_ms": {"type": "integer", "minimum": 0, "maximum": 60000, "default": 200, "description": "Longest wait before a partial batch is handed to its sink's queue. With batching: adaptive only an upper bound: it matters only while the sink is busy."},
                "queue_batches": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 8, "description": "Batches buffered per sink before the source is slowed down (backpressure)."},
                "coalesce_batches": {"type": "integer", "minimum": 1, "maximum": 256, "default": 4, "description": "With a backlog, up to this many queued batches of one stream are written together."},
                "retry_initial_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60, "default": 0.5, "description": "First delay before a failed sink write is retried (doubles each time)."},
                "retry_max_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": 10, "description": "Longest delay between retries of a failed write; writes are retried until they succeed."},
                "shutdown_timeout_s": {"type": "number", "minimum": 2, "maximum": 3600, "default": 15, "description": "From a stop request (SIGINT, SIGTERM, end of --duration) `tickwire run` returns within this time, whatever state a sink is in: writes not committed (or spooled) by then are abandoned, counted per sink and stream in a log line and in tickwire_records_abandoned_total, and the run exits 3."},
            },
        },
        "metrics": {
            "type": "object",
            "additionalProperties": False,
            "description": "Prometheus /metrics endpoint of `tickwire run`.",
            "properties": {
                "host": {"type": "string", "default": "127.0.0.1", "description": "Bind address."},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 9464, "description": "Port; 0 disables the endpoint."},
            },
        },
        "plugins": {
            "type": "object",
            "additionalProperties": False,
            "description": "Plugin loading.",
            "properties": {
                "directories": {"type": "array", "items": {"type": "string"}, "description": "Folders of local plugin modules (*.py), relative to this file."},
                "block": {"type": "array", "items": {"type": "string"}, "description": "Plugin names not to load (see `tickwire plugins`)."},
            },
        },
    },
    "$defs": {},
}


def _component_def(kind: str, specs: dict) -> dict:
    """``type`` picks the plugin; its option schema then applies to the rest of the block."""
    branches = []
    for name, spec in sorted(specs.items()):
        options = copy.deepcopy(spec.config_schema) or {"type": "object"}
        properties = dict(options.get("properties", {}))
        properties["type"] = {"const": name}
        options["properties"] = properties
        branches.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]}, "then": options})
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string", "description": f"The {kind} plugin's component name.", "enum": sorted(specs)}},
        "allOf": branches,
    }


def bounded(fragment: dict) -> dict:
    """``fragment`` (a plugin's) with :data:`INTEGER_CEILING` / :data:`NUMBER_CEILING` as the
    maximum of every integer or number option that declares none."""
    work = [fragment]
    while work:
        node = work.pop()
        if isinstance(node, list):
            work += node
            continue
        if not isinstance(node, dict):
            continue
        kinds = node.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
        if ("integer" in kinds or "number" in kinds) and "maximum" not in node and "exclusiveMaximum" not in node:
            node["maximum"] = NUMBER_CEILING if "number" in kinds else INTEGER_CEILING
        work += [value for key, value in node.items() if key not in ("default", "examples", "enum", "const")]
    return fragment


def build_schema(manager: PluginManager) -> dict:
    schema = copy.deepcopy(BASE_SCHEMA)
    schema["$defs"]["source"] = bounded(_component_def("source", manager.sources))
    schema["$defs"]["sink"] = bounded(_component_def("sink", manager.sinks))
    for section, fragment in sorted(manager.config_sections.items()):
        schema["properties"][section] = bounded(copy.deepcopy(fragment))
    return schema
