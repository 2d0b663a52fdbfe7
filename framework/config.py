"""Loading and checking streams.yaml.

Every problem is collected — schema violations, unknown plugins, missing schema files, unsafe
identifiers, broken stream schemas — and reported together, each as
``file:line:col: path.to.field: reason``. The CLI prints them and exits with code 2.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from framework import documents
from framework.config_schema import build_schema
from framework.documents import Document, DocumentError, Mark, Problem, dotted
from framework.plugins import PluginManager
from framework.schemas import ANNOTATION, StreamSpec, TopicSpec, columns_of, load_meta_schema

DEFAULT_CONFIG = "streams.yaml"
DEFAULT_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
METRICS_DEFAULTS = {"host": "127.0.0.1", "port": 9464}
DEFAULT_TRANSFORMS = ["validate", "normalize"]

ConfigError = DocumentError


@dataclass(frozen=True)
class Profile:
    name: str
    sinks: list[str]
    dead_letter: str | None
    streams: list[str] | None


class Config:
    """A checked streams.yaml. Build it with :func:`load_config`."""

    def __init__(self, path: Path, doc: Document, manager: PluginManager):
        self.path = path
        self.dir = path.parent
        self.doc = doc
        self.data: dict = doc.data
        self.manager = manager
        self.streams: dict[str, StreamSpec] = {}
        self.stream_schemas: dict[str, Document] = {}

    # -- accessors ---------------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        return self.data.get("symbols", DEFAULT_SYMBOLS)

    @property
    def sources(self) -> dict[str, tuple[str, dict]]:
        return {sid: (block["type"], _options(block)) for sid, block in self.data["sources"].items()}

    @property
    def sinks(self) -> dict[str, tuple[str, dict]]:
        return {sid: (block["type"], _options(block)) for sid, block in self.data["sinks"].items()}

    @property
    def derived(self) -> dict[str, dict]:
        return {name: {"watermark": "30 seconds", **block} for name, block in self.data.get("derived", {}).items()}

    @property
    def engine(self) -> dict:
        """As written; the defaults belong to framework.engine.EngineSettings."""
        return dict(self.data.get("engine", {}))

    @property
    def metrics(self) -> dict:
        return {**METRICS_DEFAULTS, **self.data.get("metrics", {})}

    @property
    def default_profile(self) -> str:
        return self.data.get("default_profile", "local")

    def section(self, name: str) -> dict:
        """A top-level section registered by a plugin (empty when absent)."""
        return self.data.get(name, {})

    def profile(self, name: str | None = None) -> Profile:
        name = name or self.default_profile
        profiles = self.data["profiles"]
        if name not in profiles:
            known = ", ".join(sorted(profiles))
            raise ConfigError([Problem(Mark(str(self.path), 0, 0), "profiles", f"no profile '{name}' (known: {known})")])
        block = profiles[name]
        return Profile(name, list(block["sinks"]), block.get("dead_letter"), block.get("streams"))

    def profile_streams(self, profile: Profile) -> list[StreamSpec]:
        wanted = profile.streams or list(self.streams)
        return [replace(self.streams[name], sinks=list(profile.sinks)) for name in wanted]

    def resolve_path(self, value: str | os.PathLike) -> Path:
        """Relative paths in the config are relative to the config file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.dir / path


def _options(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "type"}


# -- loading -----------------------------------------------------------------------------------


def plugin_settings(path: Path, environ: Mapping[str, str] | None = None) -> tuple[list[Path], list[str]]:
    """The ``plugins:`` section, read before plugins load (their schemas validate the rest)."""
    try:
        doc = documents.load(path, environ=environ)
    except (DocumentError, OSError):
        return [], []  # reported properly by load_config
    section = doc.data.get("plugins", {}) if isinstance(doc.data, dict) else {}
    if not isinstance(section, dict):
        return [], []
    dirs = [path.parent / d for d in section.get("directories", []) or [] if isinstance(d, str)]
    block = [b for b in section.get("block", []) or [] if isinstance(b, str)]
    return dirs, block


def load_config(
    path: Path | str,
    manager: PluginManager,
    *,
    overrides: list[str] = (),
    environ: Mapping[str, str] | None = None,
    display_name: str | None = None,
) -> Config:
    path = Path(path)
    name = display_name or (os.path.relpath(path) if not Path(os.path.relpath(path)).parts[:1] == ("..",) else str(path))
    if not path.is_file():
        raise ConfigError([Problem(Mark(name, 0, 0), "", f"config file not found (looked for {path.resolve()}; use -c/--config)")])
    doc = documents.load(path, environ=environ, display_name=name)
    if not isinstance(doc.data, dict):
        raise ConfigError([Problem(doc.mark(()), "", "the config must be a mapping of sections")])
    problems = _apply_overrides(doc, overrides)
    config = Config(path, doc, manager)
    schema = build_schema(manager)
    problems += _schema_problems(doc, schema)
    problems += _cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def _apply_overrides(doc: Document, overrides: list[str]) -> list[Problem]:
    problems = []
    for item in overrides:
        where = Mark(f"--set {item}", 0, 0)
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(Problem(where, "", "expected --set dotted.path=value"))
            continue
        parts = key.split(".")
        target: Any = doc.data
        for i, part in enumerate(parts[:-1]):
            nxt = target.get(part) if isinstance(target, dict) else None
            if nxt is None:
                nxt = target[part] = {}
            if not isinstance(nxt, dict):
                problems.append(Problem(where, ".".join(parts[: i + 1]), "is not a mapping, cannot set a field inside it"))
                break
            target = nxt
        else:
            target[parts[-1]] = documents.parse_scalar(raw)
            path = tuple(parts)
            for known in [p for p in doc.value_marks if p[: len(path)] == path]:
                doc.value_marks[known] = where
            doc.value_marks[path] = where
    return problems


# -- schema validation -------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_problems(doc: Document, schema: dict) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in validator.iter_errors(doc.data):
        problems += _describe(doc, error)
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (str(p.mark), p.path, p.reason)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _describe(doc: Document, error: jsonschema.ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        out = []
        for key in error.instance:
            if key in allowed or key in error.schema.get("properties", {}):
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
        if error.validator_value.startswith("^[A-Z0-9]{2,20}"):
            reason = f"{_short(error.instance)} is not a valid symbol (2-20 uppercase letters or digits, e.g. BTCUSDT)"
        elif error.validator_value.startswith("^[a-z_][a-z0-9_]"):
            reason = f"{_short(error.instance)} is not a safe SQL identifier (lowercase letters, digits, _; at most 63; not starting with a digit)"
        elif "249" in error.validator_value:
            reason = f"{_short(error.instance)} is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"
        return [Problem(doc.mark(path), dotted(path), reason)]
    if kind == "propertyNames":
        return [Problem(doc.mark(path + (error.instance,), key=True), dotted(path + (error.instance,)), f"name {_short(error.instance)} is not allowed here: {error.message}")]
    message = error.message
    if len(message) > 200:
        message = message[:197] + "..."
    return [Problem(doc.mark(path), dotted(path), message)]


# -- cross-checks beyond the schema -------------------------------------------------------------


def _option_problems(doc: Document, path: tuple, options: dict, schema: dict | None) -> list[Problem]:
    """A plugin's options (a transform's, say) against its option schema, reported at ``path``."""
    if not schema:
        return []
    problems = []
    for error in jsonschema.Draft202012Validator(schema).iter_errors(options):
        error.relative_path.extendleft(reversed(path))  # top-level errors: absolute_path == relative_path
        problems += _describe(doc, error)
    return problems



def _cross_check(config: Config) -> list[Problem]:
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
        if value in registry:
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
        elif source is not None and source not in sources:
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
                problems.extend(_option_problems(doc, base + ("transforms", i, tname), transform[tname],
                                                 manager.transforms[tname].config_schema))
        if isinstance(block.get("schema"), str):
            schema_doc, schema_problems = _load_stream_schema(config, block["schema"], base + ("schema",))
            problems.extend(schema_problems)
            if schema_doc is not None and not schema_problems:
                config.stream_schemas[name] = schema_doc
                config.streams[name] = _stream_spec(config, name, block, schema_doc)

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


def _load_stream_schema(config: Config, ref: str, at: tuple) -> tuple[Document | None, list[Problem]]:
    path = config.resolve_path(ref)
    where = config.doc.mark(at)
    if not path.is_file():
        return None, [Problem(where, dotted(at), f"schema file '{ref}' not found (resolved to {path})")]
    # shown as the user wrote it, next to the config file's own name
    display = os.path.normpath(os.path.join(os.path.dirname(config.doc.file), ref)) if not Path(ref).is_absolute() else ref
    try:
        schema_doc = documents.load(path, environ={}, display_name=display)
    except DocumentError as exc:
        return None, exc.problems
    return schema_doc, check_stream_schema(schema_doc)


_META_VALIDATOR = None


def check_stream_schema(schema_doc: Document) -> list[Problem]:
    """A stream schema against the meta-schema, then the annotations' own consistency."""
    global _META_VALIDATOR
    if _META_VALIDATOR is None:
        _META_VALIDATOR = jsonschema.Draft202012Validator(load_meta_schema())
    schema = schema_doc.data
    problems = []
    for error in _META_VALIDATOR.iter_errors(schema):
        problems += _describe(schema_doc, error)
    if problems or not isinstance(schema, dict):
        return _dedupe(problems)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        problems.append(Problem(schema_doc.mark(tuple(exc.absolute_path)), dotted(tuple(exc.absolute_path)), f"not a valid JSON Schema: {exc.message}"))
    expected_json_type = {"decimal": "string", "text": "string", "bigint": "integer", "integer": "integer", "timestamp_ms": "integer", "boolean": "boolean"}
    seen: dict[str, str] = {}
    for field_name, prop in schema.get("properties", {}).items():
        note = prop.get(ANNOTATION)
        if not note:
            continue
        at = ("properties", field_name, ANNOTATION)
        column, logical = note["column"], note["type"]
        if column in seen:
            problems.append(Problem(schema_doc.mark(at + ("column",)), dotted(at + ("column",)), f"column '{column}' is also used by field '{seen[column]}'"))
        seen[column] = field_name
        if column == "ingested_at":
            problems.append(Problem(schema_doc.mark(at + ("column",)), dotted(at + ("column",)), "column 'ingested_at' is reserved (added by normalize)"))
        if prop.get("type") != expected_json_type[logical]:
            problems.append(Problem(schema_doc.mark(("properties", field_name)), dotted(("properties", field_name)),
                                    f"a {logical} column needs \"type\": \"{expected_json_type[logical]}\" (has {prop.get('type')!r})"))
        if logical == "decimal" and "pattern" not in prop:
            problems.append(Problem(schema_doc.mark(("properties", field_name)), dotted(("properties", field_name)),
                                    "a decimal column needs a \"pattern\" so only exact decimal strings pass"))
    note = schema[ANNOTATION]
    columns = {c.name: c for c in columns_of(schema)}
    required = set(schema.get("required", []))
    for i, key in enumerate(note.get("primary_key", [])):
        at = (ANNOTATION, "primary_key", i)
        if key not in columns:
            problems.append(Problem(schema_doc.mark(at), dotted(at), f"primary key column '{key}' is not a column of this schema"))
        elif columns[key].field not in required:
            problems.append(Problem(schema_doc.mark(at), dotted(at), f"primary key column '{key}' (field '{columns[key].field}') must be required"))
    for key in ("kafka_key", "event_time"):
        if key in note and note[key] not in columns:
            problems.append(Problem(schema_doc.mark((ANNOTATION, key)), dotted((ANNOTATION, key)), f"'{note[key]}' is not a column of this schema"))
    sequence = note.get("sequence") if isinstance(note.get("sequence"), dict) else {}
    for key, logicals in (("column", ("bigint", "integer")), ("partition", ("text",))):
        at = (ANNOTATION, "sequence", key)
        name = sequence.get(key)
        if name is None:
            continue
        if name not in columns:
            problems.append(Problem(schema_doc.mark(at), dotted(at), f"'{name}' is not a column of this schema"))
        elif columns[name].logical not in logicals:
            problems.append(Problem(schema_doc.mark(at), dotted(at), f"the sequence {key} must be of type {' or '.join(logicals)}"))
        elif name not in note.get("primary_key", []):
            problems.append(Problem(schema_doc.mark(at), dotted(at), f"the sequence {key} '{name}' must be part of the primary key"))
    if "event_time" in note and note["event_time"] in columns and columns[note["event_time"]].logical != "timestamp_ms":
        problems.append(Problem(schema_doc.mark((ANNOTATION, "event_time")), dotted((ANNOTATION, "event_time")), "the event-time column must be of type timestamp_ms"))
    const = schema.get("properties", {}).get("e", {}).get("const")
    if const is not None and const != note.get("event_type"):
        problems.append(Problem(schema_doc.mark((ANNOTATION, "event_type")), dotted((ANNOTATION, "event_type")), f"event_type '{note.get('event_type')}' differs from properties.e.const '{const}'"))
    return problems


def _stream_spec(config: Config, name: str, block: dict, schema_doc: Document) -> StreamSpec:
    topic = block.get("topic")
    transforms = []
    for item in block.get("transforms", DEFAULT_TRANSFORMS):
        if isinstance(item, str):
            transforms.append((item, {}))
        else:
            (tname, opts), = item.items()
            transforms.append((tname, opts or {}))
    return StreamSpec(
        name=name,
        # a missing sources: section is reported by the schema check; don't crash building this
        source=block.get("source") or next(iter(config.data.get("sources") or {}), ""),
        channel=block["channel"],
        symbols=list(block.get("symbols") or config.symbols),
        schema_path=config.resolve_path(block["schema"]),
        schema=schema_doc.data,
        table=block["table"],
        topic=TopicSpec(topic["name"], topic.get("partitions", 3), topic.get("replication_factor", 1), dict(topic.get("config", {}))) if topic else None,
        transforms=transforms,
    )
