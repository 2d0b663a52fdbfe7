"""Problems of ``tickwire validate`` in the formats CI tools read.

``github``: one workflow command per problem, ``::error file=F,line=L,col=C::path: reason``, so
GitHub shows it on the offending line of the pull request (as ruff and yamllint do). ``json``: a
list of ``{"file", "line", "col", "path", "reason"}`` objects, for any other tool.
"""

from __future__ import annotations

import json

from tickwire.framework.documents import Problem

FORMATS = ("text", "github", "json")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotation(problem: Problem) -> str:
    """``::error file=…,line=…,col=…,title=tickwire validate::path: reason``. A problem that is
    not at a line of a file (a ``--set`` override, a missing file) is a plain error that says
    where it is."""
    mark = problem.mark
    message = f"{problem.path}: {problem.reason}" if problem.path else problem.reason
    if not mark.line:
        return f"::error title=tickwire validate::{_escape_data(f'{mark.file}: {message}')}"
    place = f"file={_escape_property(mark.file)},line={mark.line},col={mark.col}"
    return f"::error {place},title=tickwire validate::{_escape_data(message)}"


def as_dict(problem: Problem) -> dict:
    mark = problem.mark
    return {"file": mark.file, "line": mark.line, "col": mark.col, "path": problem.path, "reason": problem.reason}


def render(problems: list[Problem], fmt: str) -> str:
    """All ``problems`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "github":
        return "\n".join(github_annotation(p) for p in problems)
    if fmt == "json":
        return json.dumps([as_dict(p) for p in problems], indent=2)
    return "\n".join(str(p) for p in problems)
