"""The hooks tickwire plugins implement.

Hooks *register* things: sources, transforms, sinks, code-generation targets, CLI commands and
config-schema sections. They run once, at start-up. The per-record hot path is plain async code
in the engine, never a hook call.

Every hook is called with keyword arguments, so an implementation may accept only the
arguments it uses, and adding an argument later never breaks an existing plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from tickwire.framework.components import (
        CodegenSpec,
        DerivedSpec,
        SinkSpec,
        SourceSpec,
        TransformSpec,
    )

PROJECT = "tickwire"
ENTRY_POINT_GROUP = "tickwire"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tickwire_register_sources(register: Callable[[SourceSpec], None]) -> None:
    """Register source components (things that produce payloads, e.g. a WebSocket feed).

    :param register: call it once per :class:`~tickwire.framework.components.SourceSpec`. The spec's
        ``name`` is what streams.yaml puts in ``sources.<id>.type``.

    Called once when the plugin manager builds its registry.
    """


@hookspec
def tickwire_register_transforms(register: Callable[[TransformSpec], None]) -> None:
    """Register per-record transforms (``validate``, ``normalize``, …).

    :param register: call it once per :class:`~tickwire.framework.components.TransformSpec`. A
        transform factory receives the stream it serves and its complete options, and returns a
        :class:`~tickwire.framework.components.Transform` (``record -> record | None``, raising
        :class:`~tickwire.framework.components.InvalidRecord` to send a record to the dead-letter
        destination), optionally a :class:`~tickwire.framework.components.FusableTransform`.
    """


@hookspec
def tickwire_register_sinks(register: Callable[[SinkSpec], None]) -> None:
    """Register sink components (SQLite, Kafka, PostgreSQL, JSON lines, …).

    :param register: call it once per :class:`~tickwire.framework.components.SinkSpec`. The spec's
        ``name`` is what streams.yaml puts in ``sinks.<id>.type``; its factory returns a
        :class:`~tickwire.framework.components.Sink` and gets its options complete (the
        ``config_schema`` defaults filled in) and a narrow
        :class:`~tickwire.framework.components.RunContext`.
    """


@hookspec
def tickwire_register_derived(register: Callable[[DerivedSpec], None]) -> None:
    """Register derived-stream kinds computed inside ``tickwire run`` (``candles``, …).

    :param register: call it once per :class:`~tickwire.framework.components.DerivedSpec`; its
        ``name`` is what streams.yaml puts in ``derived.<name>.kind``. The contract of what the
        factory returns is :mod:`tickwire.framework.derived`.
    """


@hookspec
def tickwire_register_codegen_targets(register: Callable[[CodegenSpec], None]) -> None:
    """Register code-generation targets for ``tickwire generate TARGET``.

    :param register: call it once per :class:`~tickwire.framework.components.CodegenSpec`. The
        factory receives the loaded config and returns ``{relative file name: content}``;
        the output must be deterministic.
    """


@hookspec
def tickwire_register_commands(cli: click.Group) -> None:
    """Add commands or command groups to the ``tickwire`` CLI.

    :param cli: the root click group. Use ``cli.add_command`` or the ``@cli.command()``
        decorator. Command names must be unique across plugins.
    """


@hookspec
def tickwire_register_config(register: Callable[[str, dict], None]) -> None:
    """Add a top-level section to the streams.yaml schema.

    :param register: ``register(section, json_schema)``; the section becomes an allowed
        top-level key of streams.yaml, validated with ``json_schema``. Component option
        blocks do not need this: their schema comes with their spec.
    """
