"""The per-field half of the ``validate`` transform (plugins/validate.py): a stream schema's
properties as :class:`Field` objects, each able to write the Python expression that checks a
value (the generated fast path) and to explain, in words, why a value fails (the slow path).

The subset handled: an object schema with ``required`` and ``properties``; per property
``type``, ``const``, ``enum``, ``pattern``, ``minimum``, ``maximum``, ``minLength``,
``maxLength``. Anything else raises :class:`UnsupportedSchema` (the caller falls back to
``fastjsonschema``); a value that cannot be compiled (a non-finite bound, an invalid pattern…)
is a :class:`~tickwire.framework.schemas.StreamSchemaError` naming the place in the schema.

Note on ``pattern``: JSON Schema regexes follow ECMA-262, where a final ``$`` matches only at the
very end; Python's ``$`` also matches before a trailing newline, so a final ``$`` is compiled
as ``\\Z`` ("1.5\\n" is not a decimal).

:class:`ClockWindow` bounds an event time against the local clock, in both paths.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from tickwire.framework.schemas import ANNOTATION, StreamSchemaError

CHECKS = ("type", "const", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength")
ANNOTATIONS = ("description", "title", "examples", "default", "$comment", "deprecated", ANNOTATION)
TOP_LEVEL_OK = ("$schema", "$id", "type", "required", "properties", "additionalProperties", *ANNOTATIONS)

MISSING = object()  # an absent field in the generated code (None is a value)
_TYPE_TEST = {
    "string": "type({v}) is str",
    "integer": "type({v}) is int",
    "number": "(type({v}) is int or type({v}) is float)",
    "boolean": "type({v}) is bool",
    "null": "{v} is None",
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
}
_PY_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}
_JSON_TYPE_NAME = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", dict: "object", list: "array"}
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
_ANY_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")
SEEN_VALUES = 4096  # per pattern field: matched values remembered (then it starts over)


class UnsupportedSchema(Exception):
    """The schema uses keywords outside the subset this compiler handles."""


def compile_pattern(pattern: str) -> re.Pattern:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def short(value: Any) -> str:
    """``value`` for an error message: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_ok(value: Any, types: list[str]) -> bool:
    if isinstance(value, bool) and "boolean" not in types:
        return False
    return any(isinstance(value, _PY_TYPES[t]) for t in types)


def type_name(value: Any) -> str:
    """The JSON Schema type name of a decoded JSON value."""
    return _JSON_TYPE_NAME.get(type(value), type(value).__name__)


def is_finite_number(value: Any) -> bool:
    """An int or a finite float, not a bool."""
    return not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)))


def _is_zero(value: str) -> bool:
    return value.lstrip("-").replace("0", "").replace(".", "") == ""


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 1.5 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} seconds"


class ClockWindow:
    """How far an event time (ms since the epoch) may be from the local clock.

    The fast path does not read the clock per record: it compares with a cached bound
    (``_ahead[0]``: "now + max_clock_skew" in ms as of the last refresh). A stale bound is lower
    than the true one, so a value above it is checked again against a fresh clock read
    (``_ahead_ok``), which refreshes the bound: the answer is exact either way. The fused
    validate → normalize function also refreshes it once per millisecond from the clock read it
    makes anyway (``ingested_at``), so a clock stepped back is followed within a record."""

    def __init__(self, ahead_s: float, behind_s: float | None):
        self.ahead_s, self.behind_s = ahead_s, behind_s
        self.ahead_ms = ahead_s * 1000.0
        self.bound = [0.0]  # "now + ahead" in ms, as of the last refresh

    def ahead_ok(self, value: int | float) -> bool:
        """``value`` against a fresh clock read (and the cached bound refreshed)."""
        bound = self.bound[0] = time.time() * 1000.0 + self.ahead_ms
        return value <= bound

    def expression(self, v: str, consts: dict) -> str:
        consts["_time"] = time.time
        consts["_ahead"] = self.bound
        consts["_ahead_ok"] = self.ahead_ok
        parts = [f"({v} <= _ahead[0] or _ahead_ok({v}))"]
        if self.behind_s is not None:  # off by default; exact, with a clock read
            parts.append(f"_time() * 1000.0 - {v} <= {self.behind_s * 1000.0!r}")
        return " and ".join(parts)

    def refresh_line(self, now_ms: str) -> str:
        """A statement refreshing the cached bound from an expression holding "now" in ms."""
        return f"_ahead[0] = {now_ms} + {self.ahead_ms!r}"

    def explain(self, value: int) -> str | None:
        offset_s = value / 1000.0 - time.time()
        if offset_s > self.ahead_s:
            return f"{short(value)} is {_duration(offset_s)} ahead of the local clock (max_clock_skew_seconds: {self.ahead_s:g})"
        if self.behind_s is not None and -offset_s > self.behind_s:
            return f"{short(value)} is {_duration(-offset_s)} old (max_event_age_seconds: {self.behind_s:g})"
        return None


class Field:
    """One property of the schema with its checks, shared by the fast and the slow path."""

    def __init__(self, name: str, prop: dict, required: bool, clock: ClockWindow | None = None):
        if not isinstance(prop, dict):
            raise UnsupportedSchema(f"property {name!r} is not an object")
        unknown = set(prop) - set(CHECKS) - set(ANNOTATIONS)
        if unknown:
            raise UnsupportedSchema(f"property {name!r} uses {sorted(unknown)}")
        self.name = name
        self.prop = prop
        self.required = required
        self.clock = clock
        note = prop.get(ANNOTATION) or {}
        self.column = note.get("column")
        self.logical = note.get("type")
        t = prop.get("type")
        self.types = [t] if isinstance(t, str) else list(t or [])
        if any(not isinstance(t, str) or t not in _TYPE_TEST for t in self.types):
            raise UnsupportedSchema(f"property {name!r} has type {t!r}")
        at = ("properties", name)
        for bound in ("minimum", "maximum"):
            if bound in prop and not is_finite_number(prop[bound]):
                raise StreamSchemaError(f"{bound} must be a finite number, not {prop[bound]!r}", at + (bound,))
        for bound in ("minLength", "maxLength"):
            if bound in prop and (isinstance(prop[bound], bool) or not isinstance(prop[bound], int) or prop[bound] < 0):
                raise StreamSchemaError(f"{bound} must be a non-negative integer, not {prop[bound]!r}", at + (bound,))
        self.regex = None
        if "pattern" in prop:
            try:
                self.regex = compile_pattern(prop["pattern"])
            except (re.error, TypeError, RecursionError, OverflowError) as exc:
                raise StreamSchemaError(f"pattern is not a valid regular expression: {exc}", at + ("pattern",)) from None

    @property
    def label(self) -> str:
        return f"field {self.name!r} ({self.column})" if self.column and self.column != self.name else f"field {self.name!r}"

    def explain(self, value: Any) -> str | None:
        """The reason ``value`` fails, or ``None``."""
        p = self.prop
        if self.types and not _type_ok(value, self.types):
            return f"{self.label}: expected {' or '.join(self.types)}, got {type_name(value)} {short(value)}"
        if "const" in p and not (value == p["const"] and type(value) is type(p["const"])):
            return f"{self.label}: expected {p['const']!r}, got {short(value)}"
        if "enum" in p and value not in p["enum"]:
            return f"{self.label}: {short(value)} is not one of {p['enum']!r}"
        if isinstance(value, str):
            if self.regex is not None and not self.regex.search(value):
                return f"{self.label}: {self._pattern_reason(value)}"
            if "minLength" in p and len(value) < p["minLength"]:
                return f"{self.label}: {short(value)} is shorter than {p['minLength']}"
            if "maxLength" in p and len(value) > p["maxLength"]:
                return f"{self.label}: {short(value)} is longer than {p['maxLength']}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in p and value < p["minimum"]:
                return f"{self.label}: {short(value)} is less than the minimum {p['minimum']}"
            if "maximum" in p and value > p["maximum"]:
                return f"{self.label}: {short(value)} is greater than the maximum {p['maximum']}"
            if self.clock is not None:
                reason = self.clock.explain(value)
                if reason:
                    return f"{self.label}: {reason}"
        return None

    def _pattern_reason(self, value: str) -> str:
        """Why a string fails the pattern; for decimals, whether it is negative or zero."""
        p = self.prop
        if not (self.logical == "decimal" or p["pattern"] == DECIMAL_PATTERN):
            return f"{short(value)} does not match pattern {p['pattern']!r}"
        if _ANY_DECIMAL.match(value):
            search = self.regex.search
            allowed = "positive" if search("0") is None else "zero or positive"
            if value.startswith("-") and search("-1") is None and not _is_zero(value):
                return f"{short(value)} is negative; the schema allows only {allowed} decimals"
            if _is_zero(value) and search("0") is None:
                return f"{short(value)} is zero; the schema allows only positive decimals"
            return f"{short(value)} does not match decimal pattern {p['pattern']!r} (too many digits?)"
        return f"{short(value)} does not match decimal pattern"

    def expression(self, v: str, consts: dict) -> str:
        """A Python boolean expression over variable ``v`` that is true iff the value is valid."""
        p = self.prop
        parts = []
        is_str = self.types == ["string"]
        is_num = bool(self.types) and all(t in ("integer", "number") for t in self.types)
        if self.types:
            parts.append("(" + " or ".join(_TYPE_TEST[t].format(v=v) for t in self.types) + ")")
        if "const" in p:
            consts[f"{v}_const"] = p["const"]
            if isinstance(p["const"], str):  # only a str equals a str: no type test needed
                parts.append(f"{v} == {v}_const")
            else:  # True == 1: compare types too
                parts.append(f"({v} == {v}_const and type({v}) is type({v}_const))")
        if "enum" in p:
            consts[f"{v}_enum"] = list(p["enum"])
            parts.append(f"{v} in {v}_enum")
        str_parts, num_parts = [], []
        if self.regex is not None:
            # values repeat (symbols; prices and quantities at a price level): remember the
            # ones that matched, a set lookup instead of a regex per record. Bounded: full, it
            # starts over, so arbitrary input cannot grow it and a drifting price keeps hitting
            consts[f"{v}_seen"] = seen = set()
            search = self.regex.search

            def check(value, seen=seen, search=search):
                if search(value) is None:
                    return False
                if len(seen) >= SEEN_VALUES:
                    seen.clear()
                seen.add(value)
                return True

            consts[f"{v}_check"] = check
            str_parts.append(f"({v} in {v}_seen or {v}_check({v}))")
        if "minLength" in p:
            str_parts.append(f"len({v}) >= {int(p['minLength'])}")
        if "maxLength" in p:
            str_parts.append(f"len({v}) <= {int(p['maxLength'])}")
        if "minimum" in p:
            num_parts.append(f"{v} >= {p['minimum']!r}")
        if "maximum" in p:
            num_parts.append(f"{v} <= {p['maximum']!r}")
        if self.clock is not None:
            num_parts.append(self.clock.expression(v, consts))
        if str_parts:
            parts.append(" and ".join(str_parts) if is_str else f"(type({v}) is not str or ({' and '.join(str_parts)}))")
        if num_parts:
            guard = f"(type({v}) is not int and type({v}) is not float)"
            parts.append(" and ".join(num_parts) if is_num else f"({guard} or ({' and '.join(num_parts)}))")
        expr = " and ".join(parts) or "True"
        if not self.required:
            expr = f"({v} is MISSING or ({expr}))"
        return expr


def fields_of(schema: dict, clock: tuple[str, ClockWindow] | None = None) -> dict[str, Field]:
    """The fields of a stream schema, by name; :class:`UnsupportedSchema` outside the subset.
    ``clock`` is the event-time field and its window, checked on that field."""
    unknown = set(schema) - set(TOP_LEVEL_OK) - {"$defs"}
    if unknown:
        raise UnsupportedSchema(f"top-level keywords {sorted(unknown)}")
    if schema.get("type", "object") != "object":
        raise UnsupportedSchema("the schema's type must be 'object'")
    if schema.get("additionalProperties", True) is not True:
        raise UnsupportedSchema("additionalProperties other than true")
    required = set(schema.get("required", []))
    clock_field, window = clock if clock else (None, None)
    return {name: Field(name, prop, name in required, window if name == clock_field else None)
            for name, prop in schema.get("properties", {}).items()}
