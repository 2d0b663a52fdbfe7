"""Replay: a capture made by ``tickwire record`` served again, to every connection from its start.

A connection's replay starts when it first has a stream (in the URL, or its first SUBSCRIBE,
as tickwire connects): from then on each frame keeps its offset from the capture's first frame
(``speed`` scales it; 0 sends as fast as the client reads). A stream subscribed later (a client
subscribing in chunks) first gets, at once, its frames the replay has already passed, then
the rest in time: every subscribed stream is served from its first captured frame, once per
connection (unsubscribing and subscribing again resumes where the replay is). Frames without
a stream (binary, unparsable, non-event) go to the connection as they were recorded; the
recording session's own SUBSCRIBE replies are left out. The capture's trades also become the
REST history of their symbols.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from tickwire.plugins.binance.capture import read_capture
from tickwire.plugins.binance.decimal8 import parse8
from tickwire.plugins.binance.market import Market
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
    """The capture's frames, shared by every connection; ``session(conn)`` serves one connection."""

    def __init__(self, frames: list[ReplayFrame], speed: float):
        self.frames = frames
        self.speed = speed
        self.positions: dict[str, list[int]] = {}  # stream → indices of its frames, in order
        for i, fr in enumerate(frames):
            if fr.stream is not None:
                self.positions.setdefault(fr.stream, []).append(i)

    def streams(self) -> list[str]:
        """Every stream the capture holds frames of."""
        return list(self.positions)

    def session(self, conn: Connection) -> "ReplaySession":
        return ReplaySession(self, conn)


class ReplaySession:
    """The replay of one connection: ``subscribed`` is told every stream the connection adds
    (URL or SUBSCRIBE), ``run`` sends the frames (one task per connection)."""

    BATCH = 256  # frames between flushes (and back-pressure checks) when not paced

    def __init__(self, replay: Replay, conn: Connection):
        self.replay = replay
        self.conn = conn
        self.cursor = 0  # the next frame of the capture's timeline
        self.seen: set[str] = set()  # streams served on this connection (never served twice)
        self.pending: list[tuple[str, int]] = []  # (stream, catch up on its frames before this index)
        self.wake = asyncio.Event()

    def subscribed(self, streams: list[str]) -> None:
        """Streams the connection just added; those the replay has passed are caught up first."""
        for stream in streams:
            if stream in self.seen:
                continue
            self.seen.add(stream)
            if self.cursor and stream in self.replay.positions:
                self.pending.append((stream, self.cursor))
        self.wake.set()

    async def run(self) -> None:
        conn, frames, speed = self.conn, self.replay.frames, self.replay.speed
        loop = asyncio.get_running_loop()
        while not conn.streams:  # the clock starts with the first subscribed stream
            if conn.closed:
                return
            await self._wait(None)
        start = loop.time()
        unflushed = 0
        while self.cursor < len(frames) and not conn.closed:
            if self.pending:
                await self._catch_up()
                continue
            fr = frames[self.cursor]
            if speed > 0:
                due = start + fr.offset / speed
                if due > loop.time():
                    conn.flush()
                    await self._wait(due - loop.time())
                    continue  # a SUBSCRIBE may have come in meanwhile
            elif unflushed >= self.BATCH:
                unflushed = 0
                conn.flush()
                if conn.paused:
                    await conn.drain()
                await asyncio.sleep(0)
                continue
            self._send(fr)
            self.cursor += 1
            unflushed += 1
        conn.flush()
        while not conn.closed:  # the capture is over; later subscriptions still get their frames
            await self._wait(None)
            await self._catch_up()

    def _send(self, fr: ReplayFrame) -> None:
        conn = self.conn
        if fr.stream is None:
            if not conn.closed:
                conn.send_frame(fr.raw, BINARY if fr.binary else TEXT)
        elif fr.stream in conn.streams:
            conn.data(fr.raw, fr.combined, fr.stream)

    async def _wait(self, timeout: float | None) -> None:
        """Until a subscription comes in (or ``timeout`` seconds pass)."""
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    async def _catch_up(self) -> None:
        """Send the frames the replay passed before each pending stream was subscribed."""
        conn, frames = self.conn, self.replay.frames
        while self.pending and not conn.closed:
            stream, before = self.pending.pop(0)
            for n, i in enumerate(self.replay.positions[stream], 1):
                if i >= before or stream not in conn.streams:
                    break
                fr = frames[i]
                conn.data(fr.raw, fr.combined, stream)
                if n % self.BATCH == 0:
                    conn.flush()
                    if conn.paused:
                        await conn.drain()
            conn.flush()
