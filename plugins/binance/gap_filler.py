"""The Binance source's gap filling: trade ids that never arrived are fetched over REST, and
what cannot be fetched is reported lost.

* **resume**: each trade channel's tracker starts at the last id the stores hold
  (``ctx.resume``), so the first live trade after a restart opens a gap over the downtime;
* **gaps**: when the router sees trade ids jump (:meth:`GapFiller.on_gap`), the channel's
  filler reports the new holes and fetches them from ``GET /api/v3/historicalTrades`` — at
  once after a reconnect, after ``gap_fill_grace_seconds`` while two connections overlap (the
  other one may still deliver them);
* **loss**: a range it cannot fill (longer than ``gap_fill_max_trades``, older than REST
  serves, REST refusing, ``gap_fill`` off, too many holes at once) is handed to the engine
  (``ctx.report_gap``), which records it in ``trade_gaps``;
* **implausible ids**: a trade id dead-lettered as too far ahead (:meth:`GapFiller.on_too_far`)
  is checked against REST, at most every PROBE_INTERVAL seconds per channel; if Binance has
  it, the jump was real and the tracker accepts ids that far ahead.

Counts go to the source's ``stats`` and the engine's metrics; every step is logged.
"""

from __future__ import annotations

import asyncio
import time

from tickwire.framework.components import (
    GAP_FILL_OFF, GAP_NOT_SERVED, GAP_REST_ERROR, GAP_TOO_LARGE, Emitter, RunContext, TradeGap,
)
from tickwire.framework.timestamps import iso_ns
from tickwire.plugins.binance.frames import Channel
from tickwire.plugins.binance.rest import BinanceRest, RestError, rest_trade_to_event

PROBE_INTERVAL = 10.0  # seconds between two REST checks of far-ahead trade ids, per channel


class GapFiller:
    """Fills the trade-id gaps of one source's channels; ``start`` it when the source runs,
    ``cancel`` it when the source stops."""

    def __init__(self, source: str, options: dict, ctx: RunContext, channels: dict[str, Channel], stats: dict[str, int]):
        self.source = source
        self.ctx = ctx
        self.log = ctx.log
        self.metrics = ctx.metrics
        self.channels = channels
        self.stats = stats
        self.enabled = bool(options["gap_fill"])
        self.grace = float(options["gap_fill_grace_seconds"])
        self.max_trades = int(options["gap_fill_max_trades"])
        self.rest: BinanceRest | None = None  # set by start()
        self.emit: Emitter | None = None
        self.tasks: dict[str, asyncio.Task] = {}  # channel (or "probe:<channel>") → its filler
        self.overlaps = 0  # rotations in progress (two connections deliver the same channels)
        self.overlap_ended = float("-inf")
        self._reported_hi: dict[str, int] = {}  # channel → highest missing id already reported
        self._probed_at: dict[str, float] = {}  # channel → when REST was last asked about a far-ahead id

    # -- lifecycle -----------------------------------------------------------------------------

    def resume_trackers(self, channels=None) -> None:
        """Seed each trade channel with the last id its stores hold. The first live trade then
        opens the gap last+1 … first_live-1 and the filler fetches it. Waiting for that trade
        (rather than asking REST for the newest id at once) costs no REST weight — 25 per
        symbol, minutes of budget for a thousand symbols — and bounds the hole exactly; a
        symbol that trades rarely is filled when it trades, and nothing is lost meanwhile: the
        stores still say where to resume."""
        resume = self.ctx.resume
        fresh: dict[str, list[str]] = {}  # stream → symbols its stores hold nothing of
        for ch in self.channels.values() if channels is None else channels:
            last = resume.get(ch.stream, {}).get(ch.symbol)
            if ch.trades is not None and last is not None:
                ch.trades.resume_from(int(last))
            elif ch.trades is not None and ch.stream in resume:
                fresh.setdefault(ch.stream, []).append(ch.symbol)
        for stream, symbols in fresh.items():  # the stores resume others: say which start afresh, and why
            self.log.info(f"{self.source}, stream {stream!r}: {', '.join(sorted(symbols))} start from the live stream "
                          "(no store holds a recent trade of them: new, or silent for longer than the stores read back)",
                          stream=stream, symbols=sorted(symbols))

    def start(self, rest: BinanceRest, emit: Emitter) -> None:
        """From now on gaps are fetched with ``rest`` and their trades handed to ``emit``."""
        self.rest = rest
        self.emit = emit

    def cancel(self) -> list[asyncio.Task]:
        """Cancel every filler and probe; returns them, to be awaited."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        return tasks

    @property
    def busy(self) -> bool:
        """A filler or probe is still at work."""
        return any(not t.done() for t in self.tasks.values())

    def overlap_started(self) -> None:
        """A rotation began: until it ends (plus the grace), holes may still close by themselves."""
        self.overlaps += 1

    def overlap_done(self) -> None:
        self.overlaps -= 1
        self.overlap_ended = time.monotonic()

    # -- implausible ids -----------------------------------------------------------------------

    def on_too_far(self, ch: Channel, trade_id: int) -> None:
        """Called by the router when it dead-lettered ``trade_id`` as too far ahead: ask REST,
        at most once per PROBE_INTERVAL per channel, whether Binance has that trade."""
        self.stats["implausible_ids"] += 1
        key = f"probe:{ch.name}"  # kept with the fillers: cancelled with them at stop
        task = self.tasks.get(key)
        now = time.monotonic()
        if (task is not None and not task.done()) or now - self._probed_at.get(ch.name, float("-inf")) < PROBE_INTERVAL:
            return
        self._probed_at[ch.name] = now
        self.tasks[key] = asyncio.create_task(self._probe(ch, trade_id), name=f"{self.source}-probe-{ch.name}")

    async def _probe(self, ch: Channel, trade_id: int) -> None:
        """If Binance's REST API has trade ``trade_id``, the jump was real (a long downtime): let
        the tracker accept ids that far ahead; the dead-lettered ones fall into the gap that the
        next accepted trade opens, and are fetched over REST like any gap."""
        tracker = ch.trades
        ahead = trade_id - (tracker.last if tracker.last is not None else trade_id)
        try:
            rows = await self.rest.fetch(ch.symbol, trade_id, 1)
        except RestError as exc:
            self.log.warning(
                f"{ch.symbol} trade id {trade_id} is {ahead} ahead of the last one and REST cannot confirm it "
                f"({exc}); trades that far ahead stay dead letters until it can",
                source=self.source, symbol=ch.symbol, stream=ch.stream, trade_id=trade_id,
            )
            return
        row = rows[0] if rows and type(rows[0]) is dict else None
        if row is not None and row.get("id") == trade_id:
            tracker.vouch(trade_id)
            self.log.warning(
                f"{ch.symbol} trade id {trade_id}, {ahead} ahead of the last one, exists on Binance (REST): "
                "accepting trades from there; the ones in between are a gap filled over REST",
                source=self.source, symbol=ch.symbol, stream=ch.stream, trade_id=trade_id,
            )
        else:
            self.log.warning(
                f"ignored {ch.symbol} trade id {trade_id} ({ahead} ahead of the last one): Binance's REST API "
                "does not have it; it is in the dead letters",
                source=self.source, symbol=ch.symbol, stream=ch.stream, trade_id=trade_id,
            )

    # -- loss ----------------------------------------------------------------------------------

    def give_up(self, ch: Channel, lo: int, hi: int, reason: str) -> list[tuple[int, int]]:
        """Stop waiting for the ids still missing in ``[lo, hi]`` and report them lost; returns
        the ranges given up."""
        tracker = ch.trades
        ranges = tracker.missing_in(lo, hi)
        tracker.forget(lo, hi)
        self.report_lost(ch, ranges, reason)
        return ranges

    def report_lost(self, ch: Channel, ranges: list[tuple[int, int]], reason: str) -> None:
        """Hand ranges lost for good to the engine (trade_gaps, metric, warning)."""
        report = self.ctx.report_gap
        for a, b in ranges:
            if report is not None:
                report(TradeGap(ch.stream, ch.symbol, a, b, reason, iso_ns()))
            else:
                self.log.warning(
                    f"trades lost: {ch.symbol} ids {a}..{b} ({b - a + 1} trades) cannot be fetched ({reason})",
                    source=self.source, stream=ch.stream, symbol=ch.symbol, reason=reason,
                )

    def report_unfilled(self) -> None:
        """At stop: say which trades are still missing. They are not lost: the stores hold
        newer trades above them, so the next start resumes below the hole and fetches them
        (see ``last_sequence_ids``)."""
        for ch in self.channels.values():
            if ch.trades is not None and ch.trades.missing:
                ranges = ", ".join(f"{a}..{b}" for a, b in ch.trades.missing[:5])
                more = f" and {len(ch.trades.missing) - 5} more ranges" if len(ch.trades.missing) > 5 else ""
                self.log.warning(
                    f"stopping with {ch.trades.count_missing()} {ch.symbol} trades not fetched yet: ids {ranges}{more}; "
                    "the next start fetches them",
                    source=self.source, symbol=ch.symbol, stream=ch.stream,
                )

    # -- gaps ----------------------------------------------------------------------------------

    def on_gap(self, ch: Channel) -> None:
        """Called by the router when trade ids jump; starts the channel's filler if idle."""
        task = self.tasks.get(ch.name)
        if task is None or task.done():
            self.tasks[ch.name] = asyncio.create_task(self._handle_gaps(ch), name=f"{self.source}-gaps-{ch.name}")

    async def _handle_gaps(self, ch: Channel) -> None:
        tracker = ch.trades
        grace = self.grace
        while True:
            # Late trades can only come from a second connection: wait for them only while
            # connections overlap (or just did); after a reconnect, fetch at once.
            if self.overlaps or time.monotonic() - self.overlap_ended < grace:
                await asyncio.sleep(grace)
            else:
                await asyncio.sleep(0)
            reported = self._reported_hi.get(ch.name, -1)
            new = [(lo, hi) for lo, hi in tracker.missing if hi > reported]
            new = [(max(lo, reported + 1), hi) for lo, hi in new]
            if not new:
                return
            self._reported_hi[ch.name] = new[-1][1]
            for lo, hi in new:
                n = hi - lo + 1
                self.stats["gaps_detected"] += 1
                self.stats["gap_trades_missing"] += n
                self.metrics.gaps_detected.labels(symbol=ch.symbol).inc()
                self.metrics.gap_trades_missing.labels(symbol=ch.symbol).inc(n)
                self.log.warning(
                    f"gap detected: {ch.symbol} trade ids {lo}..{hi} missing ({n} trades)"
                    + ("; fetching them over REST" if self.enabled else "; gap_fill is off"),
                    source=self.source, stream=ch.stream, symbol=ch.symbol, first_id=lo, last_id=hi, missing=n,
                )
            if not self.enabled:
                for lo, hi in new:
                    self.stats["gap_trades_lost"] += sum(b - a + 1 for a, b in self.give_up(ch, lo, hi, GAP_FILL_OFF))
                continue
            await self._fill(ch, new)

    async def _fill(self, ch: Channel, gaps: list[tuple[int, int]]) -> None:
        """Fetch the missing trades of ``gaps`` (sorted ranges) from REST and emit them.

        One request asks for up to 1000 ids from the first still-missing one, so several small
        gaps close together cost one request; ids that arrived live meanwhile are skipped. What
        cannot be fetched is given up with its reason (:meth:`give_up`): beyond
        gap_fill_max_trades, before the oldest trade REST still serves, or after REST failed."""
        tracker = ch.trades
        emit = self.emit
        cap = self.max_trades
        given: list[tuple[int, int]] = []  # ranges given up
        for lo, hi in gaps:
            if hi - lo + 1 > cap:
                self.log.warning(
                    f"gap of {hi - lo + 1} trades in {ch.symbol} is larger than gap_fill_max_trades={cap}; "
                    f"ids {lo + cap}..{hi} will not be fetched",
                    source=self.source, symbol=ch.symbol,
                )
                given += self.give_up(ch, lo + cap, hi, GAP_TOO_LARGE)
        filled = [0] * len(gaps)
        span_hi = gaps[-1][1]
        cur = gaps[0][0]
        left_reason = GAP_NOT_SERVED  # why whatever is still missing after the loop is
        try:
            while True:
                todo = tracker.missing_in(cur, span_hi)
                if not todo:
                    break
                cur = todo[0][0]
                reach = max(b for a, b in todo if a < cur + 1000)
                rows = await self.rest.fetch(ch.symbol, cur, min(1000, reach - cur + 1))
                received_ns = time.time_ns()
                if rows and rows[0]["id"] > cur:
                    # REST starts after cur: the older trades are beyond the history it keeps
                    given += self.give_up(ch, cur, min(rows[0]["id"] - 1, span_hi), GAP_NOT_SERVED)
                top = cur - 1
                for row in rows:
                    tid = row["id"]
                    top = max(top, tid)
                    if tid > span_hi or not tracker.take(tid):
                        continue  # arrived live meanwhile, or outside the gaps
                    await emit.record(ch.stream, rest_trade_to_event(ch.symbol, row), received_ns)
                    for i, (lo, hi) in enumerate(gaps):
                        if lo <= tid <= hi:
                            filled[i] += 1
                            break
                if top < cur:  # nothing at or after cur: Binance does not have these trades
                    break
                cur = top + 1
                if cur > span_hi:
                    break
        except RestError as exc:
            left_reason = GAP_REST_ERROR
            self.log.error(f"could not fill gaps in {ch.symbol} trades: {exc}", source=self.source, symbol=ch.symbol)
        except (KeyError, TypeError) as exc:
            left_reason = GAP_REST_ERROR
            self.log.error(f"unexpected historicalTrades row while filling {ch.symbol}: {exc!r}", source=self.source)
        for lo, hi in gaps:
            given += self.give_up(ch, lo, hi, left_reason)
        lost = [sum(max(0, min(b, hi) - max(a, lo) + 1) for a, b in given) for lo, hi in gaps]
        for i, (lo, hi) in enumerate(gaps):
            self.stats["gap_trades_filled"] += filled[i]
            self.stats["gap_trades_lost"] += lost[i]
            if filled[i]:
                self.metrics.gap_trades_filled.labels(symbol=ch.symbol).inc(filled[i])
            if lost[i] == 0:
                self.stats["gaps_filled"] += 1
                self.metrics.gaps_filled.labels(symbol=ch.symbol).inc()
                self.log.info(
                    f"gap filled: {ch.symbol} trade ids {lo}..{hi} ({filled[i]} from REST)",
                    source=self.source, symbol=ch.symbol, first_id=lo, last_id=hi, filled=filled[i],
                )
            else:
                self.log.warning(
                    f"gap only partly filled: {ch.symbol} trade ids {lo}..{hi}, {filled[i]} fetched, {lost[i]} lost",
                    source=self.source, symbol=ch.symbol, filled=filled[i], lost=lost[i],
                )
