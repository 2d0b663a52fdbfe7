"""Read YAML (and JSON, which is YAML) keeping the line and column of every key and value,
so that every config or schema problem can be reported as ``file:line:col: path: reason``.

``${VAR}`` and ``${VAR:-default}`` are expanded in scalar values; an unquoted scalar is typed
after expansion, so ``port: ${PORT:-9464}`` is an integer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

Path_ = tuple  # a location in the document: ("streams", "trade", "table")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        # line 0: a place that is not a line in a file, e.g. "--set a.b=c"
        return f"{self.file}:{self.line}:{self.col}" if self.line else self.file


@dataclass(order=True, frozen=True)
class Problem:
    """One thing wrong with a document, at a place a human can jump to."""

    mark: Mark = field(compare=False)
    path: str
    reason: str
    sort_key: tuple = field(default=(), repr=False)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.mark}: {where}{self.reason}"


class DocumentError(Exception):
    """Problems found in one or more documents; str() lists them all, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.mark.file, p.mark.line, p.mark.col, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    """A parsed document and where each of its parts came from."""

    data: Any
    file: str
    value_marks: dict[Path_, Mark] = field(default_factory=dict)
    key_marks: dict[Path_, Mark] = field(default_factory=dict)

    def mark(self, path: Path_, *, key: bool = False) -> Mark:
        """Where ``path`` is written; falls back to the nearest enclosing element."""
        path = tuple(path)
        table = self.key_marks if key else self.value_marks
        while path:
            if path in table:
                return table[path]
            if not key and path in self.key_marks:
                return self.key_marks[path]
            path = path[:-1]
        return self.value_marks.get((), Mark(self.file, 1, 1))


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def expand_env(text: str, environ: Mapping[str, str], missing: list[str]) -> str:
    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    return _ENV_REF.sub(substitute, text)


def _mark(node: yaml.Node, file: str) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


def load(path: Path | str, *, environ: Mapping[str, str] | None = None, display_name: str | None = None) -> Document:
    """Parse ``path``. Raises :class:`DocumentError` for syntax errors, duplicate keys and
    unset environment variables (all of them, not just the first)."""
    path = Path(path)
    name = display_name or str(path)
    text = path.read_text(encoding="utf-8")
    return loads(text, name, environ=os.environ if environ is None else environ)


def loads(text: str, name: str, *, environ: Mapping[str, str] | None = None) -> Document:
    environ = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(name, mark.line + 1, mark.column + 1) if mark else Mark(name, 1, 1)
        raise DocumentError([Problem(where, "", f"not valid YAML: {exc.problem or exc.context}")]) from None
    doc = Document(None, name)
    problems: list[Problem] = []
    doc.data = _build(root, (), doc, environ, problems) if root is not None else {}
    if problems:
        raise DocumentError(problems)
    return doc


def _build(node: yaml.Node, path: Path_, doc: Document, environ, problems: list[Problem]) -> Any:
    doc.value_marks[path] = _mark(node, doc.file)
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            key = _constructor.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int)):
                problems.append(Problem(_mark(key_node, doc.file), dotted(path), "keys must be plain strings"))
                continue
            if key in result:
                first = doc.key_marks[path + (key,)]
                problems.append(Problem(_mark(key_node, doc.file), dotted(path + (key,)),
                                        f"duplicate key '{key}' (first defined at line {first.line})"))
                continue
            doc.key_marks[path + (key,)] = _mark(key_node, doc.file)
            result[key] = _build(value_node, path + (key,), doc, environ, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, environ, problems) for i, item in enumerate(node.value)]
    value = node.value
    if "${" in value:
        missing: list[str] = []
        value = expand_env(value, environ, missing)
        for var in missing:
            problems.append(Problem(_mark(node, doc.file), dotted(path),
                                    f"environment variable {var} is not set (write ${{{var}:-default}} for a default)"))
        if node.style is None and value != "":  # plain scalar: type it as YAML would have
            # (but ${X:-} stays an empty string rather than becoming null)
            tag = _resolver.resolve(yaml.ScalarNode, value, (True, False))
            return _constructor.construct_object(yaml.ScalarNode(tag, value))
        return value
    return _constructor.construct_object(node)


def parse_scalar(text: str) -> Any:
    """Type a command-line value the way YAML types an unquoted scalar."""
    tag = _resolver.resolve(yaml.ScalarNode, text, (True, False))
    if text.startswith(("[", "{")):
        return yaml.safe_load(text)
    return _constructor.construct_object(yaml.ScalarNode(tag, text))
