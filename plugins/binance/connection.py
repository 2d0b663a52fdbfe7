"""One WebSocket connection to Binance's combined-stream endpoint.

It connects to ``<url>/stream``, subscribes its channels in chunks (every client message paced by
one token bucket, so the connection stays under Binance's 5 messages per second), and feeds
every frame to the shared :class:`~plugins.binance.frames.FrameRouter`. Reconnecting, rotating
and backoff are the supervisor's job (``source.py``); a connection lives once.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Opcode

from plugins.binance.ratelimit import TokenBucket

# Frames above max_frame_bytes become dead letters; only frames above this hard cap make the
# websockets library close the connection (it must buffer a frame to look at it).
HARD_FRAME_CAP = 64 * 2**20


class PacedClientConnection(ClientConnection):
    """A websockets connection whose automatic pongs and keepalive pings take tokens from the
    connection's bucket too, so they count against Binance's 5 messages per second."""

    bucket: TokenBucket | None = None
    pings_answered = 0

    def __init__(self, protocol, *args, **kwargs):
        super().__init__(protocol, *args, **kwargs)
        # Pongs are counted where they leave, in the protocol's send_frame: a client sends a
        # handful of frames, while checking every received frame for a ping cost the hot path
        # a call per frame.
        send_frame = protocol.send_frame

        def send_frame_paced(frame) -> None:
            if frame.opcode is Opcode.PONG and self.bucket is not None:
                self.bucket.charge()  # websockets answers a ping at once: charged, not waited for
                self.pings_answered += 1
            send_frame(frame)

        protocol.send_frame = send_frame_paced

    async def ping(self, *args, **kwargs):
        if self.bucket is not None:
            await self.bucket.take()
        return await super().ping(*args, **kwargs)


def combined_stream_url(url: str) -> str:
    """``wss://host:9443`` (or ``…/ws``, ``…/stream``) → ``wss://host:9443/stream``."""
    url = url.rstrip("/")
    if url.endswith("/stream"):
        return url
    if url.endswith("/ws"):
        url = url[: -len("/ws")]
    return url + "/stream"


def send_rate(max_messages_per_second: float) -> float:
    """Tokens per second: one message per second below the limit and 5% of the rest as margin,
    because a pong cannot wait for a token (it is charged afterwards)."""
    mps = float(max_messages_per_second)
    return max(0.5, (mps - 1.0) * 0.95) if mps > 1 else mps * 0.5


class Connection:
    """A single connection; ``run()`` returns or raises when it ends."""

    def __init__(
        self,
        *,
        conn_id: str,
        url: str,
        channels: list[str],
        router,
        log,
        max_messages_per_second: float = 5,
        subscribe_chunk_size: int = 200,
        max_frame_bytes: int = 2**20,
        open_timeout: float = 10.0,
        ping_interval: float | None = 60.0,
        ping_timeout: float | None = 30.0,
    ):
        self.conn_id = conn_id
        self.url = combined_stream_url(url)
        self.channels = channels
        self.router = router
        self.log = log
        self.bucket = TokenBucket(send_rate(max_messages_per_second), capacity=1.0)
        self.chunk_size = max(1, subscribe_chunk_size)
        self.max_size = max(HARD_FRAME_CAP, 4 * max_frame_bytes)
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # every SUBSCRIBE answered
        self.opened_at = 0.0  # time.monotonic() when the handshake completed
        self.sent = 0  # client messages we sent (not counting automatic pongs)
        self.subscribe_errors = 0
        self.refused: list[str] = []  # channels Binance would not subscribe
        self._pending: dict[int, list[str]] = {}  # request id → channels, until answered
        self._next_id = 1
        self._all_sent = False
        self._resubmitting = 0
        self._retry_tasks: set[asyncio.Task] = set()

    async def connect(self) -> None:
        """Open the WebSocket (raises what websockets raises: OSError, InvalidStatus, …)."""
        self.ws = await connect(
            self.url,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=2,
            max_size=self.max_size,
            max_queue=64,
            compression=None,
            user_agent_header="tickwire",
            create_connection=PacedClientConnection,
        )
        self.ws.bucket = self.bucket
        self.opened_at = time.monotonic()

    async def send(self, message: dict) -> None:
        """Every client→server message goes through here, one token each."""
        await self.bucket.take()
        await self.ws.send(orjson.dumps(message).decode())
        self.sent += 1

    async def _subscribe(self, channels: list[str]) -> None:
        """Send SUBSCRIBE requests for ``channels``, ``subscribe_chunk_size`` per request."""
        for i in range(0, len(channels), self.chunk_size):
            chunk = channels[i : i + self.chunk_size]
            req_id = self._next_id
            self._next_id += 1
            self._pending[req_id] = chunk
            await self.send({"method": "SUBSCRIBE", "params": chunk, "id": req_id})

    async def _subscribe_all(self) -> None:
        await self._subscribe(self.channels)
        self._all_sent = True
        self._check_ready()

    async def _resubscribe(self, channels: list[str]) -> None:
        try:
            await self._subscribe(channels)
        finally:
            self._resubmitting -= 1
            self._check_ready()

    def _check_ready(self) -> None:
        if self._all_sent and not self._pending and not self._resubmitting:
            self.ready.set()

    async def on_reply(self, msg: dict, raw: str) -> None:
        """A ``{"result": …, "id": N}`` or ``{"error": {...}, "id": N}`` answer.

        Binance refuses a whole SUBSCRIBE when one of its channels is bad, so a refused chunk
        is split in halves and sent again until the bad channels are alone; those are logged
        once and stay unsubscribed (such an error does not go away by retrying)."""
        entry = self._pending.pop(msg.get("id"), None)
        error = msg.get("error")
        if error is not None:
            self.subscribe_errors += 1
            detail = error.get("msg") if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            await self.router.dead(None, f"Binance refused request id {msg.get('id')}: {detail} (code {code})", raw)
            if entry is not None:
                chunk = entry
                if len(chunk) > 1:
                    half = len(chunk) // 2
                    for part in (chunk[:half], chunk[half:]):
                        self._resubmitting += 1
                        task = asyncio.create_task(self._resubscribe(part))
                        self._retry_tasks.add(task)
                        task.add_done_callback(self._retry_tasks.discard)
                else:
                    self.refused.extend(chunk)
                    self.log.error(
                        f"Binance refused to subscribe {chunk[0]}: {detail} (code {code}); "
                        "check the stream's channel in streams.yaml",
                        connection=self.conn_id, channel=chunk[0],
                    )
        self._check_ready()

    async def run(self) -> None:
        """Subscribe and read until the connection ends (ConnectionClosed, ServerShutdown…)."""
        sub = asyncio.create_task(self._subscribe_all())
        recv = self.ws.recv
        handle = self.router.handle_nowait  # awaits only when it must (see FrameRouter)
        time_ns = time.time_ns
        sub_done = sub.done
        try:
            while True:
                raw = await recv()
                pending = handle(raw, time_ns(), self)
                if pending is not None:
                    await pending
                if sub_done() and sub.exception() is not None:
                    raise sub.exception()
        finally:
            sub.cancel()
            for task in list(self._retry_tasks):
                task.cancel()

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Close gracefully: the reader keeps handing over frames already received (cancelling
        it in the middle of ``emit.record`` could lose a trade the dedup state already counts
        as seen), then ends with ConnectionClosedOK."""
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except Exception:  # noqa: BLE001 - closing a broken socket may fail; it is gone anyway
                pass
        task = self.task
        if task is None:
            return
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: how it ended is the supervisor's business
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_timeout)
        except asyncio.TimeoutError:
            task.cancel()
        except Exception:  # noqa: BLE001 - the reader ended with an error: it ended
            return
        except asyncio.CancelledError:
            task.cancel()
            raise
        try:
            await task
        except (Exception, asyncio.CancelledError):  # noqa: BLE001
            pass
