"""From one WebSocket frame to a record, a dead letter, a reply or a shutdown notice.

This is the hot path: one ``orjson.loads`` and a few dict lookups per frame, no logging. Every
connection of a source shares one :class:`FrameRouter`, so trade-id and ticker state is the
same whichever connection a frame came from (that is what makes rotation overlaps and late
arrivals safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import orjson

from plugins.binance.gaps import DUPLICATE, GAP, RecentKeys, TradeIdTracker

SHUTDOWN_STREAM = "!serverShutdown"
DEAD_LETTER_SAMPLE_BYTES = 65536  # what we keep of an oversized frame


class ServerShutdown(Exception):
    """Binance announced a restart (``serverShutdown``): reconnect now."""


@dataclass(slots=True, eq=False)
class Channel:
    """One subscribed Binance stream, e.g. ``btcusdt@trade``, and its dedup state."""

    name: str  # as Binance spells it (lowercase)
    stream: str  # tickwire stream name (streams.yaml)
    symbol: str  # uppercase
    event_type: str | None  # expected ``e``; None accepts any
    trades: TradeIdTracker | None = None  # trade streams: dedup + gaps by id ``t``
    recent: RecentKeys | None = None  # other streams: dedup by event time ``E``
    duplicates: int = 0  # not yet reported to metrics
    accepted: int = 0


class FrameRouter:
    """Turns frames into ``emit.record`` / ``emit.dead_letter`` calls.

    ``on_gap(channel)`` is called (synchronously) when a trade id jumps and leaves ids missing.
    ``on_reply(conn, msg, raw)`` is the connection's business (SUBSCRIBE answers).
    """

    __slots__ = ("channels", "emit", "max_frame_bytes", "on_gap", "dead_letters", "frames", "_record")

    def __init__(self, channels: dict[str, Channel], emit, max_frame_bytes: int, on_gap: Callable[[Channel], None]):
        self.channels = channels
        self.emit = emit
        self.max_frame_bytes = max_frame_bytes
        self.on_gap = on_gap
        self.dead_letters = 0
        self.frames = 0
        # the engine's Emitter has a no-coroutine variant; any other emitter gets record()
        self._record = getattr(emit, "record_nowait", None) or emit.record

    async def dead(self, stream: str | None, reason: str, raw: str | bytes) -> None:
        self.dead_letters += 1
        await self.emit.dead_letter(stream, reason, raw)

    def stream_hint(self, raw: str | bytes) -> str | None:
        """The tickwire stream of a frame we cannot parse, from its ``{"stream":"…"`` prefix."""
        head = raw[:80]
        if not isinstance(head, str):
            head = bytes(head).decode("utf-8", "replace")
        if head.startswith('{"stream":"'):
            end = head.find('"', 11)
            ch = self.channels.get(head[11:end]) if end > 11 else None
            if ch is not None:
                return ch.stream
        return None

    async def handle(self, raw: str | bytes, received_ns: int, conn) -> None:
        pending = self.handle_nowait(raw, received_ns, conn)
        if pending is not None:
            await pending

    def handle_nowait(self, raw: str | bytes, received_ns: int, conn):
        """``handle`` without the coroutine: returns None, or a coroutine to await before the
        next frame (a dead letter, a reply, or the engine handing a full batch to a sink). The
        receive loop calls this, so a frame costs no coroutine layers of ours."""
        self.frames += 1
        if type(raw) is not str:
            reason = f"binary frame ({len(raw)} bytes): Binance market streams send JSON text"
            return self.dead(self.stream_hint(raw), reason, raw)
        if len(raw) > self.max_frame_bytes:
            return self.dead(
                self.stream_hint(raw),
                f"oversized frame: {len(raw)} bytes > max_frame_bytes {self.max_frame_bytes}"
                f" (first {DEAD_LETTER_SAMPLE_BYTES} kept)",
                raw[:DEAD_LETTER_SAMPLE_BYTES],
            )
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self.dead(self.stream_hint(raw), f"malformed JSON: {exc}", raw)
        if type(msg) is not dict:
            return self.dead(None, f"unexpected frame: a JSON {type(msg).__name__}, not an object", raw)

        name = msg.get("stream")
        if name is None:
            if "id" in msg and ("result" in msg or "error" in msg):
                return conn.on_reply(msg, raw)
            if msg.get("e") == "serverShutdown":
                raise ServerShutdown()
            return self.dead(None, "unexpected frame: neither a combined-stream event nor a request reply", raw)

        ch = self.channels.get(name)
        data = msg.get("data")
        if ch is None:
            if name == SHUTDOWN_STREAM or (type(data) is dict and data.get("e") == "serverShutdown"):
                raise ServerShutdown()
            return self.dead(None, f"unknown stream {name!r}: not subscribed by this source", raw)
        if type(data) is not dict:
            return self.dead(ch.stream, f"{name}: 'data' is missing or not a JSON object", raw)
        etype = ch.event_type
        if etype is not None and data.get("e") != etype:
            if data.get("e") == "serverShutdown":
                raise ServerShutdown()
            return self.dead(ch.stream, f"{name}: unexpected event type {data.get('e')!r} (expected {etype!r})", raw)

        tracker = ch.trades
        if tracker is not None:
            t = data.get("t")
            if type(t) is not int:
                return self.dead(ch.stream, f"{name}: trade without an integer trade id 't'", raw)
            last = tracker.last
            if last is not None and t == last + 1:
                tracker.last = t  # the next trade in sequence: TradeIdTracker.accept's first case, inlined
            else:
                verdict = tracker.accept(t)
                if verdict == DUPLICATE:
                    ch.duplicates += 1
                    return None
                if verdict == GAP:
                    self.on_gap(ch)
        else:
            event_time = data.get("E")
            if event_time is not None and not ch.recent.add(event_time):
                ch.duplicates += 1
                return None
        ch.accepted += 1
        return self._record(ch.stream, data, received_ns)


def build_channels(streams, source_name: str) -> dict[str, Channel]:
    """Channel name → :class:`Channel` for every stream of ``source_name``."""
    out: dict[str, Channel] = {}
    for spec in streams:
        if spec.source != source_name:
            continue
        etype = spec.event_type
        for chan, symbol in spec.channels().items():
            chan = chan.lower()
            if chan in out:
                raise ValueError(
                    f"Binance channel {chan!r} is used by streams {out[chan].stream!r} and {spec.name!r}; "
                    "a channel can feed only one stream"
                )
            is_trade = etype == "trade" or (etype is None and chan.endswith("@trade"))
            out[chan] = Channel(
                name=chan,
                stream=spec.name,
                symbol=symbol.upper(),
                event_type=etype,
                trades=TradeIdTracker() if is_trade else None,
                recent=None if is_trade else RecentKeys(),
            )
    return out
