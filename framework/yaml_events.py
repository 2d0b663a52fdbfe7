"""Build a YAML document from libyaml's event stream with a loop and an explicit stack.

PyYAML's own composer and constructor recurse once per nesting level and expand every alias in
full, so a 20,000-deep list exhausts the Python stack and a "billion laughs" alias bomb eats
all memory. Here the depth and the number of values are counted as the events arrive, and
building stops with a :class:`Problem` at the first event over a limit. Used by
:mod:`tickwire.framework.documents`, which owns marks, scalars and the public API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import yaml

from tickwire.framework.problems import Mark, Problem, dotted

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when installed: ~10x faster
_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_STORE, _DROP, _MERGE = "store", "drop", "merge"


@dataclass(frozen=True)
class Limits:
    """Bounds on one document. The defaults are far above any real config or stream schema
    (streams.yaml: ~150 values, depth 5) and far below what hurts: the worst file within them
    (1 MiB of 100,000 one-line keys) is refused in ~3 s and ~150 MB on the 2-core dev box; the
    nesting, alias and byte limits stop in well under a second."""

    max_bytes: int = 1 << 20  # 1 MiB
    max_depth: int = 32  # nested mappings/sequences
    max_values: int = 100_000  # every value built, each alias expansion counted in full


class MarkedDocument(Protocol):
    """Where the marks go (a :class:`tickwire.framework.documents.Document`)."""

    value_marks: dict[tuple, Mark]
    key_marks: dict[tuple, Mark]


class DocumentTooLarge(Exception):
    """Building stopped: the document is over a limit or cannot be built at all."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = ("is_map", "value", "path", "anchor", "mark", "size", "dropped", "key", "mode", "key_lines", "merges")

    def __init__(self, is_map: bool, path: tuple, anchor: str | None, mark: Mark, dropped: bool):
        self.is_map = is_map
        self.value: Any = {} if is_map else []
        self.path = path
        self.anchor = anchor
        self.mark = mark
        self.size = 1
        self.dropped = dropped  # part of a value that is not kept (after a duplicate key, say)
        self.key: Any = None  # the key whose value comes next (mappings)
        self.mode: str | None = None  # None: a key comes next; else what to do with the value
        self.key_lines: dict = {}
        self.merges: list[tuple[Any, Mark]] = []


def compose(text: str, doc: MarkedDocument, scalar: Callable, mark: Callable[[yaml.Mark], Mark],
            problems: list[Problem], limits: Limits) -> Any:
    """The value of the single document in ``text`` (None when empty). Marks go into ``doc``;
    recoverable problems into ``problems``; raises :class:`DocumentTooLarge` or a
    ``yaml.MarkedYAMLError`` when building cannot go on."""
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int]] = {}
    open_anchors: set[str] = set()
    counted = 0
    documents = 0
    root: Any = None

    def stop(at: Mark, path: tuple, reason: str) -> None:
        raise DocumentTooLarge(Problem(at, dotted(path), reason))

    def count(n: int, at: Mark, path: tuple) -> None:
        nonlocal counted
        counted += n
        if counted > limits.max_values:
            stop(at, path, f"more than {limits.max_values} values (aliases count each time they are used); refusing to expand it")

    def child_path() -> tuple:
        if not stack:
            return ()
        parent = stack[-1]
        if not parent.is_map:
            return parent.path + (len(parent.value),)
        return parent.path + (parent.key,) if parent.mode in (_STORE, _DROP) and parent.key is not None else parent.path

    def child_dropped() -> bool:
        if not stack:
            return False
        parent = stack[-1]
        return parent.dropped or (parent.is_map and parent.mode != _STORE and parent.mode != _MERGE)

    def attach(value: Any, at: Mark, size: int) -> None:
        nonlocal root
        if not stack:
            root = value
            doc.value_marks[()] = at
            return
        parent = stack[-1]
        parent.size += size
        if not parent.is_map:
            if not parent.dropped:
                doc.value_marks[parent.path + (len(parent.value),)] = at
            parent.value.append(value)
            return
        mode, key = parent.mode, parent.key
        parent.mode, parent.key = None, None
        if mode is None:  # this value was written where a key goes
            problems.append(Problem(at, dotted(parent.path), "keys must be plain strings"))
            parent.mode, parent.key = _DROP, None
        elif mode == _MERGE:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, dict) for item in items):
                problems.append(Problem(at, dotted(parent.path + ("<<",)), "a merge key '<<' needs a mapping or a list of mappings"))
            else:
                parent.merges += [(item, at) for item in items]
        elif mode == _STORE:
            parent.value[key] = value
            if not parent.dropped:
                doc.value_marks[parent.path + (key,)] = at

    def take_key(frame: _Frame, event: yaml.ScalarEvent) -> None:
        at = mark(event.start_mark)
        if event.value == "<<" and not event.style and event.tag is None:  # plain ("" from libyaml)
            frame.mode = _MERGE
            return
        key = scalar(event, frame.path, False)
        if not isinstance(key, (str, int)):
            problems.append(Problem(at, dotted(frame.path), "keys must be plain strings"))
            frame.mode, frame.key = _DROP, None
        elif key in frame.key_lines:
            problems.append(Problem(at, dotted(frame.path + (key,)), f"duplicate key '{key}' (first defined at line {frame.key_lines[key]})"))
            frame.mode, frame.key = _DROP, key
        else:
            frame.key_lines[key] = at.line
            frame.mode, frame.key = _STORE, key
            if not frame.dropped:
                doc.key_marks[frame.path + (key,)] = at

    def finish_mapping(frame: _Frame) -> None:
        for merged, at in frame.merges:  # explicit keys win; earlier merges win over later ones
            for key, value in merged.items():
                if key not in frame.value:
                    frame.value[key] = value
                    if not frame.dropped:
                        doc.key_marks.setdefault(frame.path + (key,), at)
                        doc.value_marks.setdefault(frame.path + (key,), at)

    for event in yaml.parse(text, Loader=_Loader):
        kind = type(event)
        if kind is yaml.ScalarEvent:
            if stack and stack[-1].is_map and stack[-1].mode is None:
                take_key(stack[-1], event)
                continue
            at, path = mark(event.start_mark), child_path()
            count(1, at, path)
            value = scalar(event, path, True)
            if event.anchor is not None:
                anchors[event.anchor] = (value, 1)
            attach(value, at, 1)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            at, path = mark(event.start_mark), child_path()
            if len(stack) >= limits.max_depth:
                stop(at, path, f"nested deeper than {limits.max_depth} levels; refusing to read further")
            count(1, at, path)
            is_map = kind is yaml.MappingStartEvent
            if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                problems.append(Problem(at, dotted(path), f"tag {event.tag!r} is not supported here"))
            if event.anchor is not None:
                open_anchors.add(event.anchor)
            stack.append(_Frame(is_map, path, event.anchor, at, child_dropped()))
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            frame = stack.pop()
            if frame.is_map:
                finish_mapping(frame)
            if frame.anchor is not None:
                open_anchors.discard(frame.anchor)
                anchors[frame.anchor] = (frame.value, frame.size)
            attach(frame.value, frame.mark, frame.size)
        elif kind is yaml.AliasEvent:
            at, path = mark(event.start_mark), child_path()
            if event.anchor in open_anchors:
                stop(at, path, f"alias *{event.anchor} refers to a value that contains it (recursive alias)")
            if event.anchor not in anchors:
                stop(at, path, f"alias *{event.anchor} is not defined (an anchor &{event.anchor} must come before it)")
            value, size = anchors[event.anchor]
            count(size, at, path)
            attach(_copy(value), at, size)
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                stop(mark(event.start_mark), (), "more than one YAML document (a '---' line); write one document")
    return root


def _copy(value: Any) -> Any:
    """A fresh copy of an aliased value, so that changing one place changes only that place.
    A loop, not recursion: the value is at most ``max_depth`` deep, but be safe anyway."""
    if not isinstance(value, (dict, list)):
        return value
    top: Any = {} if isinstance(value, dict) else []
    work = [(value, top)]
    while work:
        source, target = work.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, (dict, list)):
                item_copy: Any = {} if isinstance(item, dict) else []
                work.append((item, item_copy))
            else:
                item_copy = item
            if isinstance(target, dict):
                target[key] = item_copy
            else:
                target.append(item_copy)
    return top
