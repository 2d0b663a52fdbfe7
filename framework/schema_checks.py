"""Checks of one stream schema (``schemas/*.schema.json``) beyond "it parses": the x-tickwire
meta-schema, JSON Schema 2020-12 itself, what tickwire's record validators can execute, and the
annotations' consistency. Every problem points at the offending line of the schema file.

What the record validators execute (``validate``'s compiled code and its fastjsonschema
fallback) is a subset of 2020-12, so a schema is refused when it uses:

* a keyword outside :data:`SUPPORTED_KEYWORDS` — a typo such as ``minimun`` (JSON Schema would
  silently ignore it) or a 2020-12 keyword the validators do not implement (``prefixItems``,
  ``unevaluatedProperties``, ``format``…); ``x-…`` extension keys are allowed;
* a ``$ref`` that is not local (``#/…``), points nowhere, or loops back on itself (validating a
  record would never end);
* Infinity or NaN anywhere (JSON has neither; ``minimum: .inf`` would be a broken bound);
* a ``pattern`` that is not a valid regular expression.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterator
from urllib.parse import unquote

from jsonschema import Draft202012Validator

from tickwire.framework.problems import Problem, dotted
from tickwire.framework.schemas import ANNOTATION, columns_of, load_meta_schema
from tickwire.framework.validation import DocumentValidator, dedupe, describe

_SCHEMA_VALUED = ("items", "additionalProperties", "propertyNames", "contains", "if", "then", "else", "not")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs")
VALIDATION_KEYWORDS = (
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxProperties", "minProperties",
    "required", "$ref", *_SCHEMA_VALUED, *_SCHEMA_LISTS, *_SCHEMA_MAPS,
)
ANNOTATION_KEYWORDS = ("$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated",
                       "readOnly", "writeOnly")
SUPPORTED_KEYWORDS = frozenset(VALIDATION_KEYWORDS + ANNOTATION_KEYWORDS)
# 2020-12 (and draft-07) keywords the record validators do not implement the 2020-12 way
NOT_IMPLEMENTED = frozenset((
    "prefixItems", "unevaluatedItems", "unevaluatedProperties", "dependentRequired", "dependentSchemas",
    "minContains", "maxContains", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
    "$vocabulary", "format", "contentEncoding", "contentMediaType", "contentSchema", "dependencies",
    "definitions", "additionalItems",
))
EXPECTED_JSON_TYPE = {"decimal": "string", "text": "string", "bigint": "integer", "integer": "integer",
                      "timestamp_ms": "integer", "boolean": "boolean"}

_meta_validator = None


def check_stream_schema(schema_doc) -> list[Problem]:
    """A stream schema (a :class:`tickwire.framework.documents.Document`) against the meta-schema,
    JSON Schema 2020-12 and what the pipeline can execute, then the annotations' consistency."""
    global _meta_validator
    if _meta_validator is None:
        _meta_validator = DocumentValidator(load_meta_schema())
    schema = schema_doc.data
    problems = [p for error in _meta_validator.iter_errors(schema) for p in describe(schema_doc, error)]
    if problems or not isinstance(schema, dict):
        return dedupe(problems)
    for error in DocumentValidator(Draft202012Validator.META_SCHEMA).iter_errors(schema):
        at = tuple(error.absolute_path)
        found = describe(schema_doc, error) or [Problem(schema_doc.mark(at), dotted(at), error.message)]
        problems += [Problem(p.mark, p.path, f"not a valid JSON Schema: {p.reason}") for p in found]
    problems += [Problem(schema_doc.mark(at), dotted(at), reason) for at, reason in executable_problems(schema)]
    if problems:
        return dedupe(problems)
    return _annotation_problems(schema_doc, schema)


def executable_problems(schema: Any) -> list[tuple[tuple, str]]:
    """(path, reason) for each part of ``schema`` the record validators cannot execute."""
    out: list[tuple[tuple, str]] = []
    for path, value in _all_values(schema):
        if isinstance(value, float) and not math.isfinite(value):
            out.append((path, f"{value} is not a finite number (JSON has no Infinity or NaN)"))
    refs: list[tuple[tuple, tuple]] = []
    for path, sub in _subschemas(schema):
        for key in sub:
            if not isinstance(key, str) or key.startswith("x-"):
                continue
            if key in NOT_IMPLEMENTED:
                out.append((path + (key,), f"keyword '{key}' is not supported by tickwire's record validators"))
            elif key not in SUPPORTED_KEYWORDS:
                hint = difflib.get_close_matches(key, sorted(SUPPORTED_KEYWORDS), n=1)
                out.append((path + (key,), f"unknown keyword '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                            + "; extension keys start with 'x-'"))
        if isinstance(sub.get("pattern"), str):
            try:
                re.compile(sub["pattern"])
            except (re.error, RecursionError, OverflowError) as exc:
                out.append((path + ("pattern",), f"not a valid regular expression: {exc}"))
        ref = sub.get("$ref")
        if isinstance(ref, str):
            target = _pointer(ref)
            if target is None:
                out.append((path + ("$ref",), f"$ref {ref!r} is not supported: only references inside this schema ('#/...')"))
            elif not isinstance(_resolve(schema, target), (dict, bool)):
                out.append((path + ("$ref",), f"$ref {ref!r} does not point to a schema in this file"))
            else:
                refs.append((path, target))
    out += _ref_cycles(refs)
    return out


def _all_values(value: Any) -> Iterator[tuple[tuple, Any]]:
    work = [((), value)]
    while work:
        path, item = work.pop()
        yield path, item
        if isinstance(item, dict):
            work += [(path + (k,), v) for k, v in item.items()]
        elif isinstance(item, list):
            work += [(path + (i,), v) for i, v in enumerate(item)]


def _subschemas(schema: Any) -> Iterator[tuple[tuple, dict]]:
    """Every (sub)schema object with its path; not values that merely look like schemas
    (``enum`` members, ``default``, annotations)."""
    work = [((), schema)]
    while work:
        path, sub = work.pop()
        if not isinstance(sub, dict):
            continue
        yield path, sub
        for key in _SCHEMA_VALUED:
            if key in sub:
                work.append((path + (key,), sub[key]))
        for key in _SCHEMA_LISTS:
            if isinstance(sub.get(key), list):
                work += [(path + (key, i), s) for i, s in enumerate(sub[key])]
        for key in _SCHEMA_MAPS:
            if isinstance(sub.get(key), dict):
                work += [(path + (key, name), s) for name, s in sub[key].items()]


def _pointer(ref: str) -> tuple | None:
    if ref == "#":
        return ()
    if not ref.startswith("#/"):
        return None
    return tuple(unquote(part).replace("~1", "/").replace("~0", "~") for part in ref[2:].split("/"))


def _resolve(schema: Any, target: tuple) -> Any:
    node = schema
    for part in target:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _ref_cycles(refs: list[tuple[tuple, tuple]]) -> list[tuple[tuple, str]]:
    """A ``$ref`` whose target contains (through further refs) the same target again."""
    inside = {target: [(at, t) for at, t in refs if at[: len(target)] == target] for _, target in refs}
    out, reported = [], set()
    for start_at, start in refs:
        # depth-first along the refs each target contains; a target met twice on one route loops
        work = [(start, (start,))]
        while work:
            target, route = work.pop()
            for at, nxt in inside.get(target, []):
                if nxt in route:
                    cycle = route[route.index(nxt):] + (nxt,)
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        shown = " -> ".join("#/" + "/".join(map(str, t)) if t else "#" for t in cycle)
                        out.append((start_at + ("$ref",), f"recursive $ref ({shown}) is not supported: checking a record would never end"))
                elif len(route) < 64:
                    work.append((nxt, route + (nxt,)))
    return out


def _annotation_problems(schema_doc, schema: dict) -> list[Problem]:
    problems: list[Problem] = []

    def problem(at: tuple, reason: str) -> None:
        problems.append(Problem(schema_doc.mark(at), dotted(at), reason))

    seen: dict[str, str] = {}
    for field_name, prop in schema.get("properties", {}).items():
        note = prop.get(ANNOTATION) if isinstance(prop, dict) else None
        if not note:
            continue
        at = ("properties", field_name, ANNOTATION)
        column, logical = note["column"], note["type"]
        if column in seen:
            problem(at + ("column",), f"column '{column}' is also used by field '{seen[column]}'")
        seen[column] = field_name
        if column == "ingested_at":
            problem(at + ("column",), "column 'ingested_at' is reserved (added by normalize)")
        if prop.get("type") != EXPECTED_JSON_TYPE[logical]:
            problem(("properties", field_name), f"a {logical} column needs \"type\": \"{EXPECTED_JSON_TYPE[logical]}\" (has {prop.get('type')!r})")
        if logical == "decimal" and "pattern" not in prop:
            problem(("properties", field_name), "a decimal column needs a \"pattern\" so only exact decimal strings pass")
    note = schema[ANNOTATION]
    columns = {c.name: c for c in columns_of(schema)}
    required = set(schema.get("required", []))
    for i, key in enumerate(note.get("primary_key", [])):
        at = (ANNOTATION, "primary_key", i)
        if key not in columns:
            problem(at, f"primary key column '{key}' is not a column of this schema")
        elif columns[key].field not in required:
            problem(at, f"primary key column '{key}' (field '{columns[key].field}') must be required")
    for key in ("kafka_key", "event_time"):
        if key in note and note[key] not in columns:
            problem((ANNOTATION, key), f"'{note[key]}' is not a column of this schema")
    if "event_time" in note and note["event_time"] in columns and columns[note["event_time"]].logical != "timestamp_ms":
        problem((ANNOTATION, "event_time"), "the event-time column must be of type timestamp_ms")
    partition_time = note.get("partition_time")
    if partition_time is not None:  # it joins the stored key: a column every record has
        if partition_time not in columns:
            problem((ANNOTATION, "partition_time"), f"'{partition_time}' is not a column of this schema")
        elif columns[partition_time].logical != "timestamp_ms" or columns[partition_time].field not in required:
            problem((ANNOTATION, "partition_time"), "the partition-time column must be a required timestamp_ms column")
    sequence = note.get("sequence") if isinstance(note.get("sequence"), dict) else {}
    for key, logicals in (("column", ("bigint", "integer")), ("partition", ("text",))):
        name = sequence.get(key)
        if name is None:
            continue
        at = (ANNOTATION, "sequence", key)
        if name not in columns:
            problem(at, f"'{name}' is not a column of this schema")
        elif columns[name].logical not in logicals:
            problem(at, f"the sequence {key} must be of type {' or '.join(logicals)}")
        elif name not in note.get("primary_key", []):
            problem(at, f"the sequence {key} '{name}' must be part of the primary key")
    const = schema.get("properties", {}).get("e", {}).get("const") if isinstance(schema.get("properties", {}).get("e"), dict) else None
    if const is not None and const != note.get("event_type"):
        problem((ANNOTATION, "event_type"), f"event_type '{note.get('event_type')}' differs from properties.e.const '{const}'")
    return problems
