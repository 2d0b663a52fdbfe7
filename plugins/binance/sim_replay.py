"""Replay: a capture made by ``tickwire record`` served again, to every connection from its start.

Each frame keeps its offset from the first one (``speed`` scales it; 0 sends as fast as the
client reads). Frames of a subscribed stream go to connections subscribed to it, frames
without a stream (binary, unparsable, non-event) to every connection as they were recorded;
the recording session's own SUBSCRIBE replies are left out. The capture's trades also become
the REST history of their symbols.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from tickwire.plugins.binance.capture import read_capture
from tickwire.plugins.binance.market import Market, parse8
from tickwire.plugins.binance.sim_connections import Connection
from tickwire.plugins.binance.sim_frames import BINARY, TEXT


@dataclass
class ReplayFrame:
    offset: float  # seconds since the first frame
    stream: str | None
    raw: bytes
    combined: bytes
    binary: bool = False


def load_replay(path: str, market: Market) -> list[ReplayFrame]:
    """The frames of the capture at ``path``; its trades are recorded into ``market``."""
    _, frames = read_capture(path)
    out: list[ReplayFrame] = []
    t0 = frames[0].ns if frames else 0
    for fr in frames:
        offset = (fr.ns - t0) / 1e9
        if fr.binary or fr.stream is None:
            if not fr.binary and _is_reply(fr.data):
                continue  # SUBSCRIBE replies of the recording session are not events
            out.append(ReplayFrame(offset, None, fr.data, fr.data, fr.binary))
            continue
        try:
            obj = orjson.loads(fr.data)
        except orjson.JSONDecodeError:
            obj = None
        data = obj.get("data", obj) if isinstance(obj, dict) and "stream" in obj else obj
        if not isinstance(data, dict):
            out.append(ReplayFrame(offset, None, fr.data, fr.data))
            continue
        raw = orjson.dumps(data)
        combined = b'{"stream":"%s","data":%s}' % (fr.stream.encode(), raw)
        out.append(ReplayFrame(offset, fr.stream, raw, combined))
        if data.get("e") == "trade":
            _load_trade(market, data)
    return out


def _load_trade(market: Market, d: dict) -> None:
    try:
        st = market.ensure(str(d["s"]))
        tid = int(d["t"])
        if st.generated and tid <= st.last_id:
            return
        if not st.generated:
            st.first_id = tid
        st.record(tid, parse8(d["p"]), parse8(d["q"]), int(d["T"]), bool(d["m"]))
        st.next_id = tid + 1
    except (KeyError, ValueError, TypeError):
        return  # schema-violating trades in the capture stay out of the REST history


def _is_reply(text: bytes) -> bool:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "id" in obj and ("result" in obj or "error" in obj)


class Replay:
    """Serves ``frames`` to one connection at a time (``serve`` runs once per connection)."""

    def __init__(self, frames: list[ReplayFrame], speed: float):
        self.frames = frames
        self.speed = speed

    async def serve(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        speed = self.speed
        start = loop.time()
        for i, fr in enumerate(self.frames):
            if conn.closed:
                return
            if speed > 0:
                due = start + fr.offset / speed
                if due > loop.time():
                    conn.flush()
                    await asyncio.sleep(due - loop.time())
            elif i % 256 == 255:
                conn.flush()
                if conn.paused:
                    await conn.drain()
                await asyncio.sleep(0)
            if fr.stream is None:
                if not conn.closed:
                    conn.send_frame(fr.raw, BINARY if fr.binary else TEXT)
            elif fr.stream in conn.streams:
                conn.data(fr.raw, fr.combined, fr.stream)
        conn.flush()
