"""Component specs and the protocols sources, transforms and sinks implement.

A spec is what a plugin registers: a name (the ``type`` used in streams.yaml), a factory, the
JSON Schema of the component's options (validated with the config and shown by
``tickwire plugins``), and a one-line description. See docs/architecture.md for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from framework.config import Config
    from framework.extras import Requirement
    from framework.metrics import Metrics
    from framework.schemas import StreamSpec


class InvalidRecord(Exception):
    """Raised by a transform: the record goes to the dead-letter destination with ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PluginError(Exception):
    """A plugin failed to load or register; the message names the plugin."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, with the reason, kept for inspection or replay."""

    stream: str | None
    reason: str
    plugin: str
    raw: str
    received_at: str  # ISO-8601 UTC


@dataclass(slots=True)
class RunContext:
    """What a source or sink factory gets besides its own options."""

    config: Config
    streams: list[StreamSpec]
    metrics: Metrics
    log: Any  # a structlog BoundLogger bound with plugin= and component=
    config_dir: Any  # pathlib.Path; relative paths in options resolve against it


class Emitter(Protocol):
    """Given to a running source: where its payloads go."""

    async def record(self, stream: str, payload: dict, received_ns: int) -> None:
        """Hand one payload (the Binance event, unwrapped) of ``stream`` to the engine.

        Awaiting it may block: that is backpressure from the sinks."""

    async def dead_letter(self, stream: str | None, reason: str, raw: str | bytes) -> None:
        """Report a frame that cannot become a record (malformed, unknown, oversized…)."""


class Source(Protocol):
    async def run(self, emit: Emitter) -> None:
        """Produce until cancelled. Reconnects by itself; never returns on transient errors."""


Transform = Callable[[dict], "dict | None"]


class Sink(Protocol):
    supports_dead_letters: bool

    async def open(self) -> None: ...

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        """Store ``records`` of ``stream``. Return only when they are committed: returning
        is the acknowledgement. Raise to have the engine retry the batch."""

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None: ...

    async def close(self) -> None:
        """Flush and release. Called once, after the last write."""


@dataclass(frozen=True)
class _Spec:
    name: str
    factory: Callable[..., Any]
    description: str
    config_schema: dict = field(default_factory=lambda: {"type": "object"})
    plugin: str = ""  # filled in by the plugin manager
    # Modules needed only when the component is used (framework.extras); missing ones make it
    # unavailable, not the plugin: e.g. ``requires=POSTGRES`` says ``pip install 'tickwire[postgres]'``.
    requires: Requirement | None = None


@dataclass(frozen=True)
class SourceSpec(_Spec):
    """``factory(name: str, options: dict, ctx: RunContext) -> Source``"""

    kind = "source"


@dataclass(frozen=True)
class TransformSpec(_Spec):
    """``factory(stream: StreamSpec, options: dict) -> Transform``"""

    kind = "transform"


@dataclass(frozen=True)
class SinkSpec(_Spec):
    """``factory(name: str, options: dict, ctx: RunContext) -> Sink``"""

    kind = "sink"
    supports_dead_letters: bool = False


@dataclass(frozen=True)
class CodegenSpec(_Spec):
    """``factory(config: Config) -> dict[str, str]`` (file name → content, deterministic)"""

    kind = "codegen"
