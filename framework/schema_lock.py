"""The schema lock file, ``schemas.lock.json`` next to streams.yaml: what every stream's schema
looked like when ``tickwire schema lock`` last ran (docs/schema-evolution.md).

Per stream it records the schema's fingerprint and version, the table, the keys and every
stored column (name, source field, logical type, nullability). ``tickwire validate`` compares the
working schemas with it (:mod:`tickwire.framework.compat`); the file is committed, so a pull
request that changes a schema shows the change in the lock too.

The fingerprint is the first 64 bits of the SHA-256 of the schema's canonical form: keys sorted,
no whitespace, documentation keywords (``title``, ``description``, ``$comment``, ``examples``)
and the ``x-tickwire.migration`` note left out — like Avro's Parsing Canonical Form, editing a
description does not make a new schema. Kafka records carry it in the header
``tickwire-schema-fingerprint``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from tickwire.framework import documents
from tickwire.framework.documents import Document, DocumentError, Mark, Problem
from tickwire.framework.schema_checks import _subschemas
from tickwire.framework.schemas import ANNOTATION, columns_of
from tickwire.framework.validation import schema_problems

LOCK_FILE = "schemas.lock.json"
LOCK_FORMAT = 1
DOCUMENTATION_KEYWORDS = ("title", "description", "$comment", "examples")
FINGERPRINT_HEADER = "tickwire-schema-fingerprint"

_COLUMN = {
    "type": "object",
    "required": ["name", "field", "type", "nullable"],
    "properties": {"name": {"type": "string"}, "field": {"type": "string"}, "type": {"type": "string"},
                   "nullable": {"type": "boolean"}},
}
LOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["lock_format", "streams"],
    "properties": {
        "lock_format": {"const": LOCK_FORMAT},
        "streams": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["schema", "version", "fingerprint", "table", "primary_key", "columns"],
                "properties": {
                    "schema": {"type": "string"},
                    "version": {"type": "integer"},
                    "fingerprint": {"type": "string"},
                    "table": {"type": "string"},
                    "primary_key": {"type": "array", "items": {"type": "string"}},
                    "kafka_key": {"type": "string"},
                    "columns": {"type": "array", "items": _COLUMN},
                },
            },
        },
    },
}


def canonical_form(schema: dict) -> str:
    """The schema as the text its fingerprint is computed from."""
    stripped = copy.deepcopy(schema)
    for _path, sub in _subschemas(stripped):
        for keyword in DOCUMENTATION_KEYWORDS:
            sub.pop(keyword, None)
    note = stripped.get(ANNOTATION)
    if isinstance(note, dict):
        note.pop("migration", None)
    return json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(schema: dict) -> str:
    """``sha256:`` and 16 hex digits, stable across formatting and documentation edits."""
    return "sha256:" + hashlib.sha256(canonical_form(schema).encode("utf-8")).hexdigest()[:16]


def lock_entry(schema_ref: str, table: str, schema: dict) -> dict:
    """What the lock records about one stream, from its schema and its ``table``."""
    note = schema.get(ANNOTATION, {})
    entry = {
        "schema": schema_ref,
        "version": int(note.get("version", 1)),
        "fingerprint": fingerprint(schema),
        "table": table,
        "primary_key": list(note.get("primary_key", [])),
        "kafka_key": note.get("kafka_key", "symbol"),
        "columns": [{"name": c.name, "field": c.field, "type": c.logical, "nullable": c.nullable}
                    for c in columns_of(schema)],
    }
    if note.get("event_time"):
        entry["event_time"] = note["event_time"]
    return entry


def config_entries(config) -> dict[str, dict]:
    """Lock entries of every stream of a loaded :class:`tickwire.framework.config.Config`."""
    return {name: lock_entry(config.data["streams"][name]["schema"], spec.table, spec.schema)
            for name, spec in config.streams.items()}


def lock_path(config) -> Path:
    return config.dir / LOCK_FILE


def display_path(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def read_lock(path: Path) -> dict[str, dict] | None:
    """The streams recorded in the lock file; None when there is none. A damaged file is a
    :class:`DocumentError` at its line."""
    name = display_path(path)
    if not path.exists():
        return None
    try:
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a file")
        doc: Document = documents.load(path, environ={}, display_name=name)
    except OSError as exc:
        raise DocumentError([Problem(nowhere(name), "", f"cannot read the lock file: {exc.strerror or exc}")]) from None
    problems = schema_problems(doc, LOCK_SCHEMA)
    if problems:
        raise DocumentError([Problem(p.mark, p.path, f"{p.reason} (a damaged lock file: restore it from git, "
                                     "or rewrite it with `tickwire schema lock`)") for p in problems])
    return doc.data["streams"]


def render_lock(entries: dict[str, dict]) -> str:
    """The lock file's text: deterministic, so it diffs well and can be checked in CI."""
    body = {
        "lock_format": LOCK_FORMAT,
        "about": "Written by `tickwire schema lock`; commit it. `tickwire validate` compares the schemas with it "
                 "(docs/schema-evolution.md).",
        "streams": {name: entries[name] for name in sorted(entries)},
    }
    text = json.dumps(body, indent=2, ensure_ascii=False)
    # one line per column: a schema change is a one-line change of the lock
    return re.sub(r"\{\n\s+(\"name\"[^{}]*?)\n\s+\}", lambda m: "{" + re.sub(r"\n\s+", " ", m.group(1)) + "}", text) + "\n"


def write_lock(path: Path, entries: dict[str, dict]) -> None:
    """Replace the lock file atomically (a crash leaves the old or the new one, never half)."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(render_lock(entries), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise DocumentError([Problem(nowhere(display_path(path)), "", f"cannot write the lock file: "
                                     f"{exc.strerror or exc}")]) from None


def nowhere(name: str) -> Mark:
    """A place that is not a line of a file (a command-line option, a git ref)."""
    return Mark(name, 0, 0)
