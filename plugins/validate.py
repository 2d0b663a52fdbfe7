"""``validate`` transform: checks each payload against its stream's JSON Schema, fast.

A generic JSON Schema validator costs 60–150 µs per message (``jsonschema``) — more than the
whole rest of the pipeline. Our stream schemas use a small subset (object with ``required`` and
``properties``; per property ``type``, ``const``, ``enum``, ``pattern``, ``minimum``,
``maximum``, ``minLength``, ``maxLength``), so at start-up this module generates one Python
function per stream whose happy path is a single boolean expression (≈1–2 µs per trade).
Only a record that fails takes the slow path, which walks the schema to name the first problem:

    field 'p' (price): 'abc' does not match decimal pattern

A schema using anything outside the subset (``$ref``, ``anyOf``, ``additionalProperties:
false``…) falls back to ``fastjsonschema`` for that stream — still correct, a bit slower.
Unknown extra payload fields are tolerated. The payload's ``e`` must equal the stream's
``event_type`` (when ``e`` is present; it must be present if the schema requires it).

Note on ``pattern``: JSON Schema regexes follow ECMA-262, where a final ``$`` matches only at the
very end; Python's ``$`` also matches before a trailing newline, so a final ``$`` is compiled
as ``\\Z`` ("1.5\\n" is not a decimal).

Event time against the local clock: the stream's event-time field (``x-tickwire.event_time``)
may be at most ``max_clock_skew_seconds`` ahead of this machine's clock (default one hour: a
time in the year 2286 is a corrupt frame, not a trade). Backwards there is no bound unless
``max_event_age_seconds`` is set, because gap fills replay trades from REST that are hours or
days old — exactly the ones a restart must not lose.

Anything in a schema this module cannot compile (a non-finite bound, an invalid pattern…) is
a :class:`~tickwire.framework.schemas.StreamSchemaError` naming the place in the schema; config
validation builds every validator, so ``tickwire validate`` reports it at its line.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Callable

from tickwire.framework.components import InvalidRecord, Transform, TransformSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.options import with_defaults
from tickwire.framework.schemas import ANNOTATION, StreamSchemaError, StreamSpec
from tickwire.plugins.normalize import Normalizer

CHECKS = ("type", "const", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength")
ANNOTATIONS = ("description", "title", "examples", "default", "$comment", "deprecated", ANNOTATION)
TOP_LEVEL_OK = ("$schema", "$id", "type", "required", "properties", "additionalProperties", *ANNOTATIONS)

_MISSING = object()
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
DEFAULT_MAX_CLOCK_SKEW_S = 3600


class UnsupportedSchema(Exception):
    """The schema uses keywords outside the subset this compiler handles."""


def compile_pattern(pattern: str) -> re.Pattern:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_ok(value: Any, types: list[str]) -> bool:
    if isinstance(value, bool) and "boolean" not in types:
        return False
    return any(isinstance(value, _PY_TYPES[t]) for t in types)


def _type_name(value: Any) -> str:
    return _JSON_TYPE_NAME.get(type(value), type(value).__name__)


def _is_finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)))


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 1.5 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} seconds"


class ClockWindow:
    """How far an event time (ms since the epoch) may be from the local clock."""

    def __init__(self, ahead_s: float, behind_s: float | None):
        self.ahead_s, self.behind_s = ahead_s, behind_s

    def expression(self, v: str) -> str:
        parts = [f"{v} - _time() * 1000.0 <= {self.ahead_s * 1000.0!r}"]
        if self.behind_s is not None:
            parts.append(f"_time() * 1000.0 - {v} <= {self.behind_s * 1000.0!r}")
        return " and ".join(parts)

    def explain(self, value: int) -> str | None:
        offset_s = value / 1000.0 - time.time()
        if offset_s > self.ahead_s:
            return f"{_short(value)} is {_duration(offset_s)} ahead of the local clock (max_clock_skew_seconds: {self.ahead_s:g})"
        if self.behind_s is not None and -offset_s > self.behind_s:
            return f"{_short(value)} is {_duration(-offset_s)} old (max_event_age_seconds: {self.behind_s:g})"
        return None


class _Field:
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
            if bound in prop and not _is_finite_number(prop[bound]):
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
            return f"{self.label}: expected {' or '.join(self.types)}, got {_type_name(value)} {_short(value)}"
        if "const" in p and not (value == p["const"] and type(value) is type(p["const"])):
            return f"{self.label}: expected {p['const']!r}, got {_short(value)}"
        if "enum" in p and value not in p["enum"]:
            return f"{self.label}: {_short(value)} is not one of {p['enum']!r}"
        if isinstance(value, str):
            if self.regex is not None and not self.regex.search(value):
                return f"{self.label}: {self._pattern_reason(value)}"
            if "minLength" in p and len(value) < p["minLength"]:
                return f"{self.label}: {_short(value)} is shorter than {p['minLength']}"
            if "maxLength" in p and len(value) > p["maxLength"]:
                return f"{self.label}: {_short(value)} is longer than {p['maxLength']}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in p and value < p["minimum"]:
                return f"{self.label}: {_short(value)} is less than the minimum {p['minimum']}"
            if "maximum" in p and value > p["maximum"]:
                return f"{self.label}: {_short(value)} is greater than the maximum {p['maximum']}"
            if self.clock is not None:
                reason = self.clock.explain(value)
                if reason:
                    return f"{self.label}: {reason}"
        return None

    def _pattern_reason(self, value: str) -> str:
        """Why a string fails the pattern; for decimals, whether it is negative or zero."""
        p = self.prop
        if not (self.logical == "decimal" or p["pattern"] == DECIMAL_PATTERN):
            return f"{_short(value)} does not match pattern {p['pattern']!r}"
        if _ANY_DECIMAL.match(value):
            search = self.regex.search
            allowed = "positive" if search("0") is None else "zero or positive"
            if value.startswith("-") and search("-1") is None and not _is_zero(value):
                return f"{_short(value)} is negative; the schema allows only {allowed} decimals"
            if _is_zero(value) and search("0") is None:
                return f"{_short(value)} is zero; the schema allows only positive decimals"
            return f"{_short(value)} does not match decimal pattern {p['pattern']!r} (too many digits?)"
        return f"{_short(value)} does not match decimal pattern"

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
        if self.regex is not None and self.logical in ("text", None) and not ({"minLength", "maxLength"} & set(p)):
            # text fields repeat (symbols): remember the values that matched, a set lookup
            # instead of a regex per record; bounded, so arbitrary input cannot grow it
            consts[f"{v}_seen"] = seen = set()
            search = self.regex.search

            def check(value, seen=seen, search=search):
                if search(value) is None:
                    return False
                if len(seen) < 4096:
                    seen.add(value)
                return True

            consts[f"{v}_check"] = check
            str_parts.append(f"({v} in {v}_seen or {v}_check({v}))")
        elif self.regex is not None:
            consts[f"{v}_re"] = self.regex.search
            str_parts.append(f"{v}_re({v}) is not None")
        if "minLength" in p:
            str_parts.append(f"len({v}) >= {int(p['minLength'])}")
        if "maxLength" in p:
            str_parts.append(f"len({v}) <= {int(p['maxLength'])}")
        if "minimum" in p:
            num_parts.append(f"{v} >= {p['minimum']!r}")
        if "maximum" in p:
            num_parts.append(f"{v} <= {p['maximum']!r}")
        if self.clock is not None:
            consts["_time"] = time.time
            num_parts.append(self.clock.expression(v))
        if str_parts:
            parts.append(" and ".join(str_parts) if is_str else f"(type({v}) is not str or ({' and '.join(str_parts)}))")
        if num_parts:
            guard = f"(type({v}) is not int and type({v}) is not float)"
            parts.append(" and ".join(num_parts) if is_num else f"({guard} or ({' and '.join(num_parts)}))")
        expr = " and ".join(parts) or "True"
        if not self.required:
            expr = f"({v} is _MISSING or ({expr}))"
        return expr


class Validator:
    """The compiled validator of one stream: a :class:`~tickwire.framework.components.FusableTransform`
    (call it like a function; :meth:`fuse` compiles it together with the stream's ``normalize``)."""

    def __init__(self, stream: StreamSpec, options: dict | None = None):
        self.stream = stream
        schema = stream.schema
        self.fields = _fields_of(schema, _clock_of(stream, with_defaults(CONFIG_SCHEMA, options)))
        self.required = list(schema.get("required", []))
        self.event_type = stream.event_type
        self.fn = self._compile()

    def __call__(self, record: dict) -> dict:
        return self.fn(record)

    def explain(self, record: Any) -> str:
        if not isinstance(record, dict):
            return f"payload is not a JSON object (got {_type_name(record)})"
        for name in self.required:
            if name not in record:
                f = self.fields.get(name)
                return f"missing required {f.label if f else f'field {name!r}'}"
        et = self.event_type
        if et is not None and "e" in record and record["e"] != et:
            return f"event type {_short(record['e'])} is not {et!r} (stream {self.stream.name!r})"
        for f in self.fields.values():
            value = record.get(f.name, _MISSING)
            if value is _MISSING:
                continue
            reason = f.explain(value)
            if reason:
                return reason
        return "failed validation"

    def _compile(self) -> Callable[[dict], dict]:
        consts: dict[str, Any] = {"_MISSING": _MISSING, "InvalidRecord": InvalidRecord, "explain": self.explain}
        self.names = names = {}
        required_lines, optional_lines, conds = [], [], []
        for i, f in enumerate(self.fields.values()):
            v = names[f.name] = f"v{i}"
            (required_lines if f.required else optional_lines).append(
                f"        {v} = r[{f.name!r}]" if f.required else f"    {v} = r.get({f.name!r}, _MISSING)"
            )
            conds.append(f.expression(v, consts))
        # required fields without a property definition: just presence
        for name in self.required:
            if name not in self.fields:
                required_lines.append(f"        r[{name!r}]")
        if self.event_type is not None:
            consts["event_type"] = self.event_type
            e = names.get("e")
            e_field = self.fields.get("e")
            if e_field is not None and e_field.prop.get("const", None) == self.event_type:
                pass  # the schema's const already checks it
            elif e is None:
                conds.append("r.get('e', event_type) == event_type")
            else:
                conds.append(f"({e} is _MISSING or {e} == event_type)" if "e" not in self.required else f"{e} == event_type")
        src = ["def validate(r):"]
        src.append("    try:")
        src.extend(required_lines or ["        r.get"])
        src.append("    except (KeyError, TypeError, AttributeError):")
        src.append("        raise InvalidRecord(explain(r)) from None")
        if optional_lines:
            src.append("    try:")
            src.extend("    " + line for line in optional_lines)
            src.append("    except (TypeError, AttributeError):")
            src.append("        raise InvalidRecord(explain(r)) from None")
        condition = " and \\\n       ".join(conds or ["True"])
        src.append("    if " + condition + ":")
        src.append("        return r")
        src.append("    raise InvalidRecord(explain(r))")
        self.source = "\n".join(src)
        # kept for fuse(): the same reads and the same condition, without the error handling
        self._reads = [line.strip() for line in required_lines + optional_lines]
        self._condition = condition
        self._consts = consts
        code = compile(self.source, f"<validate {self.stream.name}>", "exec")
        exec(code, consts)
        return consts["validate"]

    def fuse(self, following: Transform) -> Callable[[dict], dict] | None:
        """One function doing this validation and then ``following`` when that is the
        :class:`~tickwire.plugins.normalize.Normalizer` of the same stream; else None.

        It reads each field once into a local that both halves use, and saves a call per record.
        A record it rejects raises :class:`InvalidRecord` with the reason the step that rejected
        it gives (``step=1`` for normalize), so nothing runs twice."""
        if not isinstance(following, Normalizer) or following.stream is not self.stream:
            return None
        # only required fields: an optional one's local may hold _MISSING, not the value
        value_of = {name: v for name, v in self.names.items() if self.fields[name].required}
        lines, display, namespace = following.code(value_of)
        src = [
            "def validate_normalize(r):",
            "    try:",
            *("        " + line for line in self._reads or ["r.get"]),
            "    except (KeyError, TypeError, AttributeError):",
            "        raise InvalidRecord(explain(r)) from None",
            "    if not (" + self._condition + "):",
            "        raise InvalidRecord(explain(r))",
            "    try:",
            *("        " + line for line in lines),
            "        return " + display,
            *("    " + line for line in following.error_handlers(step=1)),
        ]
        namespace.update(self._consts)
        namespace.pop("validate", None)
        source = "\n".join(src)
        exec(compile(source, f"<validate+normalize {self.stream.name}>", "exec"), namespace)
        fused = namespace["validate_normalize"]
        fused.source = source
        return fused


def _is_zero(value: str) -> bool:
    return value.lstrip("-").replace("0", "").replace(".", "") == ""


def _clock_of(stream: StreamSpec, options: dict) -> tuple[str, ClockWindow] | None:
    """(payload field, window) for the stream's event-time field; None when it has none."""
    field_name = next((c.field for c in stream.columns if c.name == stream.event_time and c.field), None)
    if field_name is None:
        return None
    return field_name, ClockWindow(float(options["max_clock_skew_seconds"]), options["max_event_age_seconds"])


def _fields_of(schema: dict, clock: tuple[str, ClockWindow] | None = None) -> dict[str, _Field]:
    unknown = set(schema) - set(TOP_LEVEL_OK) - {"$defs"}
    if unknown:
        raise UnsupportedSchema(f"top-level keywords {sorted(unknown)}")
    if schema.get("type", "object") != "object":
        raise UnsupportedSchema("the schema's type must be 'object'")
    if schema.get("additionalProperties", True) is not True:
        raise UnsupportedSchema("additionalProperties other than true")
    required = set(schema.get("required", []))
    clock_field, window = clock if clock else (None, None)
    return {name: _Field(name, prop, name in required, window if name == clock_field else None)
            for name, prop in schema.get("properties", {}).items()}


def _fastjsonschema_validator(stream: StreamSpec, options: dict) -> Callable[[dict], dict]:
    import fastjsonschema

    try:
        check = fastjsonschema.compile(stream.schema)
    except (fastjsonschema.JsonSchemaDefinitionException, RecursionError, re.error) as exc:
        raise StreamSchemaError(f"the schema cannot be compiled to a validator: {exc}") from None
    et = stream.event_type
    clock = _clock_of(stream, options)
    clock_label = clock and (f"field {clock[0]!r}" + (f" ({stream.event_time})" if stream.event_time != clock[0] else ""))

    def validate(record: dict) -> dict:
        try:
            check(record)
        except fastjsonschema.JsonSchemaException as exc:
            raise InvalidRecord(exc.message) from None
        if et is not None and record.get("e", et) != et:
            raise InvalidRecord(f"event type {_short(record['e'])} is not {et!r} (stream {stream.name!r})")
        if clock is not None:
            value = record.get(clock[0])
            reason = clock[1].explain(value) if _is_finite_number(value) else None
            if reason:
                raise InvalidRecord(f"{clock_label}: {reason}")
        return record

    return validate


def make_validator(stream: StreamSpec, options: dict) -> Transform:
    """The transform of ``stream``: a :class:`Validator` (fusable), or fastjsonschema's."""
    options = with_defaults(CONFIG_SCHEMA, options)
    implementation = options["implementation"]
    if implementation == "compiled":
        try:
            return Validator(stream, options)
        except UnsupportedSchema:
            implementation = "fastjsonschema"
    if implementation == "fastjsonschema":
        return _fastjsonschema_validator(stream, options)
    raise ValueError(f"validate: unknown implementation {implementation!r}")


CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "implementation": {
            "enum": ["compiled", "fastjsonschema"],
            "default": "compiled",
            "description": "compiled: Python code generated from the stream schema (fastest; falls back to "
            "fastjsonschema when the schema uses keywords outside the supported subset). "
            "fastjsonschema: always use fastjsonschema.",
        },
        "max_clock_skew_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 31_536_000,
            "default": DEFAULT_MAX_CLOCK_SKEW_S,
            "description": "How far the event time (x-tickwire.event_time) may be ahead of the local clock; "
            "a later one is dead-lettered with the reason.",
        },
        "max_event_age_seconds": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 315_360_000,
            "default": None,
            "description": "How old an event time may be (null: no bound). Leave it unbounded or generous: "
            "gap fills replay trades from REST that are hours or days old.",
        },
    },
}


@hookimpl
def tickwire_register_transforms(register):
    register(
        TransformSpec(
            name="validate",
            factory=make_validator,
            description="Check each payload against the stream's JSON Schema (compiled to Python); "
            "invalid ones go to the dead-letter destination with the reason.",
            config_schema=CONFIG_SCHEMA,
        )
    )
