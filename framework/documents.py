"""Read YAML (and JSON, which is YAML) keeping the line and column of every key and value,
so that every config or schema problem can be reported as ``file:line:col: path: reason``.

``${VAR}`` and ``${VAR:-default}`` are expanded in scalar values; an unquoted scalar is typed
after expansion, so ``port: ${PORT:-9464}`` is an integer.

Loading is hardened against hostile files (see :class:`Limits`): the size of the file, the
nesting depth and the number of values (aliases included: an alias bomb stops at the budget)
are bounded; invalid UTF-8, control characters, recursive or undefined aliases, unsupported
tags and unconvertible scalars are :class:`Problem` s with a position, never a traceback.
The document is built from libyaml's event stream by a loop, not by recursion, so no input
can exhaust the Python stack.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from tickwire.framework.problems import DocumentError, Mark, Problem, dotted  # noqa: F401  (re-exported)
from tickwire.framework.yaml_events import DocumentTooLarge, Limits, compose

Path_ = tuple  # a location in the document: ("streams", "trade", "table")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# What YAML allows in a stream (YAML 1.1 §5.1, as PyYAML's reader checks it)
_NOT_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


DEFAULT_LIMITS = Limits()


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


def _position(text: str, index: int, name: str) -> Mark:
    line = text.count("\n", 0, index) + 1
    return Mark(name, line, index - (text.rfind("\n", 0, index) + 1) + 1)


def read_text(path: Path | str, name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """The file as text: at most ``limits.max_bytes``, valid UTF-8, no control characters.
    Raises :class:`DocumentError` (never echoing the content) or ``OSError``."""
    with open(path, "rb") as f:
        raw = f.read(limits.max_bytes + 1)
    if len(raw) > limits.max_bytes:
        raise DocumentError([Problem(Mark(name, 1, 1), "", f"file is larger than {_size(limits.max_bytes)}; refusing to read it")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = len(raw[raw.rfind(b"\n", 0, exc.start) + 1 : exc.start].decode("utf-8", "replace")) + 1
        raise DocumentError([Problem(Mark(name, line, col), "", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})")]) from None
    return text


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def load(path: Path | str, *, environ: Mapping[str, str] | None = None, display_name: str | None = None,
         limits: Limits = DEFAULT_LIMITS) -> Document:
    """Parse ``path``. Raises :class:`DocumentError` for anything wrong with it (syntax,
    encoding, limits, duplicate keys, unset environment variables — all of them, not just the
    first), ``OSError`` when it cannot be read."""
    name = display_name or str(path)
    text = read_text(path, name, limits)
    return loads(text, name, environ=os.environ if environ is None else environ, limits=limits)


def loads(text: str, name: str, *, environ: Mapping[str, str] | None = None, limits: Limits = DEFAULT_LIMITS,
          first_line: int = 1, first_col: int = 1) -> Document:
    """Parse ``text`` as the document called ``name``. ``first_line``/``first_col`` shift the
    marks, for text that starts inside something else (a ``--set`` value)."""
    environ = os.environ if environ is None else environ
    if text.startswith("\ufeff"):
        text = text[1:]
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise DocumentError([Problem(Mark(name, first_line, first_col), "", f"longer than {_size(limits.max_bytes)}")])
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        where = _shifted(_position(text, bad.start(), name), first_line, first_col)
        raise DocumentError([Problem(where, "", f"control character U+{ord(bad.group()):04X} is not allowed in YAML")])
    doc = Document(None, name)
    problems: list[Problem] = []

    def mark(m: yaml.Mark) -> Mark:
        return _shifted(Mark(name, m.line + 1, m.column + 1), first_line, first_col)

    def scalar(event: yaml.ScalarEvent, path: Path_, expand: bool) -> Any:
        return _scalar(event, path, environ if expand else None, mark, problems)

    try:
        root = compose(text, doc, scalar, mark, problems, limits)
    except yaml.MarkedYAMLError as exc:
        at = exc.problem_mark or exc.context_mark
        where = mark(at) if at else Mark(name, first_line, first_col)
        raise DocumentError([Problem(where, "", f"not valid YAML: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:  # a reader error the checks above missed: no position known
        raise DocumentError([Problem(Mark(name, first_line, first_col), "", f"not valid YAML: {str(exc).splitlines()[0]}")]) from None
    except DocumentTooLarge as exc:
        raise DocumentError([exc.problem]) from None
    doc.data = {} if root is None else root
    if problems:
        raise DocumentError(problems)
    return doc


def _shifted(m: Mark, first_line: int, first_col: int) -> Mark:
    return Mark(m.file, m.line + first_line - 1, m.col + (first_col - 1 if m.line == 1 else 0))


_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()
_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "merge")}


def _scalar(event: yaml.ScalarEvent, path: Path_, environ: Mapping[str, str] | None, mark, problems: list[Problem]) -> Any:
    """One scalar, typed as YAML types it (after ``${VAR}`` expansion when ``environ``)."""
    value, at = event.value, mark(event.start_mark)
    tag = event.tag
    if tag in (None, "!"):
        tag = _resolver.resolve(yaml.ScalarNode, value, event.implicit)
    if tag not in _SCALAR_TAGS:
        problems.append(Problem(at, dotted(path), f"tag {event.tag!r} is not supported here"))
        return None
    if environ is not None and "${" in value:
        missing: list[str] = []
        value = expand_env(value, environ, missing)
        for var in missing:
            problems.append(Problem(at, dotted(path), f"environment variable {var} is not set (write ${{{var}:-default}} for a default)"))
        if event.style or event.tag not in (None, "!") or value == "":  # style "" or None: plain
            return value  # quoted (or ${X:-}): stays a string rather than becoming null
        tag = _resolver.resolve(yaml.ScalarNode, value, (True, False))
    try:
        return _constructor.construct_object(yaml.ScalarNode(tag, value, style=event.style))
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        problems.append(Problem(at, dotted(path), f"cannot read {_short(value)} as {tag.rsplit(':', 1)[-1]}: {exc}"))
        return None


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def parse_value(text: str, name: str, first_col: int, line: int = 1) -> Any:
    """Type a command-line value the way YAML types it (``500`` → int, ``[a, b]`` → list),
    with the same limits as a file; problems are placed at ``name:line:col`` (col counts from
    ``first_col``, the value's place in the argument)."""
    try:
        doc = loads(text, name, environ={}, first_line=line, first_col=first_col)
    except DocumentError as exc:
        end = Mark(name, line, first_col + len(text))  # "unexpected end": the end of the value
        raise DocumentError([Problem(p.mark if p.mark.line == line else end, p.path, p.reason) for p in exc.problems]) from None
    return doc.data if text.strip() else None
