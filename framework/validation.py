"""JSON Schema validation of documents, with every error turned into a :class:`Problem` at its
line and column.

:data:`DocumentValidator` is Draft 2020-12 with two changes that make ``validate`` strict where
``run`` needs it and bounded in time on hostile input:

* ``integer`` means a Python ``int`` (``batch_size: 1.0e+20`` is a float, not an integer) and
  ``number`` means a *finite* int or float (``retry_max_s: .inf`` and ``.nan`` are refused);
* ``uniqueItems`` is checked in linear time (jsonschema compares unhashable items pairwise).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, ValidationError

from tickwire.framework.problems import Problem, dotted

SYMBOL_HINT = "^[A-Z0-9]{2,20}"


def _is_integer(checker, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker, instance: Any) -> bool:
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and math.isfinite(instance))


def _canonical(item: Any) -> str:
    try:
        return json.dumps(item, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):  # mixed key types, say: still deterministic
        return repr(item)


def _unique_items(validator, unique: bool, instance: Any, schema: dict):
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[str] = set()
    for item in instance:
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"{_short(item)} appears more than once (items must be unique)")
            return
        seen.add(key)


DocumentValidator = jsonschema.validators.extend(
    Draft202012Validator,
    validators={"uniqueItems": _unique_items},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number}),
)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_problems(doc, schema: dict) -> list[Problem]:
    """``doc`` (a :class:`tickwire.framework.documents.Document`) against ``schema``."""
    problems = []
    for error in DocumentValidator(schema).iter_errors(doc.data):
        problems += describe(doc, error)
    return dedupe(problems)


def option_problems(doc, path: tuple, options: dict, schema: dict | None) -> list[Problem]:
    """A plugin's options (a transform's, say) against its option schema, reported at ``path``."""
    if not schema:
        return []
    problems = []
    for error in DocumentValidator(schema).iter_errors(options):
        error.relative_path.extendleft(reversed(path))  # top-level errors: absolute_path == relative_path
        problems += describe(doc, error)
    return problems


def dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (str(p.mark), p.path, p.reason)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def describe(doc, error: ValidationError) -> list[Problem]:
    """One jsonschema error as problems a human can act on, at the right line."""
    path = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        out = []
        for key in error.instance:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            reason = f"unknown field '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})")
            out.append(Problem(doc.mark(path + (key,), key=True), dotted(path + (key,)), reason))
        return out
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [Problem(doc.mark(path), dotted(path), f"missing required field '{missing}'")]
    if kind in ("allOf", "if"):
        return []  # the branch's own errors are reported with their exact paths
    if kind == "enum" and path and path[-1] == "type" and len(path) == 3 and path[0] in ("sinks", "sources"):
        kinds = "sink" if path[0] == "sinks" else "source"
        options = ", ".join(error.validator_value) or "none"
        hint = difflib.get_close_matches(str(error.instance), list(error.validator_value), n=1)
        extra = f"; did you mean '{hint[0]}'?" if hint else ""
        return [Problem(doc.mark(path), dotted(path), f"unknown {kinds} type '{error.instance}' (installed: {options}{extra}); see `tickwire plugins`")]
    if kind == "pattern":
        reason = f"{_short(error.instance)} does not match {error.validator_value}"
        if error.validator_value.startswith(SYMBOL_HINT):
            reason = f"{_short(error.instance)} is not a valid symbol (2-20 uppercase letters or digits, e.g. BTCUSDT)"
        elif error.validator_value.startswith("^(?!sqlite_)[a-z_]") or error.validator_value.startswith("^[a-z_][a-z0-9_]"):
            longest = re.search(r"\{0,(\d+)\}", error.validator_value)
            most = int(longest.group(1)) + 1 if longest else 63
            reason = (f"{_short(error.instance)} is not a safe SQL identifier (lowercase letters, digits, _; at most {most}; "
                      "not starting with a digit or 'sqlite_')")
        elif "249" in error.validator_value:
            reason = f"{_short(error.instance)} is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"
        return [Problem(doc.mark(path), dotted(path), reason)]
    if kind == "propertyNames":
        return [Problem(doc.mark(path + (error.instance,), key=True), dotted(path + (error.instance,)), f"name {_short(error.instance)} is not allowed here: {error.message}")]
    if kind == "type" and isinstance(error.instance, float):
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if not math.isfinite(error.instance) and ("number" in wanted or "integer" in wanted):
            return [Problem(doc.mark(path), dotted(path), f"{error.instance} is not a finite number")]
        if "integer" in wanted:
            return [Problem(doc.mark(path), dotted(path), f"{error.instance!r} is not an integer (write it without a decimal point or exponent)")]
    message = error.message
    if len(message) > 200:
        message = message[:197] + "..."
    return [Problem(doc.mark(path), dotted(path), message)]
