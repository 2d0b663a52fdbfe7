"""WebSocket frames as the simulator writes them: pre-built headers, and permessage-deflate.

Events are rendered once and written straight to each transport, so the hot path only appends
a header from a table and the payload. With permessage-deflate (RFC 7692) every data frame is
compressed (raw deflate, RSV1 set, the trailing 00 00 ff ff of the sync flush stripped).
"""

from __future__ import annotations

import struct
import zlib

TEXT = 0x1
BINARY = 0x2
DEFLATE_LEVEL = 1  # zlib's fastest, as aiohttp's own WebSocket writer uses
RSV1 = 0x40  # "this message is compressed" (RFC 7692), set on its first (here: only) frame
# text-frame headers for every payload size up to 4 KiB, so the hot path only appends
TABLED = 4096
HEADERS = [bytes((0x81, n)) if n < 126 else struct.pack("!BBH", 0x81, 126, n) for n in range(TABLED)]
HEADERS_DEFLATE = [
    bytes((0x81 | RSV1, n)) if n < 126 else struct.pack("!BBH", 0x81 | RSV1, 126, n) for n in range(TABLED)
]


def ws_frame(payload: bytes, opcode: int = TEXT, rsv: int = 0) -> bytes:
    """One unmasked, final server frame carrying ``payload``."""
    n = len(payload)
    first = 0x80 | rsv | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


class Deflater:
    """One connection's permessage-deflate compressor.

    ``wbits`` is the window the client allowed (``server_max_window_bits``, 15 when it did not
    say); with ``no_context_takeover`` each message is flushed with Z_FULL_FLUSH, which empties
    the deflate window, so no message refers back to an earlier one."""

    def __init__(self, wbits: int, no_context_takeover: bool):
        self._deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -wbits)
        self._flush_mode = zlib.Z_FULL_FLUSH if no_context_takeover else zlib.Z_SYNC_FLUSH

    def compress(self, body: bytes) -> bytes:
        """``body`` compressed as one whole message."""
        z = self._deflate
        # a sync (or full) flush always ends in the empty stored block 00 00 ff ff: dropped
        return (z.compress(body) + z.flush(self._flush_mode))[:-4]
