"""Restarts and losses: where the sources resume (asked of the stores once, before they start)
and the ranges a source gave up on, handed to the stores that record them (docs/architecture.md,
"Nothing lost across restarts")."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from tickwire.framework.components import TradeGap
from tickwire.framework.engine.dead_letters import DeadLetters
from tickwire.framework.engine.routing import Route
from tickwire.framework.engine.runner import GAPS
from tickwire.framework.engine.settings import EngineError
from tickwire.framework.metrics import Metrics
from tickwire.framework.resume import combine, gap_dead_letter
from tickwire.framework.sharding import Shard


async def read_resume_points(routes: Iterable[Route], log: Any, shard: Shard | None = None) -> dict[str, dict[str, int]]:
    """Stream → symbol → last id held: every resumable sink of each sequenced stream is asked;
    per symbol the minimum over the sinks that could tell wins (the least complete store).
    With a ``shard``, only its symbols: the stores (a shared Kafka topic, say) also hold the
    other shards'."""
    resume: dict[str, dict[str, int]] = {}
    for route in routes:
        stream = route.stream
        if stream.sequence is None:
            continue
        answers: dict[str, dict[str, int] | None] = {}
        for lane in route.lanes:
            runner = lane.runner
            if not runner.traits.resumable:
                continue
            try:
                answer = await runner.sink.last_sequence_ids(stream)
            except Exception as exc:
                raise EngineError(f"{runner.who}, stream {stream.name!r}: cannot read what it holds: {exc}") from exc
            answers[runner.id] = answer if answer is None or shard is None else {s: i for s, i in answer.items() if shard.owns(s)}
        points = combine(answers)
        told = sorted(sink_id for sink_id, answer in answers.items() if answer is not None)
        if not points:
            why = "the stores hold nothing yet" if told else "no store can tell what it holds"
            log.info(f"resuming {stream.name}: from the live stream ({why})", stream=stream.name)
            continue
        resume[stream.name] = {symbol: last for symbol, (last, _) in points.items()}
        where = ", ".join(f"{symbol} from id {last} ({sink_id})" for symbol, (last, sink_id) in sorted(points.items()))
        fresh = sorted(set(stream.symbols) - set(points))
        log.info(f"resuming {stream.name}: {where}" + (f"; from the live stream: {', '.join(fresh)}" if fresh else ""),
                 stream=stream.name, sinks=told)
    return resume


class LostRanges:
    """Ranges sources gave up on: logged and counted when reported, handed over by the ticker
    and at shutdown to every sink of the stream that records gaps (``write_gaps``), or as dead
    letters when none does."""

    def __init__(self, routes: dict[str, Route], dead_letters: DeadLetters, metrics: Metrics, log: Any):
        self.routes = routes
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.log = log
        self.pending: list[TradeGap] = []

    def report(self, gap: TradeGap) -> None:
        """Log it, count it, queue it. Never blocks."""
        self.metrics.trade_gap_trades_lost.labels(stream=gap.stream, symbol=gap.symbol, reason=gap.reason).inc(gap.count)
        self.log.warning(
            f"trades lost: {gap.symbol} ids {gap.first_id}..{gap.last_id} ({gap.count} trades) of stream "
            f"{gap.stream!r} cannot be fetched ({gap.reason}); recorded in the stream's stores (trade_gaps) or dead letters",
            stream=gap.stream, symbol=gap.symbol, first_id=gap.first_id, last_id=gap.last_id, lost=gap.count, reason=gap.reason,
        )
        self.pending.append(gap)

    async def flush(self) -> None:
        """Hand the queued ranges over; on cancellation they stay for the shutdown flush
        (``write_gaps`` is idempotent per range)."""
        if not self.pending:
            return
        gaps, self.pending = self.pending, []
        try:
            await self._hand_over(gaps)
        except asyncio.CancelledError:
            self.pending[:0] = gaps
            raise

    async def _hand_over(self, gaps: list[TradeGap]) -> None:
        by_stream: dict[str, list[TradeGap]] = {}
        for gap in gaps:
            by_stream.setdefault(gap.stream, []).append(gap)
        for name, stream_gaps in by_stream.items():
            route = self.routes.get(name)
            recording = [lane.runner for lane in route.lanes if lane.runner.traits.records_gaps] if route is not None else []
            for runner in recording:
                runner.pending += len(stream_gaps)
                await runner.queue.put((GAPS, list(stream_gaps)))
            if not recording:
                for gap in stream_gaps:
                    letter = gap_dead_letter(gap)
                    await self.dead_letters.add(gap.stream, letter.reason, "engine", letter.raw, None)
