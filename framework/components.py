"""Component specs and the protocols sources, transforms and sinks implement.

A spec is what a plugin registers: a name (the ``type`` used in streams.yaml), a factory, the
JSON Schema of the component's options (validated with the config and shown by
``tickwire plugins``), and a one-line description. See docs/architecture.md for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tickwire.framework.config import Config
    from tickwire.framework.extras import Requirement
    from tickwire.framework.metrics import Metrics
    from tickwire.framework.schemas import StreamSpec


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


# Why a range of trade ids was given up (TradeGap.reason); docs/architecture.md explains each.
GAP_TOO_LARGE = "too_large"  # longer than the source's gap_fill_max_trades
GAP_NOT_SERVED = "not_served"  # older than the exchange's REST history still holds
GAP_REST_ERROR = "rest_error"  # REST refused or kept failing
GAP_FILL_OFF = "gap_fill_off"  # the source was configured not to fetch gaps
GAP_TOO_MANY = "too_many_gaps"  # more holes open at once than the source keeps (the oldest goes)
GAP_REASONS = (GAP_TOO_LARGE, GAP_NOT_SERVED, GAP_REST_ERROR, GAP_FILL_OFF, GAP_TOO_MANY)


@dataclass(frozen=True, slots=True)
class TradeGap:
    """Trades ``first_id`` … ``last_id`` (inclusive) of ``symbol`` in ``stream`` are lost for
    good: a source reports it once it stopped trying (never for a range it may still fill), the
    engine records it in every store of the stream (``trade_gaps``) and counts it in
    ``tickwire_trade_gap_trades_lost_total``."""

    stream: str
    symbol: str
    first_id: int
    last_id: int
    reason: str  # one of GAP_REASONS
    detected_at: str  # ISO-8601 UTC

    @property
    def count(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass(slots=True)
class RunContext:
    """What a source or sink factory gets besides its own options."""

    config: Config
    streams: list[StreamSpec]
    metrics: Metrics
    log: Any  # a structlog BoundLogger bound with plugin= and component=
    config_dir: Any  # pathlib.Path; relative paths in options resolve against it
    # Sources only: stream → symbol → the last sequence id (trade id) every store of the stream
    # holds (the minimum over the sinks that could tell). A source resumes after it, filling the
    # downtime; a symbol absent here starts from the live stream.
    resume: dict[str, dict[str, int]] = field(default_factory=dict)
    # Sources only: report a range lost for good; the engine logs it, counts it and records it in
    # the stream's stores (trade_gaps) or the dead-letter destination. Never blocks.
    report_gap: Callable[[TradeGap], None] | None = None


class Rejected:
    """What :meth:`Emitter.record_nowait` returns for a record it did not accept (invalid, or
    for an unknown stream): awaiting it delivers the dead letter. A distinct type, so a source
    can tell "rejected" from "accepted, but wait" with one ``type(x) is Rejected`` — and mark a
    trade id or event as seen only when its record was accepted."""

    __slots__ = ("_delivery",)

    def __init__(self, delivery: Awaitable[None]):
        self._delivery = delivery

    def __await__(self) -> Generator[Any, None, None]:
        return self._delivery.__await__()


class Emitter(Protocol):
    """Given to a running source: where its payloads go.

    The contract for one payload, whichever method hands it over:

    * **accepted**: the engine validated it and buffered it for every sink; from then on it is
      the engine's (a source may mark its id as seen);
    * **rejected**: it went (or goes, once awaited) to the dead letters with a reason; the
      source must not treat it as seen — the real record may still come;
    * dropped on purpose by a transform (returned None): counts as accepted.
    """

    async def record(self, stream: str, payload: dict, received_ns: int) -> bool:
        """Hand one payload (the Binance event, unwrapped) of ``stream`` to the engine; return
        True when it was accepted, False when it was rejected (its dead letter is delivered).

        Awaiting it may block: that is backpressure from the sinks."""

    def record_nowait(self, stream: str, payload: dict, received_ns: int) -> Awaitable[None] | None:
        """``record`` without a coroutine, for hot loops (every coroutine layer costs tenths of a
        µs). Returns:

        * ``None``: accepted and buffered — nothing to wait for (the common case);
        * a :class:`Rejected`: not accepted; await it before the next record (it delivers the
          dead letter);
        * any other awaitable: accepted, and a full batch is being handed to a sink; await it
          before the next record (that is the backpressure).

        So ``pending is None or type(pending) is not Rejected`` means accepted."""

    async def dead_letter(self, stream: str | None, reason: str, raw: str | bytes) -> None:
        """Report a frame that cannot become a record (malformed, unknown, oversized…)."""


class Source(Protocol):
    async def run(self, emit: Emitter) -> None:
        """Produce until cancelled. Reconnects by itself; never returns on transient errors."""


Transform = Callable[[dict], "dict | None"]


class Sink(Protocol):
    """A store. Besides these members a sink may have the optional ones of
    :class:`ResumableSink` and :class:`GapRecordingSink` (docs/architecture.md)."""

    supports_dead_letters: bool

    async def open(self) -> None: ...

    async def write(self, stream: StreamSpec, records: list[dict]) -> None:
        """Store ``records`` of ``stream``. Return only when they are committed: returning
        is the acknowledgement. Raise to have the engine retry the batch."""

    async def write_dead_letters(self, letters: list[DeadLetter]) -> None: ...

    async def close(self) -> None:
        """Flush and release. Called once, after the last write."""


@runtime_checkable
class ResumableSink(Protocol):
    """Optional Sink member: what the store already holds, so a restart loses nothing."""

    async def last_sequence_ids(self, stream: StreamSpec) -> dict[str, int] | None:
        """Per partition value (symbol), the last sequence id (trade id) of ``stream`` this sink
        holds durably, such that it holds every id of its recent window up to it (a hole that
        is not recorded in ``trade_gaps`` lowers it to just below the hole); ``{}`` when it holds
        nothing; None when it cannot tell. Columns come from the schema's ``x-tickwire.sequence``
        annotation (``stream.sequence``). Called once, after ``open()``, before any write."""


@runtime_checkable
class GapRecordingSink(Protocol):
    """Optional Sink member: record trades lost for good where the data goes."""

    async def write_gaps(self, gaps: list[TradeGap]) -> None:
        """Store ``gaps`` (``trade_gaps`` table, dead-letter topic…). Returning is the
        acknowledgement, as for ``write``; raise to have the engine retry. Idempotent per
        (stream, symbol, first_id)."""


@dataclass(frozen=True)
class _Spec:
    name: str
    factory: Callable[..., Any]
    description: str
    config_schema: dict = field(default_factory=lambda: {"type": "object"})
    plugin: str = ""  # filled in by the plugin manager
    # Modules needed only when the component is used (tickwire.framework.extras); missing ones make it
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
