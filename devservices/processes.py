"""Process chores the development services share (:mod:`.kafka_broker_cli`, :mod:`.kafka_cluster`,
:mod:`.pg_cluster`): waiting for a process to exit, and noting a Ctrl-C or SIGTERM so a
foreground service can stop cleanly instead of dying mid-write.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable


def wait_for_exit(pid: int, timeout: float, poll: float = 0.05) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to be gone; whether it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(poll)
    return False


def stop_requested_on_signals() -> Callable[[], bool]:
    """Catch SIGINT and SIGTERM from now on; returns the check "was a stop asked for?"."""
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return lambda: stopping
