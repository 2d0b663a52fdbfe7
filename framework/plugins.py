"""Loading plugins and collecting what they register.

Built-in plugins and third-party ones come through the same entry-point group (``tickwire``);
local plugin folders add ``*.py`` modules. Any plugin can be blocked by name. Every problem is
reported with the plugin's name. A plugin that fails to import is skipped (as tox does): it is
listed by ``tickwire plugins`` and named in a warning, and everything else keeps working; the
config then fails only if it uses something only that plugin would have registered. A hook
whose name matches no spec (a typo) or a component registered twice stops every command.
A component whose optional dependency is missing (``requires``, see framework/extras.py) is
registered but listed as unavailable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Iterable

import pluggy

from tickwire.framework import hookspecs
from tickwire.framework.components import CodegenSpec, DerivedSpec, PluginError, SinkSpec, SourceSpec, TransformSpec


@dataclass
class PluginInfo:
    name: str
    origin: str  # "tickwire 0.1.0 (built-in)", "acme-sink 1.2", "local folder: ./plugins.local"
    module: str
    registers: list[str] = field(default_factory=list)  # "sink:sqlite", "command:simulate", …
    error: str | None = None
    skipped: bool = False  # failed to import: nothing it would register is there
    unavailable: list[str] = field(default_factory=list)  # components whose dependencies are missing


class _Manager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        # Like pytest: any function named tickwire_* is a hook implementation, marked or not,
        # so that a misspelt hook name is caught by check_pending() instead of silently ignored.
        if opts is None and name.startswith("tickwire_") and inspect.isroutine(getattr(plugin, name, None)):
            opts = {}
        return opts


class PluginManager:
    """Loads plugins, checks their hooks, and builds the component registries."""

    def __init__(self, *, block: Iterable[str] = (), directories: Iterable[Path] = (), entry_points: bool = True):
        self.pm = _Manager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.errors: list[str] = []  # stop every command that needs the plugins
        self.skipped: list[str] = []  # plugins that failed to import, one message each
        self.blocked = sorted(set(block))
        for name in self.blocked:
            self.pm.set_blocked(name)
        if entry_points:
            self._load_entry_points()
        for directory in directories:
            self._load_directory(Path(directory))
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._fail(exc.plugin_name if hasattr(exc, "plugin_name") else self.pm.get_name(exc.plugin), f"{exc}")
        self.sources: dict[str, SourceSpec] = {}
        self.transforms: dict[str, TransformSpec] = {}
        self.sinks: dict[str, SinkSpec] = {}
        self.codegen: dict[str, CodegenSpec] = {}
        self.derived: dict[str, DerivedSpec] = {}  # derived-stream kinds (framework/derived.py)
        self.config_sections: dict[str, dict] = {}
        self._collect()

    # -- loading ---------------------------------------------------------------------------

    def _fail(self, plugin: str, message: str) -> None:
        self.errors.append(f"plugin '{plugin}': {message}")
        if plugin in self.infos:
            self.infos[plugin].error = message

    def _skip(self, info: PluginInfo, message: str) -> None:
        info.error, info.skipped = message, True
        self.infos[info.name] = info
        self.skipped.append(f"plugin '{info.name}' skipped: {message}")

    def _register(self, module: ModuleType, name: str, origin: str) -> None:
        if name in self.infos:
            self._fail(name, f"a plugin of this name is already loaded from {self.infos[name].origin}")
            return
        self.infos[name] = PluginInfo(name, origin, module.__name__)
        try:
            self.pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            self._fail(name, str(exc))

    def _load_entry_points(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
            if self.pm.is_blocked(ep.name):
                continue
            dist = ep.dist
            origin = f"{dist.name} {dist.version}" if dist else "entry point"
            if dist and dist.name == "tickwire":
                origin += " (built-in)"
            try:
                module = ep.load()
            except Exception as exc:  # any import failure is the plugin's, reported by name
                self._skip(PluginInfo(ep.name, origin, ep.value), f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
                continue
            self._register(module, ep.name, origin)

    def _load_directory(self, directory: Path) -> None:
        if not directory.is_dir():
            self.errors.append(f"plugin folder {directory} does not exist")
            return
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            name = path.stem.replace("_", "-")
            if self.pm.is_blocked(name):
                continue
            module_name = f"tickwire_local_plugins.{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            except Exception as exc:
                self._skip(PluginInfo(name, f"local folder {directory}", module_name),
                           f"failed to import {path}: {type(exc).__name__}: {exc}")
                continue
            self._register(module, name, f"local folder {directory}")

    # -- registries ------------------------------------------------------------------------

    def _collect(self) -> None:
        tables = {
            "tickwire_register_sources": ("source", self.sources, SourceSpec),
            "tickwire_register_transforms": ("transform", self.transforms, TransformSpec),
            "tickwire_register_sinks": ("sink", self.sinks, SinkSpec),
            "tickwire_register_codegen_targets": ("codegen", self.codegen, CodegenSpec),
            "tickwire_register_derived": ("derived", self.derived, DerivedSpec),
        }
        for hook_name, (kind, registry, spec_type) in tables.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                self._call_register(impl, kind, registry, spec_type)
        for impl in self.pm.hook.tickwire_register_config.get_hookimpls():
            plugin = impl.plugin_name

            def register_section(section: str, schema: dict, plugin=plugin) -> None:
                if section in self.config_sections:
                    self._fail(plugin, f"config section '{section}' is already registered")
                    return
                self.config_sections[section] = schema
                self._note(plugin, f"config:{section}")

            self._guarded(plugin, impl.function, register=register_section)

    def _call_register(self, impl, kind: str, registry: dict, spec_type: type) -> None:
        plugin = impl.plugin_name

        def register(spec) -> None:
            if not isinstance(spec, spec_type):
                self._fail(plugin, f"registered {spec!r} where a {spec_type.__name__} was expected")
                return
            if spec.name in registry:
                other = registry[spec.name].plugin
                self._fail(plugin, f"{kind} '{spec.name}' is already registered by plugin '{other}'")
                return
            registry[spec.name] = replace(spec, plugin=plugin)
            self._note(plugin, f"{kind}:{spec.name}")
            if spec.requires is not None:
                self._note_unavailable(plugin, spec.requires.problem(f"{kind} '{spec.name}'"))

        self._guarded(plugin, impl.function, register=register)

    def _guarded(self, plugin: str, function, **kwargs) -> None:
        try:
            function(**{k: v for k, v in kwargs.items() if k in inspect.signature(function).parameters})
        except Exception as exc:
            self._fail(plugin, f"{function.__name__} failed: {type(exc).__name__}: {exc}")

    def _note(self, plugin: str, what: str) -> None:
        if plugin in self.infos:
            self.infos[plugin].registers.append(what)

    def _note_unavailable(self, plugin: str, problem: str | None) -> None:
        if problem and plugin in self.infos:
            self.infos[plugin].unavailable.append(problem)

    def add_commands(self, cli) -> None:
        """Let plugins add CLI commands; records which plugin added which command."""
        for impl in self.pm.hook.tickwire_register_commands.get_hookimpls():
            before = set(cli.commands)
            self._guarded(impl.plugin_name, impl.function, cli=cli)
            for command in sorted(set(cli.commands) - before):
                self._note(impl.plugin_name, f"command:{command}")
                for path, requirement in _command_requirements(cli.commands[command], f"tickwire {command}"):
                    self._note_unavailable(impl.plugin_name, requirement.problem(f"`{path}`"))

    def raise_errors(self) -> None:
        if self.errors:
            raise PluginError("\n".join(self.errors))


def _command_requirements(command, path: str):
    """(command path, requirement) of a click command and its subcommands marked with
    :func:`tickwire.framework.extras.requires`."""
    requirement = getattr(command, "tickwire_requires", None)
    if requirement is not None:
        yield path, requirement
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _command_requirements(sub, f"{path} {name}")
