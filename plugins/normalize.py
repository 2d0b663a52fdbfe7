"""``normalize`` transform: payload → the normalized record (docs/architecture.md).

Renames payload fields to column names (the schema's ``x-tickwire`` annotations), keeps
decimals as the exact strings Binance sent, turns ``timestamp_ms`` integers into ISO-8601 UTC
strings with milliseconds (``2023-01-01T00:00:00.136Z``), keeps integers, booleans and text
as they are, and adds ``ingested_at``. Fields without a ``column`` are dropped. With the
option ``include_raw: true`` the payload as Binance sent it rides along under ``raw`` (the Kafka
value then carries both; table sinks store only the schema's columns).

Like ``validate``, the per-stream function is generated at start-up: one dict display per
record. A timestamp is one lookup in a bounded millisecond → string dict; a new millisecond is
formatted from a cached per-second prefix plus a precomputed ``".mmmZ"`` suffix, so
``datetime`` runs once per distinct second, not per record.
Run it after ``validate``: it assumes the types are right (a missing required field still
raises :class:`InvalidRecord`).
"""

from __future__ import annotations

import time

from tickwire.framework.components import InvalidRecord, TransformSpec
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.options import with_defaults
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.timestamps import _iso_ms_remembered, _strings, iso_ms, iso_ms_or_none

RAW_KEY = "raw"


def normalize_code(stream: StreamSpec, value_of: dict[str, str] | None = None,
                   include_raw: bool = False, every_millisecond: list[str] = ()) -> tuple[list[str], str, dict]:
    """The body of the generated normalizer: statement lines, the record's dict display and the
    names they use. ``value_of`` maps a payload field to an expression already holding its value
    (the fused validate → normalize function passes its local variables); other fields are read
    from ``r``. ``include_raw`` adds the payload itself under ``raw``. ``every_millisecond``:
    statements run when the clock read for ``ingested_at`` (``n``, in ms) is a new millisecond
    (the fused validator refreshes its clock bound there); ignored without that column."""
    value_of = value_of or {}
    lines, items = [], []
    for i, col in enumerate(stream.columns):
        if col.name == "ingested_at" and not col.field:
            # the clock is read per record, but formatted once per millisecond
            lines += [
                "n = _time_ns() // 1000000",
                "if n != _last[0]:",
                "    _last[0] = n; _last[1] = _iso_ms(n)",
                *("    " + line for line in every_millisecond),
            ]
            items.append(f"{col.name!r}: _last[1]")
            continue
        value = value_of.get(col.field) or f"r[{col.field!r}]"
        if col.logical == "timestamp_ms" and not col.nullable:
            # one dict lookup per timestamp; iso_ms only for a millisecond not seen recently
            lines.append(f"x{i} = {value}")
            items.append(f"{col.name!r}: _T.get(x{i}) or _iso_ms_remembered(x{i})")
            continue
        if col.nullable:
            value = value_of.get(col.field) or f"r.get({col.field!r})"
        if col.logical == "timestamp_ms":
            value = f"_iso_ms_or_none({value})"
        items.append(f"{col.name!r}: {value}")
    if include_raw:
        if any(col.name == RAW_KEY for col in stream.columns):
            raise ValueError(f"stream {stream.name!r} has a column named {RAW_KEY!r}: include_raw would overwrite it")
        items.append(f"{RAW_KEY!r}: r")  # the payload dict itself: nothing is copied
    namespace = {
        "_T": _strings, "_iso_ms_remembered": _iso_ms_remembered, "_iso_ms": iso_ms, "_iso_ms_or_none": iso_ms_or_none,
        "_time_ns": time.time_ns, "_last": [None, None], "InvalidRecord": InvalidRecord,
    }
    return lines, "{" + ", ".join(items) + "}", namespace


class Normalizer:
    """The generated normalizer of one stream; call it like a function. ``validate`` fuses
    itself with it (:meth:`code`, :meth:`error_handlers`)."""

    def __init__(self, stream: StreamSpec, options: dict):
        self.stream = stream
        self.include_raw = bool(with_defaults(CONFIG_SCHEMA, options)["include_raw"])
        lines, display, ns = self.code()
        self.source = "\n".join([
            "def normalize(r):",
            "    try:",
            *("        " + line for line in lines),
            "        return " + display,
            *("    " + line for line in self.error_handlers(step=0)),
        ])
        exec(compile(self.source, f"<normalize {stream.name}>", "exec"), ns)
        self.fn = ns["normalize"]

    def __call__(self, record: dict) -> dict:
        return self.fn(record)

    def code(self, value_of: dict[str, str] | None = None, every_millisecond: list[str] = ()) -> tuple[list[str], str, dict]:
        """:func:`normalize_code` of this stream with this normalizer's options."""
        return normalize_code(self.stream, value_of, self.include_raw, every_millisecond)

    def error_handlers(self, step: int) -> list[str]:
        """The ``except`` clauses that turn a failure of the generated body into
        InvalidRecord (``step``: its place in a fused function)."""
        return [
            "except KeyError as exc:",
            f"    raise InvalidRecord(f'missing field {{exc.args[0]!r}}', {step}) from None",
            "except (TypeError, IndexError, ValueError, OverflowError, OSError) as exc:",
            f"    raise InvalidRecord(f'cannot normalize {self.stream.name} record: {{exc}}', {step}) from None",
        ]


def make_normalizer(stream: StreamSpec, options: dict) -> Normalizer:
    """Generate ``normalize(record) -> dict`` for ``stream`` (see the module docstring)."""
    return Normalizer(stream, options)


CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "include_raw": {
            "type": "boolean",
            "default": False,
            "description": "Also keep the payload as the source sent it, under `raw` (carried "
            "in the Kafka value; table sinks store only the schema's columns).",
        },
    },
}


@hookimpl
def tickwire_register_transforms(register):
    register(
        TransformSpec(
            name="normalize",
            factory=make_normalizer,
            description="Rename payload fields to columns, exact decimal strings, ISO-8601 UTC "
            "millisecond timestamps, plus ingested_at.",
            config_schema=CONFIG_SCHEMA,
        )
    )
