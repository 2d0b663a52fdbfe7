"""The author kit: what tickwire's own tests and a third-party plugin's tests use.

Contract suites (each a pytest mix-in and a plain ``check_*`` function; docs/plugins.md shows
them in use):

* sinks — :class:`SinkConformance` with a :class:`SinkCase` (``sinks.py``);
* sources — :class:`SourceContract` with a :class:`SourceCase` against a real server
  (``sources.py``);
* transforms — :class:`TransformContract` with a :class:`TransformCase`, and
  :class:`FusedTransformContract` for a transform that fuses with the next (``transforms.py``,
  needs hypothesis).

Building blocks: :func:`stream_spec`, :func:`trade_payload`, :func:`make_context`,
:func:`normalized` (``builders.py``); :func:`streams_config` / :func:`streams_yaml` for a
streams.yaml (``project.py``); :class:`ListSource`, :class:`RecordingSink` and
:class:`RecordingEmitter` (``fakes.py``); :func:`assert_clean_json_log` (``logs.py``). The
pytest fixtures of ``plugin.py`` are active wherever tickwire is installed (``pytest11``).

The kit imports no built-in plugin: it finds the built-in transforms through the plugin
registry when asked, and reads no file of a source tree.
"""

from tickwire.framework.testing.builders import (
    TRADE_EPOCH_MS,
    await_me_maybe,
    make_context,
    normalized,
    registered_transforms,
    stream_spec,
    trade_payload,
    transform_chain,
)
from tickwire.framework.testing.fakes import LIST_SOURCE, RECORDING_SINK, ListSource, RecordingEmitter, RecordingSink
from tickwire.framework.testing.logs import assert_clean_json_log
from tickwire.framework.testing.project import shipped_streams, stream_block, streams_config, streams_yaml, write_streams_yaml
from tickwire.framework.testing.sinks import SinkCase, SinkConformance, check_sink_conformance
from tickwire.framework.testing.sources import SourceCase, SourceContract, check_source_contract
from tickwire.framework.testing.transforms import (
    FusedTransformContract,
    TransformCase,
    TransformContract,
    check_fused_matches_the_chain,
)

__all__ = [
    "LIST_SOURCE", "RECORDING_SINK", "TRADE_EPOCH_MS", "FusedTransformContract", "ListSource", "RecordingEmitter",
    "RecordingSink", "SinkCase", "SinkConformance", "SourceCase", "SourceContract", "TransformCase", "TransformContract",
    "assert_clean_json_log", "await_me_maybe", "check_fused_matches_the_chain", "check_sink_conformance",
    "check_source_contract", "make_context", "normalized", "registered_transforms", "shipped_streams", "stream_block",
    "stream_spec", "streams_config", "streams_yaml", "trade_payload", "transform_chain", "write_streams_yaml",
]
