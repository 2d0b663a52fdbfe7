"""Capture files: what ``tickwire record`` writes and ``tickwire simulate --replay`` serves.

Gzip JSON lines. The first line is a header, every other line one received frame::

    {"tickwire_capture": 1, "url": "ws://…/stream?streams=…", "started_ns": 1700000000000000000}
    {"ns": 1700000000012345678, "stream": "btcusdt@trade", "text": "{\"stream\":…}"}
    {"ns": 1700000000012399999, "stream": null, "binary": "<base64>"}

``ns`` is the receive time (``time.time_ns()``); ``stream`` is the stream the frame belongs to
(from the combined wrapper, or derived from the event for raw frames), null when unknown
(malformed frames, replies); ``text`` is the frame exactly as received.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

FORMAT_VERSION = 1
_EVENT_STREAM = {"trade": "@trade", "24hrTicker": "@ticker", "1hTicker": "@ticker_1h"}


def stream_of(text: str | bytes) -> tuple[str | None, bytes | None]:
    """(stream name, raw event payload bytes) of a frame; (None, None) if it is not an event."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    if isinstance(obj.get("stream"), str) and "data" in obj:
        return obj["stream"], orjson.dumps(obj["data"])
    suffix = _EVENT_STREAM.get(obj.get("e"))
    if suffix and isinstance(obj.get("s"), str):
        raw = text.encode() if isinstance(text, str) else bytes(text)
        return obj["s"].lower() + suffix, raw
    return None, None


@dataclass
class Frame:
    ns: int
    stream: str | None
    data: bytes
    binary: bool = False


class CaptureWriter:
    def __init__(self, path: str | Path, url: str, started_ns: int):
        self._fh: IO[bytes] = gzip.open(path, "wb", compresslevel=6)
        self._fh.write(orjson.dumps({"tickwire_capture": FORMAT_VERSION, "url": url, "started_ns": started_ns}) + b"\n")
        self.frames = 0

    def write(self, ns: int, message: str | bytes) -> None:
        if isinstance(message, str):
            stream, _ = stream_of(message)
            line = {"ns": ns, "stream": stream, "text": message}
        else:
            line = {"ns": ns, "stream": None, "binary": base64.b64encode(message).decode()}
        self._fh.write(orjson.dumps(line) + b"\n")
        self.frames += 1

    def close(self) -> None:
        self._fh.close()


def read_capture(path: str | Path) -> tuple[dict, list[Frame]]:
    """Header and frames of a capture (ValueError with the line number on a bad line)."""
    frames: list[Frame] = []
    header: dict = {}
    with gzip.open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if lineno == 1 and "tickwire_capture" in obj:
                header = obj
                continue
            if "text" in obj:
                frames.append(Frame(int(obj["ns"]), obj.get("stream"), obj["text"].encode()))
            elif "binary" in obj:
                frames.append(Frame(int(obj["ns"]), None, base64.b64decode(obj["binary"]), binary=True))
            else:
                raise ValueError(f"{path}:{lineno}: a frame needs 'text' or 'binary'")
    return header, frames
