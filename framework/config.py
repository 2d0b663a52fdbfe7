"""Loading and checking streams.yaml.

Every problem is collected — schema violations, unknown plugins, missing schema files, unsafe
identifiers, broken stream schemas, transforms that cannot be built — and reported together,
each as ``file:line:col: path.to.field: reason``. The CLI prints them and exits with code 2.

This module reads the file, applies ``--set`` and checks it against the JSON Schema the plugins
extend; what a schema cannot say (references, stream schemas, transforms, clashes) is checked,
and the streams are built, in framework/config_checks.py. :class:`Config` is the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from tickwire.framework import documents
from tickwire.framework.options import with_defaults
from tickwire.framework.config_checks import cross_check
from tickwire.framework.config_schema import BASE_SCHEMA, build_schema
from tickwire.framework.documents import Document, DocumentError, Mark, Problem
from tickwire.framework.plugins import PluginManager
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.validation import schema_problems

DEFAULT_CONFIG = "streams.yaml"
DEFAULT_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

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
    def symbols(self) -> list[str] | dict:
        """The top-level ``symbols:``: a list, or a selector mapping (docs/scaling.md)."""
        return self.data.get("symbols", DEFAULT_SYMBOLS)

    @property
    def sources(self) -> dict[str, tuple[str, dict]]:
        return {sid: (block["type"], _options(block)) for sid, block in self.data["sources"].items()}

    @property
    def sinks(self) -> dict[str, tuple[str, dict]]:
        return {sid: (block["type"], _options(block)) for sid, block in self.data["sinks"].items()}

    @property
    def derived(self) -> dict[str, dict]:
        schema = BASE_SCHEMA["properties"]["derived"]["additionalProperties"]
        return {name: with_defaults(schema, block) for name, block in self.data.get("derived", {}).items()}

    @property
    def engine(self) -> dict:
        """As written; EngineSettings fills in the schema's defaults."""
        return dict(self.data.get("engine", {}))

    @property
    def metrics(self) -> dict:
        """As written, with the schema's defaults filled in."""
        return with_defaults(BASE_SCHEMA["properties"]["metrics"], self.data.get("metrics", {}))

    @property
    def default_profile(self) -> str:
        return self.data.get("default_profile", "local")

    def section(self, name: str) -> dict:
        """A top-level section registered by a plugin (empty when absent)."""
        return self.data.get(name, {})

    def profile(self, name: str | None = None) -> Profile:
        """The profile called ``name`` (``--profile``); None: ``default_profile``."""
        given = name is not None
        name = self.default_profile if name is None else name
        profiles = self.data["profiles"]
        if name not in profiles:
            known = ", ".join(sorted(profiles))
            where = Mark("--profile", 0, 0) if given else self.doc.mark(("default_profile",))
            raise ConfigError([Problem(where, "", f"no profile {name!r} (known: {known})")])
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
        with path.open("rb") as head:  # at most the size limit: a larger file is refused anyway
            if b"plugins" not in head.read(documents.DEFAULT_LIMITS.max_bytes + 1):
                return [], []  # no such section: spare a large file its second parse (load_config's)
        doc = documents.load(path, environ=environ)
    except (DocumentError, OSError):
        return [], []  # reported properly by load_config
    section = doc.data.get("plugins", {}) if isinstance(doc.data, dict) else {}
    if not isinstance(section, dict):
        return [], []
    def strings(value: Any) -> list[str]:  # anything else is reported by load_config
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []

    dirs = [path.parent / d for d in strings(section.get("directories"))]
    return dirs, strings(section.get("block"))


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
    if not path.exists():
        raise ConfigError([Problem(Mark(name, 0, 0), "", f"config file not found (looked for {path.resolve()}; use -c/--config)")])
    if not path.is_file():  # a folder, a FIFO, a device: nothing to read a config from (or a read that never ends)
        raise ConfigError([Problem(Mark(name, 0, 0), "", f"not a regular file ({path.resolve()}); give the path of a streams.yaml")])
    try:
        doc = documents.load(path, environ=environ, display_name=name)
    except OSError as exc:
        raise ConfigError([Problem(Mark(name, 0, 0), "", f"cannot read the config file: {exc.strerror or exc}")]) from None
    if not isinstance(doc.data, dict):
        raise ConfigError([Problem(doc.mark(()), "", "the config must be a mapping of sections")])
    problems = _apply_overrides(doc, overrides)
    config = Config(path, doc, manager)
    schema = build_schema(manager)
    problems += schema_problems(doc, schema)
    problems += cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def _apply_overrides(doc: Document, overrides: list[str]) -> list[Problem]:
    """``--set a.b=value``, in order. The n-th ``--set`` is reported as ``--set:n:col``
    (col counts characters of ``a.b=value``)."""
    problems = []
    for n, item in enumerate(overrides, 1):
        where = Mark("--set", n, 1)
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(Problem(where, "", f"expected --set dotted.path=value, got {item[:60]!r}"))
            continue
        parts = key.split(".")
        if not all(parts):
            problems.append(Problem(where, key, "a field name in the dotted path is empty"))
            continue
        try:
            value = documents.parse_value(raw, "--set", len(key) + 2, line=n)
        except DocumentError as exc:
            problems += [Problem(p.mark, key, p.reason) for p in exc.problems]
            continue
        where = Mark("--set", n, len(key) + 2)
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
            target[parts[-1]] = value
            path = tuple(parts)
            for known in [p for p in doc.value_marks if p[: len(path)] == path]:
                doc.value_marks[known] = where
            doc.value_marks[path] = where
            # an unknown field is reported at its key: the key it names is the one on --set
            for i in range(len(parts)):
                doc.key_marks.setdefault(tuple(parts[: i + 1]), Mark("--set", n, 1))
            doc.key_marks[path] = Mark("--set", n, 1)
    return problems
