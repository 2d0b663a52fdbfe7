"""Component options completed from their JSON Schema: the defaults are written once, in the
schema, and the core fills them in before it calls a factory (``_Spec.complete``)."""

from __future__ import annotations

import copy
from typing import Any


def with_defaults(schema: dict | None, options: dict | None) -> dict:
    """A copy of ``options`` with every ``default`` of ``schema``'s ``properties`` that is not
    given, recursively into nested objects (a given nested object gets its own defaults; an
    absent one only if the schema gives it a default). Values given are kept as they are."""
    filled = dict(options or {})
    for name, prop in ((schema or {}).get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        if name not in filled:
            if "default" not in prop:
                continue
            filled[name] = copy.deepcopy(prop["default"])
        if isinstance(filled[name], dict) and "properties" in prop:
            filled[name] = with_defaults(prop, filled[name])
    return filled


def schema_default(schema: dict, name: str) -> Any:
    """The ``default`` of property ``name`` of an object schema (KeyError when it has none)."""
    return schema["properties"][name]["default"]
