"""Where something is wrong in a document: a :class:`Mark` (file, line, column), a
:class:`Problem` there, and :class:`DocumentError` carrying all the problems found."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        # line 0: a place that is not a line in a file, e.g. "--profile"
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


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
