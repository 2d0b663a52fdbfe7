"""One builder for the streams.yaml a test or a benchmark runs ``tickwire`` with.

A stream named like one of tickwire's own (``trade``, ``ticker``, ``ticker_1h``) starts from the
block in the streams.yaml tickwire ships, with its schema pointing at the shipped schema file;
what the caller gives for that stream is laid over it. So the channel, schema and table of a
stream are declared once, in the shipped streams.yaml::

    text = streams_yaml(
        sources={"binance": {"type": "binance", "url": sim.ws_url, "rest_url": sim.rest_url}},
        symbols=["BTCUSDT", "ETHUSDT"],
        sinks={"sqlite": {"type": "sqlite", "path": "out.db"},
               "dead-letter-file": {"type": "jsonl", "path": "dead.jsonl"}},
        profiles={"local": {"sinks": ["sqlite"], "dead_letter": "dead-letter-file"}},
        engine={"batch_size": 500},
    )

The first profile is the default one. ``write_streams_yaml(path, ...)`` writes the same text.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tickwire.framework.schemas import shipped_schemas

CONFIG_VERSION = 1


@lru_cache(maxsize=1)
def shipped_streams() -> dict[str, dict]:
    """The ``streams`` blocks of the streams.yaml tickwire ships, schemas as absolute paths."""
    text = (resources.files("tickwire") / "streams.yaml").read_text(encoding="utf-8")
    schemas = Path(str(shipped_schemas())).resolve()
    blocks = yaml.safe_load(text)["streams"]
    for block in blocks.values():
        block["schema"] = str(schemas / Path(block["schema"]).name)
    return blocks


def stream_block(name: str, overrides: Mapping[str, Any] | None = None) -> dict:
    """The block of stream ``name``: tickwire's own (if it has one) with ``overrides`` laid over."""
    block = copy.deepcopy(shipped_streams().get(name, {}))
    block.update(copy.deepcopy(dict(overrides or {})))
    if "schema" not in block:
        raise ValueError(f"stream {name!r} is not one tickwire ships: give its channel, schema and table")
    return block


def streams_config(
    *,
    sinks: Mapping[str, Mapping[str, Any]],
    profiles: Mapping[str, Mapping[str, Any]],
    sources: Mapping[str, Mapping[str, Any]] | None = None,
    streams: Iterable[str] | Mapping[str, Mapping[str, Any]] = ("trade",),
    symbols: Iterable[str] | Mapping[str, Any] = ("BTCUSDT",),
    engine: Mapping[str, Any] | None = None,
    derived: Mapping[str, Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict:
    """A streams.yaml document as a dict (see the module docstring).

    ``streams``: names of tickwire's streams, or name → block (laid over tickwire's block of
    that name, if any). ``sources`` defaults to one ``binance`` source with its default options.
    Sections left as None are left out (the core's defaults apply)."""
    if not profiles:
        raise ValueError("at least one profile: it names the sinks a run writes to")
    stream_items = streams.items() if isinstance(streams, Mapping) else ((name, {}) for name in streams)
    config: dict[str, Any] = {
        "version": CONFIG_VERSION,
        "default_profile": next(iter(profiles)),
        "sources": copy.deepcopy(dict(sources or {"binance": {"type": "binance"}})),
        "symbols": dict(symbols) if isinstance(symbols, Mapping) else list(symbols),  # a mapping: a selector
        "streams": {name: stream_block(name, block) for name, block in stream_items},
        "sinks": copy.deepcopy(dict(sinks)),
        "profiles": copy.deepcopy(dict(profiles)),
    }
    for section, value in (("derived", derived), ("engine", engine), ("metrics", metrics)):
        if value is not None:
            config[section] = copy.deepcopy(dict(value))
    return config


def streams_yaml(**sections: Any) -> str:
    """:func:`streams_config` as YAML text."""
    return yaml.safe_dump(streams_config(**sections), sort_keys=False, default_flow_style=False)


def write_streams_yaml(path: str | Path, **sections: Any) -> Path:
    """Write :func:`streams_yaml` to ``path`` (a folder gets ``streams.yaml``); returns the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "streams.yaml"
    path.write_text(streams_yaml(**sections), encoding="utf-8")
    return path
