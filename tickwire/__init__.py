"""tickwire: declarative, plugin-based ingestion of market streams.

This module is the API a plugin author imports; everything else is internal and may change::

    from tickwire import SinkSpec, hookimpl

    @hookimpl
    def tickwire_register_sinks(register):
        register(SinkSpec(name="csv", factory=CsvSink, description="…"))

Register the module in the ``tickwire`` entry-point group of your package (or put it in a
plugin folder: ``--plugins-dir``). Hooks are documented in ``tickwire.framework.hookspecs``.
Test it with the author kit (``tickwire.framework.testing``, a pytest plugin once tickwire is
installed): :class:`SinkConformance`, :class:`SourceContract`, :class:`TransformContract`, and
:func:`streams_yaml` for a project to run. docs/plugins.md is the tutorial.

The installed package holds the repository's folders under one name: ``tickwire.framework``
(the core), ``tickwire.plugins`` (the built-in plugins), ``tickwire.spark`` (the Spark job), and
as package data the default ``streams.yaml`` and ``schemas/`` (what ``tickwire init`` copies).
"""

from tickwire.framework.components import (
    CodegenSpec,
    DeadLetter,
    Emitter,
    InvalidRecord,
    PluginError,
    RunContext,
    Sink,
    SinkSpec,
    Source,
    SourceSpec,
    Transform,
    TransformSpec,
)
from tickwire.framework.extras import MissingDependency, Requirement, optional_module, requires
from tickwire.framework.hookspecs import hookimpl
from tickwire.framework.schemas import Column, StreamSpec
from tickwire.framework.testing import (
    FusedTransformContract,
    ListSource,
    RecordingEmitter,
    RecordingSink,
    SinkCase,
    SinkConformance,
    SourceCase,
    SourceContract,
    TransformCase,
    TransformContract,
    check_sink_conformance,
    check_source_contract,
    make_context,
    stream_spec,
    streams_config,
    streams_yaml,
    trade_payload,
)

__all__ = [
    "CodegenSpec", "Column", "DeadLetter", "Emitter", "FusedTransformContract", "InvalidRecord", "ListSource",
    "MissingDependency", "PluginError", "RecordingEmitter", "RecordingSink", "Requirement", "RunContext", "Sink",
    "SinkCase", "SinkConformance", "SinkSpec", "Source", "SourceCase", "SourceContract", "SourceSpec", "StreamSpec",
    "Transform", "TransformCase", "TransformContract", "TransformSpec", "check_sink_conformance",
    "check_source_contract", "hookimpl", "make_context", "optional_module", "requires", "stream_spec",
    "streams_config", "streams_yaml", "trade_payload",
]
