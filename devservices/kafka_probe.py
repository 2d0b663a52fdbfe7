"""Is a Kafka broker up? A raw Metadata request, so no Kafka client library is needed.

The development broker (:mod:`.kafka_broker`) waits on it after a start, and the test fixture
checks with it that the session's broker still answers.
"""

from __future__ import annotations

import socket
import struct


def broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Send Metadata v4 (no topics) and return how many brokers the answer lists; raises OSError
    when nobody answers. Kafka 4 dropped Metadata v0-v3, v4 is the oldest it still serves."""
    client_id = b"tickwire-probe"
    body = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # empty topic list, allow_auto_topic_creation=false
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        header = _read_exactly(sock, 4)
        (size,) = struct.unpack(">i", header)
        response = _read_exactly(sock, size)
    # correlation_id int32, throttle_time_ms int32, brokers array length int32
    _correlation, _throttle, brokers = struct.unpack(">iii", response[:12])
    return brokers


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks += chunk
    return bytes(chunks)
