"""Free local TCP ports for the throwaway services (Kafka broker, PostgreSQL cluster)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now. The kernel picks it, so parallel runs don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
