"""One WebSocket connection to Binance's combined-stream endpoint.

It connects to ``<url>/stream``, subscribes its channels in chunks (every client message paced by
one token bucket, so the connection stays under Binance's 5 messages per second), and feeds
every frame to the shared :class:`~tickwire.plugins.binance.frames.FrameRouter`. Reconnecting, rotating
and backoff are the slot keeper's job (``slot_keeper.py``); a connection lives once.

The client is aiohttp's: its frame reader is compiled, and receiving costs ~2.5 µs per frame
here against ~8.6 µs with the ``websockets`` library (measured against the simulator at full
speed, both without compression) — on a busy stream that is most of a core. Pings are answered
here rather than by the library, so each pong takes its token from the bucket.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import WSMsgType

from tickwire.plugins.binance.frames import ServerShutdown
from tickwire.plugins.binance.ratelimit import TokenBucket

# Frames above max_frame_bytes become dead letters; only frames above this hard cap make the
# client close the connection (it must buffer a frame to look at it).
HARD_FRAME_CAP = 64 * 2**20
CLOSE_NORMAL = (1000).to_bytes(2, "big")  # a close frame's payload: status 1000, no reason


class HandshakeRefused(Exception):
    """The server answered the WebSocket handshake with an HTTP status instead of 101."""

    def __init__(self, status: int, headers):
        super().__init__(f"HTTP {status} during the WebSocket handshake")
        self.status = status
        self.headers = headers


class ConnectionLost(Exception):
    """The connection ended while we were reading: a close frame (``code``), a drop without one
    (``code`` None), a protocol error, or our keepalive ping got no pong."""

    def __init__(self, code: int | None, reason: str = ""):
        super().__init__(reason or (f"closed with code {code}" if code is not None else "dropped"))
        self.code = code
        self.reason = reason

    def describe(self) -> str:
        if self.code is None:
            return self.reason or "connection dropped without a close frame"
        return f"server closed the connection (code {self.code}{': ' + self.reason if self.reason else ''})"


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
        compression: str = "none",
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
        self.compression = compression
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task | None = None
        self.pings_answered = 0  # Binance's pings we answered (each pong costs a token)
        self._pong = asyncio.Event()
        self._closing = False  # close() was called: the end of the stream is ours
        self._failure: ConnectionLost | None = None  # why we closed it (no pong)
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
        self._sync_lock = asyncio.Lock()  # live (un)subscriptions, one change at a time

    async def connect(self) -> None:
        """Open the WebSocket. Raises HandshakeRefused (an HTTP status instead of 101), OSError or
        aiohttp.ClientError (network), asyncio.TimeoutError, ValueError (a URL aiohttp refuses)."""
        # trust_env: HTTPS_PROXY / NO_PROXY from the environment apply, as for any HTTP client
        self.session = aiohttp.ClientSession(headers={"User-Agent": "tickwire"}, trust_env=True)
        try:
            self.ws = await asyncio.wait_for(
                self.session.ws_connect(
                    self.url,
                    autoping=False,  # answered in run(), so each pong is charged to the bucket
                    max_msg_size=self.max_size,
                    compress=15 if self.compression == "deflate" else 0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                    # text frames as their bytes: orjson checks the UTF-8 itself, and a frame
                    # that is not UTF-8 becomes a dead letter instead of aiohttp's error that
                    # would end the connection
                    decode_text=False,
                ),
                self.open_timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await self.session.close()
            raise HandshakeRefused(exc.status, exc.headers or {}) from None
        except BaseException:
            await self.session.close()
            raise
        self.opened_at = time.monotonic()

    async def send(self, message: dict) -> None:
        """Every client→server message goes through here, one token each."""
        await self.bucket.take()
        await self.ws.send_str(orjson.dumps(message).decode())
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

    async def sync(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Make the live subscription ``wanted`` (the supervisor's current list for this
        connection): UNSUBSCRIBE what is no longer in it first (freeing room under the cap), then
        SUBSCRIBE what is new, chunked and paced like the first subscription. Waits until the
        first subscription was answered; returns (added, removed), empty when the connection
        ended meanwhile (its replacement subscribes the current list). Safe to call again at
        any time: calls run one after another and each compares with what is subscribed then."""
        async with self._sync_lock:
            if not await self._until_ready():
                return [], []
            target = set(wanted)
            current = set(self.channels)
            removed = sorted(current - target)
            added = sorted(target - current)
            for i in range(0, len(removed), self.chunk_size):
                chunk = removed[i : i + self.chunk_size]
                req_id = self._next_id
                self._next_id += 1
                await self.send({"method": "UNSUBSCRIBE", "params": chunk, "id": req_id})
            self.channels = [ch for ch in self.channels if ch in target] + added
            if added:
                await self._subscribe(added)
            return added, removed

    async def _until_ready(self) -> bool:
        """Wait until every SUBSCRIBE so far was answered; False if the connection ended first."""
        if self.task is None or self.task.done():
            return False
        if not self.ready.is_set():
            ready = asyncio.ensure_future(self.ready.wait())
            try:
                await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
        return self.ready.is_set() and not self.task.done()

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
        req_id = msg.get("id")
        entry = self._pending.pop(req_id, None) if type(req_id) is int else None
        error = msg.get("error")
        if error is not None:
            self.subscribe_errors += 1
            detail = error.get("msg") if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            await self.router.dead(None, f"Binance refused request id {req_id!r}: {detail} (code {code})", raw)
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
        elif req_id is not None and entry is None and type(req_id) is not int:
            await self.router.dead(None, f"reply with an id that is not one of our requests: {req_id!r}", raw)
        self._check_ready()

    async def run(self) -> None:
        """Subscribe and read until the connection ends: returns when close() ended it, raises
        ConnectionLost (or ServerShutdown, from the router) otherwise."""
        sub = asyncio.create_task(self._subscribe_all())
        keepalive = asyncio.create_task(self._keepalive()) if self.ping_interval else None
        receive = self.ws.receive
        handle = self.router.handle_nowait  # awaits only when it must (see FrameRouter)
        time_ns = time.time_ns
        sub_done = sub.done
        text = WSMsgType.TEXT
        try:
            while True:
                msg = await receive()
                if msg.type is text:
                    pending = handle(msg.data, time_ns(), self)
                else:
                    pending = self._control(msg)
                if pending is not None:
                    try:
                        await pending
                    except ServerShutdown:
                        raise
                    except Exception as exc:  # noqa: BLE001 - one frame never ends the connection
                        await self.router.failed(msg.data if isinstance(msg.data, (str, bytes)) else b"", exc)
                if sub_done() and sub.exception() is not None:
                    raise sub.exception()
        except _EndOfStream:
            return
        finally:
            sub.cancel()
            if keepalive is not None:
                keepalive.cancel()
            for task in list(self._retry_tasks):
                task.cancel()

    def _control(self, msg):
        """Everything but a text frame: like handle_nowait, None or a coroutine to await."""
        kind = msg.type
        if kind is WSMsgType.BINARY:
            return self.router.binary_nowait(msg.data, time.time_ns(), self)
        if kind is WSMsgType.PING:
            self.bucket.charge()  # a pong cannot wait for a token: charged, not waited for
            self.pings_answered += 1
            return self._answer_ping(msg.data)
        if kind is WSMsgType.PONG:
            self._pong.set()
            return None
        if self._failure is not None:
            raise self._failure
        if self._closing:  # the server's answer to our close frame (or the end after it)
            raise _EndOfStream()
        if kind is WSMsgType.CLOSE:
            raise ConnectionLost(msg.data, msg.extra or "")
        if kind is WSMsgType.ERROR:
            raise ConnectionLost(None, f"WebSocket error: {msg.data}")
        raise ConnectionLost(None, "connection dropped without a close frame")

    async def _answer_ping(self, payload: bytes) -> None:
        try:
            await self.ws.pong(payload)
        except ConnectionError:  # closing under us: the next receive() says how it ended
            pass

    async def _keepalive(self) -> None:
        """Our own ping every ping_interval (a token each); no pong within ping_timeout closes
        the connection, and run() raises why."""
        try:
            await self._ping_until_silent()
        except ConnectionError:  # the connection is closing: the reader reports how it ended
            pass

    async def _ping_until_silent(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            await self.bucket.take()
            self._pong.clear()
            await self.ws.ping(b"tickwire")
            if self.ping_timeout is None:
                continue
            try:
                await asyncio.wait_for(self._pong.wait(), self.ping_timeout)
            except asyncio.TimeoutError:
                self._failure = ConnectionLost(None, f"no pong within {self.ping_timeout:g}s of our ping")
                await self.ws.close(code=1011, message=b"keepalive ping timeout")
                return

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Close gracefully: send our close frame and keep handing over the frames the server
        sent before its answer, for up to ``drain_timeout`` seconds, so no frame that reached us
        is dropped (aiohttp's own close() would read and discard them). A reader still busy
        then is cancelled — never in the middle of ``emit.record`` before that: it could lose a
        trade the dedup state already counts as seen."""
        self._closing = True
        try:
            if self.ws is not None and self.task is not None and not self.task.done() and not self.ws.closed:
                try:
                    await self.ws.send_frame(CLOSE_NORMAL, WSMsgType.CLOSE)
                except Exception:  # noqa: BLE001 - a broken socket: the reader ends on its own
                    pass
            await self._wait_reader(drain_timeout)
            if self.ws is not None:
                try:
                    await asyncio.wait_for(self.ws.close(), 3)  # a no-op when the answer came
                except Exception:  # noqa: BLE001 - closing a broken socket may fail; it is gone anyway
                    pass
        finally:
            if self.session is not None:
                await self.session.close()

    async def _wait_reader(self, drain_timeout: float) -> None:
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


class _EndOfStream(Exception):
    """Internal: the connection ended because we closed it."""
