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
"""

from __future__ import annotations

import re
from typing import Any, Callable

from framework.components import InvalidRecord, TransformSpec
from framework.hookspecs import hookimpl
from framework.schemas import ANNOTATION, StreamSpec

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


class _Field:
    """One property of the schema with its checks, shared by the fast and the slow path."""

    def __init__(self, name: str, prop: dict, required: bool):
        unknown = set(prop) - set(CHECKS) - set(ANNOTATIONS)
        if unknown:
            raise UnsupportedSchema(f"property {name!r} uses {sorted(unknown)}")
        self.name = name
        self.prop = prop
        self.required = required
        note = prop.get(ANNOTATION) or {}
        self.column = note.get("column")
        self.logical = note.get("type")
        t = prop.get("type")
        self.types = [t] if isinstance(t, str) else list(t or [])
        if any(t not in _TYPE_TEST for t in self.types):
            raise UnsupportedSchema(f"property {name!r} has type {t!r}")
        self.regex = compile_pattern(prop["pattern"]) if "pattern" in prop else None

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
                kind = "decimal pattern" if self.logical == "decimal" or p["pattern"] == DECIMAL_PATTERN else f"pattern {p['pattern']!r}"
                return f"{self.label}: {_short(value)} does not match {kind}"
            if "minLength" in p and len(value) < p["minLength"]:
                return f"{self.label}: {_short(value)} is shorter than {p['minLength']}"
            if "maxLength" in p and len(value) > p["maxLength"]:
                return f"{self.label}: {_short(value)} is longer than {p['maxLength']}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in p and value < p["minimum"]:
                return f"{self.label}: {_short(value)} is less than the minimum {p['minimum']}"
            if "maximum" in p and value > p["maximum"]:
                return f"{self.label}: {_short(value)} is greater than the maximum {p['maximum']}"
        return None

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
    """The compiled validator of one stream; call it like a transform."""

    def __init__(self, stream: StreamSpec):
        self.stream = stream
        schema = stream.schema
        self.fields = _fields_of(schema)
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
        fn = consts["validate"]
        fn.source = self.source
        fn.fuse = self.fuse
        return fn

    def fuse(self, following: Callable) -> Callable[[dict], dict] | None:
        """One function doing this validation and then ``following`` when that is the generated
        ``normalize`` of the same stream; else None.

        It reads each field once into a local that both halves use, and saves a call per record.
        It is for the happy path only: on any error it raises without a good reason, and the
        engine then runs the transforms one by one to name the reason and the transform."""
        normalize_code = getattr(following, "normalize_code", None)
        if normalize_code is None or getattr(following, "stream", None) is not self.stream:
            return None
        # only required fields: an optional one's local may hold _MISSING, not the value
        value_of = {name: v for name, v in self.names.items() if self.fields[name].required}
        lines, display, namespace = normalize_code(self.stream, value_of)
        src = [
            "def validate_normalize(r):",
            *("    " + line for line in self._reads or ["r.get"]),
            "    if not (" + self._condition + "):",
            "        raise InvalidRecord('invalid: run validate alone for the reason')",
            *("    " + line for line in lines),
            "    return " + display,
        ]
        namespace.update(self._consts)
        namespace.pop("validate", None)
        source = "\n".join(src)
        exec(compile(source, f"<validate+normalize {self.stream.name}>", "exec"), namespace)
        fused = namespace["validate_normalize"]
        fused.source = source
        return fused


def _fields_of(schema: dict) -> dict[str, _Field]:
    unknown = set(schema) - set(TOP_LEVEL_OK) - {"$defs"}
    if unknown:
        raise UnsupportedSchema(f"top-level keywords {sorted(unknown)}")
    if schema.get("type", "object") != "object":
        raise UnsupportedSchema("the schema's type must be 'object'")
    if schema.get("additionalProperties", True) is not True:
        raise UnsupportedSchema("additionalProperties other than true")
    required = set(schema.get("required", []))
    return {name: _Field(name, prop, name in required) for name, prop in schema.get("properties", {}).items()}


def _fastjsonschema_validator(stream: StreamSpec) -> Callable[[dict], dict]:
    import fastjsonschema

    check = fastjsonschema.compile(stream.schema)
    et = stream.event_type

    def validate(record: dict) -> dict:
        try:
            check(record)
        except fastjsonschema.JsonSchemaException as exc:
            raise InvalidRecord(exc.message) from None
        if et is not None and record.get("e", et) != et:
            raise InvalidRecord(f"event type {_short(record['e'])} is not {et!r} (stream {stream.name!r})")
        return record

    return validate


def make_validator(stream: StreamSpec, options: dict) -> Callable[[dict], dict]:
    implementation = options.get("implementation", "compiled")
    if implementation == "compiled":
        try:
            return Validator(stream).fn
        except UnsupportedSchema:
            implementation = "fastjsonschema"
    if implementation == "fastjsonschema":
        return _fastjsonschema_validator(stream)
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
        }
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
