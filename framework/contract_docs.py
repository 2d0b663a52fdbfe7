"""The "Component contract" section of docs/architecture.md, rendered from the protocols and
error types in framework/components.py (their signatures and docstrings), so the page cannot
drift from the code: tests/test_contract.py fails when they differ.

Regenerate after changing a protocol: ``python -m tickwire.framework.contract_docs docs/architecture.md``."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

from tickwire.framework import components

BEGIN = "<!-- contract: generated from framework/components.py by framework/contract_docs.py; do not edit -->"
END = "<!-- contract: end -->"
# In reading order: what a source gets and does, transforms, sinks, what a sink raises, the context.
CLASSES = (
    "Source", "Emitter", "Transform", "FusableTransform", "Sink", "ResumableSink", "GapRecordingSink", "RecentRecordsSink",
    "TransientError", "BadRecords", "PermanentError", "RunContext",
)


def class_nodes() -> dict[str, ast.ClassDef]:
    """The contract's classes as parsed from components.py."""
    tree = ast.parse(Path(inspect.getfile(components)).read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def members(node: ast.ClassDef) -> list[tuple[str, str, str]]:
    """(name, declaration, docstring) of each public method and annotated attribute."""
    out = []
    body = node.body
    for i, item in enumerate(body):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_") or (
            isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "__call__"
        ):
            prefix = "async def" if isinstance(item, ast.AsyncFunctionDef) else "def"
            returns = f" -> {ast.unparse(item.returns)}" if item.returns is not None else ""
            out.append((item.name, f"{prefix} {item.name}({ast.unparse(item.args)}){returns}", ast.get_docstring(item) or ""))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = inspect.cleandoc(nxt.value.value) if (
                isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)) else ""
            default = f" = {ast.unparse(item.value)}" if item.value is not None else ""
            out.append((item.target.id, f"{item.target.id}: {ast.unparse(item.annotation)}{default}", doc))
    return out


def render() -> str:
    """The section's Markdown, between its markers."""
    nodes = class_nodes()
    lines = [BEGIN, ""]
    for name in CLASSES:
        node = nodes[name]
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        lines += [f"### `{name}`" + (f" ({bases})" if bases else ""), "", ast.get_docstring(node) or "", ""]
        for _member, declaration, doc in members(node):
            lines.append(f"- `{declaration}`" + (f": {_one_line(doc)}" if doc else ""))
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _one_line(doc: str) -> str:
    return " ".join(doc.split())


def section_of(text: str) -> str | None:
    """The generated section as it stands in ``text`` (None when the markers are missing)."""
    start, end = text.find(BEGIN), text.find(END)
    return None if start < 0 or end < 0 else text[start : end + len(END)]


def update(path: Path) -> bool:
    """Rewrite the section in ``path``; True when it changed."""
    text = path.read_text()
    current = section_of(text)
    if current is None:
        raise SystemExit(f"{path}: no contract section (the markers {BEGIN!r} … {END!r})")
    new = text.replace(current, render())
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: {'updated' if update(Path(arg)) else 'already current'}")
