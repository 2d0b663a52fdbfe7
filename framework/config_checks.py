"""The checks of streams.yaml beyond its JSON Schema (framework/config.py runs them on load).

References between sections (a stream's source, a profile's sinks and streams, a derived
block's origin), table and topic names used twice or reserved, selectors that include and
exclude one symbol, index names PostgreSQL would cut, retention without a time column. Each
stream's schema file is loaded and checked, the stream's :class:`StreamSpec` built, and its
transforms built exactly as ``run`` builds them (the compiled record validator and normalizer,
and their fused form): a schema they cannot compile is a config error at its line, not a failure
at start-up or on every record.

Stream schemas must lie inside the config file's folder (its "project") or tickwire's own
``schemas/`` folder, so that a config cannot make tickwire read, and echo in error messages,
arbitrary files of the machine it is validated on. The operator — not the config — may lift
this with the environment variable ``TICKWIRE_ALLOW_OUTSIDE_PATHS=1``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Mapping, Protocol

from tickwire.framework import documents
from tickwire.framework.components import FusableTransform
from tickwire.framework.config_schema import BASE_SCHEMA, bounded
from tickwire.framework.documents import Document, DocumentError, Problem, dotted
from tickwire.framework.options import with_defaults
from tickwire.framework.plugins import PluginManager
from tickwire.framework.schema_checks import check_stream_schema
from tickwire.framework.schemas import StreamSchemaError, StreamSpec, TopicSpec, shipped_schemas
from tickwire.framework.validation import option_problems

DEFAULT_TRANSFORMS = BASE_SCHEMA["properties"]["streams"]["additionalProperties"]["properties"]["transforms"]["default"]
ALLOW_OUTSIDE_PATHS = "TICKWIRE_ALLOW_OUTSIDE_PATHS"
# Tables the stores create for themselves: a stream or derived table of that name would clash.
RESERVED_TABLES = ("dead_letters", "stream_progress", "trade_gaps")
SHIPPED_SCHEMAS = Path(str(shipped_schemas())).resolve()  # tickwire's own schemas/: always readable


class ConfigBeingLoaded(Protocol):
    """What the checks read of the :class:`tickwire.framework.config.Config` being loaded (the
    config module imports this one, never the other way round), and the two tables they fill."""

    dir: Path
    doc: Document
    data: dict
    manager: PluginManager
    streams: dict[str, StreamSpec]
    stream_schemas: dict[str, Document]

    @property
    def symbols(self) -> list[str] | dict: ...

    def resolve_path(self, value: str | os.PathLike) -> Path: ...


def cross_check(config: ConfigBeingLoaded) -> list[Problem]:
    """Every problem the JSON Schema cannot see; fills ``config.streams`` and
    ``config.stream_schemas`` with the streams whose schema loaded."""
    doc, data, manager = config.doc, config.data, config.manager
    problems: list[Problem] = []

    def problem(path: tuple, reason: str, key: bool = False) -> None:
        problems.append(Problem(doc.mark(path, key=key), dotted(path), reason))

    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    sinks = data.get("sinks") if isinstance(data.get("sinks"), dict) else {}
    streams = data.get("streams") if isinstance(data.get("streams"), dict) else {}
    tables: dict[str, tuple] = {}
    topics: dict[str, tuple] = {}

    def claim(registry: dict, value: str, path: tuple, what: str) -> None:
        if what == "table" and value in RESERVED_TABLES:
            problem(path, f"table name '{value}' is reserved (tickwire creates it: {', '.join(RESERVED_TABLES)})")
        elif value in registry:
            first = doc.mark(registry[value])
            problem(path, f"{what} '{value}' is already used by {dotted(registry[value][:2])} (line {first.line})")
        else:
            registry[value] = path

    for name, block in streams.items():
        if not isinstance(block, dict):
            continue
        base = ("streams", name)
        source = block.get("source")
        if source is None and len(sources) > 1:
            problem(base, f"several sources are declared ({', '.join(sources)}): say which one with 'source:'")
        elif isinstance(source, str) and source not in sources:  # another type: the schema check says
            problem(base + ("source",), f"no source '{source}' (declared: {', '.join(sources) or 'none'})")
        if isinstance(block.get("table"), str):
            claim(tables, block["table"], base + ("table",), "table")
        topic = block.get("topic")
        if isinstance(topic, dict) and isinstance(topic.get("name"), str):
            claim(topics, topic["name"], base + ("topic", "name"), "topic")
        for i, transform in enumerate(block.get("transforms", [])):
            tname = transform if isinstance(transform, str) else next(iter(transform), None) if isinstance(transform, dict) else None
            if tname is not None and tname not in manager.transforms:
                installed = ", ".join(sorted(manager.transforms)) or "none"
                problem(base + ("transforms", i), f"unknown transform '{tname}' (installed: {installed})")
            elif isinstance(transform, dict) and isinstance(transform.get(tname), dict):
                option_schema = manager.transforms[tname].config_schema
                problems.extend(option_problems(doc, base + ("transforms", i, tname), transform[tname],
                                                bounded(copy.deepcopy(option_schema)) if option_schema else None))
        if isinstance(block.get("schema"), str):
            schema_doc, found = _load_stream_schema(config, block["schema"], base + ("schema",))
            problems.extend(found)
            if schema_doc is not None and not found:
                config.stream_schemas[name] = schema_doc
                try:
                    spec = config.streams[name] = _stream_spec(config, name, block, schema_doc)
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue  # a malformed block (a misspelt `tabel:`…): the streams.yaml schema check says where
                if not problems:  # transforms and options known and valid: build them as run will
                    problems.extend(_transform_problems(config, spec, block, schema_doc))

    problems += _selector_problems(doc, data)
    problems += _unresolvable_selectors(doc, data, manager)

    for name, spec in config.streams.items():
        time_column = spec.partition_time or spec.event_time
        index = f"{spec.table}_symbol_{time_column}_idx"
        if time_column and len(index) > 63:
            problem(("streams", name, "table"), f"table '{spec.table}' with time column '{time_column}' gives the "
                    f"index name '{index}', longer than PostgreSQL's 63 characters; shorten the table name")
        if spec.retention_days is not None and spec.partition_time is None:
            problem(("streams", name, "retention"), f"stream '{name}' has no time column to expire rows by: its schema needs "
                    "a required event_time or an x-tickwire.partition_time column")

    for name, block in (data.get("derived") or {}).items():
        if not isinstance(block, dict):
            continue
        base = ("derived", name)
        if isinstance(block.get("table"), str):
            claim(tables, block["table"], base + ("table",), "table")
        origin = block.get("from")
        if isinstance(origin, str):
            if origin not in streams:
                problem(base + ("from",), f"no stream '{origin}' to derive from (streams: {', '.join(streams)})")
            elif origin in config.streams:
                have = {c.name for c in config.streams[origin].columns}
                need = {"symbol", "price", "quantity", "trade_id", "event_time"}
                if not need <= have:
                    problem(base + ("from",), f"candles need a trade stream with columns {', '.join(sorted(need))}; '{origin}' lacks {', '.join(sorted(need - have))}")

    profiles = data.get("profiles") if isinstance(data.get("profiles"), dict) else {}
    for name, block in profiles.items():
        if not isinstance(block, dict):
            continue
        base = ("profiles", name)
        for i, sink in enumerate(block.get("sinks", []) or []):
            if sink not in sinks:
                problem(base + ("sinks", i), f"no sink '{sink}' (declared: {', '.join(sinks) or 'none'})")
        dead = block.get("dead_letter")
        if dead is not None:
            if dead not in sinks:
                problem(base + ("dead_letter",), f"no sink '{dead}' (declared: {', '.join(sinks) or 'none'})")
            else:
                spec = manager.sinks.get(sinks[dead].get("type") if isinstance(sinks[dead], dict) else None)
                if spec is not None and not spec.supports_dead_letters:
                    problem(base + ("dead_letter",), f"sink '{dead}' (type {spec.name}) cannot take dead letters")
        for i, stream in enumerate(block.get("streams", []) or []):
            if stream not in streams:
                problem(base + ("streams", i), f"no stream '{stream}'")
    default = data.get("default_profile", "local")
    if profiles and default not in profiles:
        problem(("default_profile",) if "default_profile" in data else ("profiles",), f"default profile '{default}' is not declared (profiles: {', '.join(profiles)})")
    return problems


def outside_paths_allowed(environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(ALLOW_OUTSIDE_PATHS, "")
    return value.strip().lower() in ("1", "true", "yes")


def _load_stream_schema(config: ConfigBeingLoaded, ref: str, at: tuple) -> tuple[Document | None, list[Problem]]:
    path = config.resolve_path(ref)
    where = config.doc.mark(at)
    project = config.dir.resolve()
    try:
        resolved = path.resolve()
        inside = resolved.is_relative_to(project) or resolved.is_relative_to(SHIPPED_SCHEMAS)
    except (OSError, RuntimeError):  # a symlink loop, say
        inside = False
    if not inside and not outside_paths_allowed():
        # checked before anything is read: neither the contents nor the existence of the file leak
        return None, [Problem(where, dotted(at), f"schema file '{ref}' is outside the project folder {project} "
                                                 f"(set {ALLOW_OUTSIDE_PATHS}=1 in the environment to allow it)")]
    if not path.is_file():
        return None, [Problem(where, dotted(at), f"schema file '{ref}' not found (resolved to {path})")]
    # shown as the user wrote it, next to the config file's own name
    display = os.path.normpath(os.path.join(os.path.dirname(config.doc.file), ref)) if not Path(ref).is_absolute() else ref
    try:
        schema_doc = documents.load(path, environ={}, display_name=display)
    except DocumentError as exc:
        return None, exc.problems
    except OSError as exc:
        return None, [Problem(where, dotted(at), f"cannot read schema file '{ref}': {exc.strerror or exc}")]
    return schema_doc, check_stream_schema(schema_doc)


def _transform_problems(config: ConfigBeingLoaded, spec: StreamSpec, block: dict, schema_doc: Document) -> list[Problem]:
    """Build the stream's transforms exactly as ``run`` does (and the fused validate+normalize),
    so what they cannot compile is reported here, at the schema line or the transform entry."""
    built = []
    for i, (tname, options) in enumerate(spec.transforms):
        tspec = config.manager.transforms[tname]
        at = ("streams", spec.name, "transforms", i) if "transforms" in block else ("streams", spec.name)
        about = f"transform '{tname}' (plugin {tspec.plugin or tname}), stream '{spec.name}'"
        try:
            built.append(tspec.factory(spec, tspec.complete(options)))
            if len(spec.transforms) == 2 and i == 1 and isinstance(built[0], FusableTransform):
                built[0].fuse(built[1])  # the engine runs this form on the hot path
        except StreamSchemaError as exc:
            return [Problem(schema_doc.mark(exc.at), dotted(exc.at), f"{exc.reason} ({about})")]
        except Exception as exc:  # a plugin's factory: whatever it raises, validate must say so
            return [Problem(config.doc.mark(at), dotted(at), f"{about} cannot be built: {type(exc).__name__}: {exc}")]
    return []


def _selector_problems(doc: Document, data: dict) -> list[Problem]:
    """A symbol both included and excluded by a ``symbols:`` selector (top level or a stream's)."""
    places = [("symbols",)] + [("streams", name, "symbols") for name in (data.get("streams") or {})]
    problems = []
    for path in places:
        block = data
        for key in path:
            block = block.get(key) if isinstance(block, dict) else None
        rule = block.get("select") if isinstance(block, dict) else None
        if not isinstance(rule, dict) or not isinstance(rule.get("include"), list) or not isinstance(rule.get("exclude"), list):
            continue
        for i, symbol in enumerate(rule["exclude"]):
            if symbol in rule["include"]:
                at = path + ("select", "exclude", i)
                problems.append(Problem(doc.mark(at), dotted(at), f"{symbol} is both included and excluded"))
    return problems


def _unresolvable_selectors(doc: Document, data: dict, manager) -> list[Problem]:
    """A stream whose ``symbols:`` (its own or the top-level one) is a selector, on a source type
    that cannot resolve one: it would get no symbol at all."""
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    streams = data.get("streams") if isinstance(data.get("streams"), dict) else {}  # else the schema check says
    problems = []
    for name, block in streams.items():
        if not isinstance(block, dict):
            continue
        own = block.get("symbols")
        path = ("streams", name, "symbols") if own else ("symbols",)
        if not isinstance(own or data.get("symbols"), dict):
            continue
        source = block.get("source") or next(iter(sources), None)
        options = sources.get(source) if isinstance(source, str) else None
        spec = manager.sources.get(options.get("type")) if isinstance(options, dict) else None
        if spec is not None and not spec.resolves_selectors:
            able = ", ".join(sorted(n for n, s in manager.sources.items() if s.resolves_selectors)) or "none installed"
            problems.append(Problem(doc.mark(path), dotted(path), f"stream '{name}': source '{source}' (type {spec.name}) "
                                    f"cannot resolve a selector (source types that can: {able}); list the symbols instead"))
    return problems


def _topic_spec(block: dict) -> TopicSpec:
    """A stream's ``topic:`` block, the schema's defaults filled in."""
    topic = with_defaults(BASE_SCHEMA["properties"]["streams"]["additionalProperties"]["properties"]["topic"], block)
    return TopicSpec(topic["name"], topic["partitions"], topic["replication_factor"], dict(topic.get("config") or {}),
                     topic.get("format", "normalized"))


def _stream_spec(config: ConfigBeingLoaded, name: str, block: dict, schema_doc: Document) -> StreamSpec:
    topic = block.get("topic")
    transforms = []
    for item in block.get("transforms", DEFAULT_TRANSFORMS):
        if isinstance(item, str):
            transforms.append((item, {}))
        else:
            (tname, opts), = item.items()
            transforms.append((tname, opts or {}))
    chosen = block.get("symbols") or config.symbols  # a list, or a selector the source resolves
    return StreamSpec(
        name=name,
        # a missing sources: section is reported by the schema check; don't crash building this
        source=block.get("source") or next(iter(config.data.get("sources") or {}), ""),
        channel=block["channel"],
        symbols=[] if isinstance(chosen, dict) else list(chosen),
        selector=chosen if isinstance(chosen, dict) else None,
        schema_path=config.resolve_path(block["schema"]),
        schema=schema_doc.data,
        table=block["table"],
        topic=_topic_spec(topic) if topic else None,
        transforms=transforms,
        retention_days=int(block["retention"].split()[0]) if block.get("retention") else None,
    )
