"""The contract is written once (framework/components.py) and kept honest: the docs section is
generated from it, every member the engine uses on a sink, source or transform is declared
there, option defaults come from the schemas only, and framework/ modules import without
cycles (TYPE_CHECKING and function-local imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tickwire.framework import components
from tickwire.framework.config_schema import BASE_SCHEMA
from tickwire.framework.contract_docs import class_nodes, members, render, section_of
from tickwire.framework.engine import EngineSettings
from tickwire.framework.options import with_defaults

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORK = ROOT / "framework"
ENGINE = FRAMEWORK / "engine"
# which protocols declare what the engine may use on each kind of object
PROTOCOLS = {
    "sink": ("Sink", "ResumableSink", "GapRecordingSink", "RecentRecordsSink"),
    "source": ("Source",),
    "transform": ("Transform", "FusableTransform"),
}


def declared(kind: str) -> set[str]:
    nodes = class_nodes()
    return {name for protocol in PROTOCOLS[kind] for name, _, _ in members(nodes[protocol])}


def receiver_kind(node: ast.expr) -> str | None:
    """What an expression holds, by the names the engine gives them: ``runner.sink`` / ``sink``
    a Sink, ``source`` a Source, ``chain[i]`` / ``fn`` / ``fused`` a Transform."""
    if isinstance(node, ast.Attribute) and node.attr == "sink" or isinstance(node, ast.Name) and node.id == "sink":
        return "sink"
    if isinstance(node, ast.Name) and node.id == "source":
        return "source"
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "chain":
        return "transform"
    return None


def used_members(paths: list[Path]) -> dict[str, set[tuple[str, str]]]:
    """kind → {(member, where)} for every attribute the code reads on such an object, and every
    member name the contract looks up by string (``getattr(sink, "name", …)``)."""
    used: dict[str, set[tuple[str, str]]] = {kind: set() for kind in PROTOCOLS}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                kind = receiver_kind(node.value)
                if kind is not None:
                    used[kind].add((node.attr, f"{path.name}:{node.lineno}"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                kind = receiver_kind(node.args[0])
                if kind is not None and isinstance(node.args[1], ast.Constant):
                    used[kind].add((node.args[1].value, f"{path.name}:{node.lineno}"))
    return used


def test_the_docs_contract_section_is_generated_from_the_protocols():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert section_of(text) == render(), (
        "docs/architecture.md's contract section differs from framework/components.py: run "
        "`python -m tickwire.framework.contract_docs docs/architecture.md`")


def test_every_member_the_engine_uses_is_declared_in_a_protocol():
    used = used_members(sorted(ENGINE.glob("*.py")) + [FRAMEWORK / "components.py"])
    assert {m for m, _ in used["sink"]} >= {"open", "write", "write_dead_letters", "write_gaps", "last_sequence_ids", "close"}
    assert {m for m, _ in used["source"]} == {"run"}
    assert {m for m, _ in used["transform"]} == {"fuse"}
    for kind, found in used.items():
        undeclared = sorted(f"{member} ({where})" for member, where in found if member not in declared(kind))
        assert not undeclared, f"the engine uses {kind} members its protocols do not declare: {undeclared}"


def test_the_member_check_catches_an_undeclared_member(tmp_path):
    rogue = tmp_path / "rogue.py"
    rogue.write_text("async def f(runner):\n    await runner.sink.flush_everything()\n")
    assert ("flush_everything", "rogue.py:2") in used_members([rogue])["sink"]
    assert "flush_everything" not in declared("sink")


def test_the_engine_finds_nothing_by_getattr_or_function_attributes():
    for path in sorted(ENGINE.glob("*.py")):
        calls = [n for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")]
        assert not calls, f"{path.name}:{calls[0].lineno}: optional members are resolved once, by components.sink_traits"


def test_sink_traits_apply_the_documented_defaults():
    class Bare:
        async def open(self): ...
        async def write(self, stream, records): ...
        async def close(self): ...

    class Declaring(Bare):
        max_in_flight = 4
        idempotent = False

        def describe(self):
            return "somewhere"

        async def write_gaps(self, gaps): ...

    spec = components.SinkSpec(name="bare", factory=Bare, description="")
    assert components.sink_traits(Bare(), spec) == components.SinkTraits(describe="bare")
    traits = components.sink_traits(Declaring(), spec)
    assert (traits.max_in_flight, traits.idempotent, traits.describe, traits.records_gaps, traits.resumable) == (4, False, "somewhere", True, False)


# -- defaults written once -------------------------------------------------------------------------


def test_with_defaults_fills_what_is_missing_recursively_and_keeps_what_is_given():
    schema = {"type": "object", "properties": {
        "path": {"type": "string", "default": "data/x.db"},
        "retries": {"type": "integer"},
        "tls": {"type": "object", "default": {}, "properties": {"verify": {"type": "boolean", "default": True}}},
        "pool": {"type": "object", "properties": {"size": {"type": "integer", "default": 4}}},
    }}
    assert with_defaults(schema, {}) == {"path": "data/x.db", "tls": {"verify": True}}
    given = {"path": "/p", "tls": {"verify": False}, "pool": {}}
    assert with_defaults(schema, given) == {"path": "/p", "tls": {"verify": False}, "pool": {"size": 4}}
    assert given == {"path": "/p", "tls": {"verify": False}, "pool": {}}  # not modified
    first = with_defaults(schema, {})
    first["tls"]["verify"] = False
    assert schema["properties"]["tls"]["default"] == {}  # defaults are copied, never shared


def test_engine_settings_take_their_defaults_from_the_config_schema():
    schema = BASE_SCHEMA["properties"]["engine"]["properties"]
    settings = EngineSettings()
    for name, prop in schema.items():
        assert getattr(settings, name) == prop["default"], name
    assert EngineSettings.from_options({"batch_size": 7}).batch_size == 7


@pytest.mark.parametrize("module", ["sqlite_sink", "jsonl_sink", "postgres_sink", "normalize", "validate"])
def test_built_in_components_type_no_option_default_a_second_time(module):
    """A default lives in the component's schema; the code reads options[...] (complete) only."""
    source = (ROOT / "plugins" / f"{module}.py").read_text()
    gets = [n for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
            and isinstance(n.func.value, ast.Name) and n.func.value.id == "options" and len(n.args) > 1]
    assert not gets, f"plugins/{module}.py:{gets[0].lineno}: options.get with a default typed again"


# -- the import graph -------------------------------------------------------------------------------


def framework_imports() -> dict[str, set[str]]:
    """framework module → the framework modules it imports, anywhere in the file."""
    modules = {p: ".".join(p.relative_to(FRAMEWORK).with_suffix("").parts) for p in FRAMEWORK.rglob("*.py")}
    modules = {p: (name[: -len(".__init__")] if name.endswith(".__init__") else name) for p, name in modules.items()}
    known = set(modules.values())
    graph: dict[str, set[str]] = {}
    for path, name in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tickwire.framework"):
                base = node.module.removeprefix("tickwire.framework").lstrip(".")
                targets = [f"{base}.{a.name}" if base else a.name for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("tickwire.framework.") for a in node.names if a.name.startswith("tickwire.framework.")]
            for target in targets:
                if target in known and target != name:
                    edges.add(target)
    return graph


def test_framework_modules_import_without_cycles():
    graph = framework_imports()
    assert "engine.core" in graph and "components" in graph["engine.routing"]
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
