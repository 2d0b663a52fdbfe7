"""A dedicated thread for a sink's blocking I/O (a file, an SQLite connection)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class DedicatedThread:
    """Runs blocking calls one at a time, in order, on one thread of their own, so the event loop
    keeps reading while a sink writes (and an SQLite connection stays on the thread that made it)."""

    def __init__(self, name: str):
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def stop(self) -> None:
        """Waits for the calls already submitted."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
