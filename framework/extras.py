"""Optional dependencies: what a component needs only when it is used, and how to install it.

tickwire installs with its run-time dependencies only; PostgreSQL, Kafka and Spark support come
with the extras of pyproject.toml (``pip install 'tickwire[postgres]'``). Every plugin loads
without them: a component says what it needs (``SinkSpec(requires=POSTGRES)``, or
:func:`requires` on a click command), ``tickwire plugins`` lists it as unavailable with the
command that fixes it, and only a run, sink or command that actually uses it stops with that
message (exit code 2). Modules of an extra are imported on first use through
:func:`optional_module`, so importing the plugin never needs them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import click


class MissingDependency(Exception):
    """A component that is used needs a module that is not installed; the message says which
    component, which module and the command that installs it."""


@dataclass(frozen=True)
class Requirement:
    """Python modules a component needs at run time, and the command that installs them."""

    modules: tuple[str, ...]
    install: str  # e.g. "pip install 'tickwire[postgres]'"

    def missing(self) -> list[str]:
        """The modules that cannot be found (found without importing them)."""
        return [name for name in self.modules if _find_spec(name) is None]

    def problem(self, who: str) -> str | None:
        """Why ``who`` cannot be used here, or None when everything is installed."""
        missing = self.missing()
        if not missing:
            return None
        verb = "is" if len(missing) == 1 else "are"
        return f"{who} needs {', '.join(missing)}, which {verb} not installed; install it with: {self.install}"

    def check(self, who: str) -> None:
        """Raise :class:`MissingDependency` if ``who`` cannot be used here."""
        problem = self.problem(who)
        if problem:
            raise MissingDependency(problem)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package missing, or sys.modules[name] is None
        return None


def extra(name: str, *modules: str) -> Requirement:
    """The requirement met by installing tickwire's extra ``name``."""
    return Requirement(modules, f"pip install 'tickwire[{name}]'")


# The extras of pyproject.toml ([project.optional-dependencies]) and the module each provides.
POSTGRES = extra("postgres", "psycopg")
KAFKA = extra("kafka", "aiokafka")
SPARK = extra("spark", "pyspark")


class _OptionalModule(ModuleType):
    """Stands for a module that is imported on first attribute access."""

    def __init__(self, name: str, requirement: Requirement, who: str):
        super().__init__(name)
        self._tickwire_optional = (requirement, who)

    def __getattr__(self, attribute: str) -> Any:
        requirement, who = self._tickwire_optional
        requirement.check(who)
        module = importlib.import_module(self.__name__)
        return getattr(module, attribute)


def optional_module(name: str, requirement: Requirement, who: str | None = None) -> Any:
    """``name`` (e.g. ``"psycopg"``), imported when first used, so a plugin module can be
    imported without it. Used while missing, it raises :class:`MissingDependency`."""
    return _OptionalModule(name, requirement, who or f"this component ({name})")


def requires(requirement: Requirement):
    """Decorator for a click command: it checks ``requirement`` before running (exit 2 with
    the install command when something is missing), and ``tickwire plugins`` shows it."""

    def decorate(command: click.Command) -> click.Command:
        callback = command.callback

        @functools.wraps(callback)
        def checked(*args, **kwargs):
            requirement.check(f"`{command_path()}`")
            return callback(*args, **kwargs)

        command.callback = checked
        command.tickwire_requires = requirement  # read by the plugin manager for the listing
        return command

    return decorate


def command_path() -> str:
    """``tickwire db migrate`` for the command being run."""
    context = click.get_current_context(silent=True)
    return context.command_path if context else "this command"
