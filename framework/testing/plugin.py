"""The pytest plugin of the author kit, registered by tickwire's ``pytest11`` entry point.

Installed with tickwire, it is active in every pytest run (no conftest needed) and costs only
this import: the fixtures build what a plugin's tests need, nothing runs unless a test asks.

* ``tickwire_context(*streams)``: a :class:`~tickwire.framework.components.RunContext` whose
  ``config_dir`` is the test's ``tmp_path``;
* ``tickwire_stream``: the factory :func:`~tickwire.framework.testing.stream_spec`;
* ``tickwire_project(**sections)``: writes ``tmp_path/streams.yaml`` from
  :func:`~tickwire.framework.testing.streams_config` and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from tickwire.framework.components import RunContext
from tickwire.framework.schemas import StreamSpec
from tickwire.framework.testing.builders import make_context, stream_spec
from tickwire.framework.testing.project import write_streams_yaml


def pytest_report_header(config: pytest.Config) -> str:
    from importlib.metadata import version

    return f"tickwire plugin kit: tickwire {version('tickwire')}"


@pytest.fixture
def tickwire_context(tmp_path: Path) -> Callable[..., RunContext]:
    """``tickwire_context(*streams)``: a fresh RunContext rooted at ``tmp_path``."""

    def build(*streams: StreamSpec) -> RunContext:
        return make_context(list(streams), tmp_path)

    return build


@pytest.fixture
def tickwire_stream() -> Callable[..., StreamSpec]:
    """``tickwire_stream("trade")``: a StreamSpec of one of tickwire's schemas (or a schema file)."""
    return stream_spec


@pytest.fixture
def tickwire_project(tmp_path: Path) -> Callable[..., Path]:
    """``tickwire_project(sinks=…, profiles=…, …)``: ``tmp_path/streams.yaml``, written."""

    def write(**sections: Any) -> Path:
        return write_streams_yaml(tmp_path / "streams.yaml", **sections)

    return write
