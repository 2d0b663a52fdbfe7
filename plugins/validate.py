"""``validate`` transform: checks each payload against its stream's JSON Schema, fast.

A generic JSON Schema validator costs 60–150 µs per message (``jsonschema``) — more than the
whole rest of the pipeline. Our stream schemas use a small subset (object with ``required`` and
``properties``; per property ``type``, ``const``, ``enum``, ``pattern``, ``minimum``,
``maximum``, ``minLength``, ``maxLength``), so at start-up this module generates one Python
function per stream whose happy path is a single boolean expression (≈1–2 µs per trade; each
field's checks and explanations: plugins/validate_fields.py).
Only a record that fails takes the slow path, which walks the schema to name the first problem:

    field 'p' (price): 'abc' does not match decimal pattern

A schema using anything outside the subset (``$ref``, ``anyOf``, ``additionalProperties:
false``…) falls back to ``fastjsonschema`` for that stream — still correct, a bit slower.
Unknown extra payload fields are tolerated. The payload's ``e`` must equal the stream's
``event_type`` (when ``e`` is present; it must be present if the schema requires it).

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

import re
from typing import Any, Callable

from tickwire.framework.components import InvalidRecord, Transform, TransformSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.options import with_defaults
from tickwire.framework.schemas import StreamSchemaError, StreamSpec
from tickwire.plugins.normalize import Normalizer
from tickwire.plugins.validate_fields import MISSING, ClockWindow, UnsupportedSchema, fields_of, is_finite_number, short, type_name

DEFAULT_MAX_CLOCK_SKEW_S = 3600


class Validator:
    """The compiled validator of one stream: a :class:`~tickwire.framework.components.FusableTransform`
    (call it like a function; :meth:`fuse` compiles it together with the stream's ``normalize``)."""

    def __init__(self, stream: StreamSpec, options: dict | None = None):
        self.stream = stream
        schema = stream.schema
        clock = _clock_of(stream, with_defaults(CONFIG_SCHEMA, options))
        self.clock = clock[1] if clock else None
        self.fields = fields_of(schema, clock)
        self.required = list(schema.get("required", []))
        self.event_type = stream.event_type
        self.fn = self._compile()

    def __call__(self, record: dict) -> dict:
        return self.fn(record)

    def explain(self, record: Any) -> str:
        if not isinstance(record, dict):
            return f"payload is not a JSON object (got {type_name(record)})"
        for name in self.required:
            if name not in record:
                f = self.fields.get(name)
                return f"missing required {f.label if f else f'field {name!r}'}"
        et = self.event_type
        if et is not None and "e" in record and record["e"] != et:
            return f"event type {short(record['e'])} is not {et!r} (stream {self.stream.name!r})"
        for f in self.fields.values():
            value = record.get(f.name, MISSING)
            if value is MISSING:
                continue
            reason = f.explain(value)
            if reason:
                return reason
        return "failed validation"

    def _compile(self) -> Callable[[dict], dict]:
        consts: dict[str, Any] = {"MISSING": MISSING, "InvalidRecord": InvalidRecord, "explain": self.explain}
        self.names = names = {}
        required_lines, optional_lines, conds = [], [], []
        for i, f in enumerate(self.fields.values()):
            v = names[f.name] = f"v{i}"
            (required_lines if f.required else optional_lines).append(
                f"        {v} = r[{f.name!r}]" if f.required else f"    {v} = r.get({f.name!r}, MISSING)"
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
                conds.append(f"({e} is MISSING or {e} == event_type)" if "e" not in self.required else f"{e} == event_type")
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
        # only required fields: an optional one's local may hold MISSING, not the value
        value_of = {name: v for name, v in self.names.items() if self.fields[name].required}
        # the clock read normalize makes for ingested_at refreshes the clock bound for free
        refresh = [self.clock.refresh_line("n")] if self.clock is not None else []
        lines, display, namespace = following.code(value_of, refresh)
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


def _clock_of(stream: StreamSpec, options: dict) -> tuple[str, ClockWindow] | None:
    """(payload field, window) for the stream's event-time field; None when it has none."""
    field_name = next((c.field for c in stream.columns if c.name == stream.event_time and c.field), None)
    if field_name is None:
        return None
    return field_name, ClockWindow(float(options["max_clock_skew_seconds"]), options["max_event_age_seconds"])


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
            raise InvalidRecord(f"event type {short(record['e'])} is not {et!r} (stream {stream.name!r})")
        if clock is not None:
            value = record.get(clock[0])
            reason = clock[1].explain(value) if is_finite_number(value) else None
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
