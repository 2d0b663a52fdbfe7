"""The source contract suite (tickwire.framework.testing.sources) against the built-in Binance
source and the real simulator (`tickwire simulate`, a WebSocket server in its own process), and
against sources that break the contract, to show each check can fail."""

from __future__ import annotations

import asyncio

import pytest

from tickwire.framework.components import SourceSpec
from tickwire.framework.testing import SourceCase, SourceContract, check_source_contract, stream_spec
from tickwire.framework.testing.sources import check_backpressure_blocks, check_cancels_cleanly, check_reconnects

SYMBOLS = "BTCUSDT,ETHUSDT"


def binance_spec() -> SourceSpec:
    """As `tickwire run` finds it: through the plugin registry (the `tickwire` entry points)."""
    from tickwire.framework.plugins import PluginManager

    return PluginManager().sources["binance"]


def binance_case(sim, **overrides) -> SourceCase:
    streams = [stream_spec("trade", symbols=SYMBOLS.split(","), source="binance")]
    options = {"url": sim.ws_url, "rest_url": sim.rest_url, "gap_fill": False,
               "backoff_initial_seconds": 0.1, "backoff_max_seconds": 1.0}
    return SourceCase(spec=binance_spec(), options=options, streams=streams, drop_connections=sim.drop,
                      **{"sends_bad_frames": True, **overrides})


class TestBinanceSource(SourceContract):
    @pytest.fixture
    def source_case(self, simulator):
        # 2 symbols × 4000 trades/s ≈ 1.5 MB/s of frames: an unbounded buffer would show within hold_s
        sim = simulator(rate=4000, symbols=SYMBOLS, malformed_every=200)
        return binance_case(sim)


# -- each check fails for a source that breaks it -----------------------------------------------


class Ignores:
    """Wraps a source; what the wrapper does wrong is the point of each test below."""

    def __init__(self, inner):
        self.inner = inner


class ReturnsOnDrop(Ignores):
    """Gives up when its first connection ends (the contract: reconnect by itself)."""

    async def run(self, emit):
        task = asyncio.create_task(self.inner.run(emit))
        seen = 0
        while not task.done():
            await asyncio.sleep(0.05)
            if self.inner.stats["reconnects"] > seen:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return


class LeavesATask(Ignores):
    """Starts a helper task it never cancels."""

    async def run(self, emit):
        asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="forgotten helper")
        await self.inner.run(emit)


class DropsAFailure(Ignores):
    """Starts a helper that fails, and never looks at its result."""

    async def run(self, emit):
        async def helper():
            raise ConnectionResetError("helper lost its connection")

        asyncio.get_running_loop().create_task(helper())
        await self.inner.run(emit)


class Buffers(Ignores):
    """Reads on while the emitter blocks, keeping every payload in an unbounded queue."""

    async def run(self, emit):
        queue: asyncio.Queue = asyncio.Queue()

        class Buffering:
            def record_nowait(self, stream, payload, received_ns):
                queue.put_nowait((stream, payload, received_ns))

            async def record(self, stream, payload, received_ns):
                queue.put_nowait((stream, payload, received_ns))
                return True

            async def dead_letter(self, stream, reason, raw):
                await emit.dead_letter(stream, reason, raw)

        reader = asyncio.create_task(self.inner.run(Buffering()))
        try:
            while True:
                await emit.record(*await queue.get())
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def wrapped(case: SourceCase, wrapper) -> SourceCase:
    from dataclasses import replace

    factory = case.spec.factory
    return replace(case, spec=replace(case.spec, name=f"{wrapper.__name__}", factory=lambda *a: wrapper(factory(*a))))


def test_a_source_that_returns_after_a_drop_fails(simulator):
    case = wrapped(binance_case(simulator(rate=500, symbols=SYMBOLS)), ReturnsOnDrop)
    with pytest.raises(AssertionError, match="run\\(\\) ended"):
        asyncio.run(check_reconnects(case))


def test_a_source_that_leaves_a_task_behind_fails(simulator):
    case = wrapped(binance_case(simulator(rate=500, symbols=SYMBOLS)), LeavesATask)
    with pytest.raises(AssertionError, match="tasks left running after cancel.*forgotten helper"):
        asyncio.run(check_cancels_cleanly(case))


def test_a_source_that_drops_a_failed_task_fails(simulator):
    case = wrapped(binance_case(simulator(rate=500, symbols=SYMBOLS)), DropsAFailure)
    with pytest.raises(AssertionError, match="asyncio reported: .*exception was never retrieved"):
        asyncio.run(check_cancels_cleanly(case))


def test_a_source_that_buffers_under_backpressure_fails(simulator):
    case = wrapped(binance_case(simulator(rate=4000, symbols=SYMBOLS)), Buffers)
    with pytest.raises(AssertionError, match="memory grew by .* while blocked"):
        asyncio.run(check_backpressure_blocks(case))


def test_the_dead_letter_check_needs_a_server_that_sends_bad_frames(simulator):
    case = binance_case(simulator(rate=500, symbols=SYMBOLS), sends_bad_frames=False)
    with pytest.raises(AssertionError, match="needs a server that sends bad frames"):
        asyncio.run(check_source_contract(case))
