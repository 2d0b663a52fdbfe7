"""Counters out of the engine: pushed into Prometheus by the ticker (the hot path keeps plain
integers), and a snapshot for the status table, progress lines and the exit summary."""

from __future__ import annotations

import time

from tickwire.framework.engine.dead_letters import DeadLetters
from tickwire.framework.engine.routing import Route
from tickwire.framework.engine.runner import SinkRunner
from tickwire.framework.metrics import Metrics


class Stats:
    """Reads the routes, runners and dead letters; owns what was already pushed."""

    def __init__(self, metrics: Metrics, routes: dict[str, Route], runners: dict[str, SinkRunner],
                 dead_letters: DeadLetters, source_ids: list[str]):
        self.metrics = metrics
        self.routes = routes
        self.runners = runners
        self.dead_letters = dead_letters
        self.source_ids = source_ids
        self._dead_pushed: dict[str, int] = {}

    def push(self) -> None:
        """Add the counters' growth since the last push to the Prometheus metrics."""
        m = self.metrics
        for route in self.routes.values():
            pushed = route.pushed
            d = route.received - pushed[0]
            if d:
                m.messages_received.labels(stream=route.name).inc(d)
                pushed[0] = route.received
            d = route.invalid - pushed[1]
            if d:
                m.messages_invalid.labels(stream=route.name).inc(d)
                pushed[1] = route.invalid
        for key, count in self.dead_letters.by_stream.items():
            d = count - self._dead_pushed.get(key, 0)
            if d:
                m.dead_letters.labels(stream=key).inc(d)
                self._dead_pushed[key] = count
        for runner in self.runners.values():
            buffered = sum(len(lane.buf) for route in self.routes.values() for lane in route.lanes if lane.runner is runner)
            m.queue_depth.labels(sink=runner.id).set(runner.pending + buffered)

    def snapshot(self, started_at: float | None, stopped_at: float | None) -> dict:
        """Per stream, source and sink: what was received, written, rejected, pending."""
        dead = self.dead_letters.by_stream
        streams = {}
        for name, route in self.routes.items():
            last = route.last or {}
            streams[name] = {
                "received": route.received,
                "written": dict(route.written),
                "invalid": route.invalid,
                "dead_letters": dead.get(name, 0),
                "last_price": last.get("price", last.get("last_price")),
                "lag_s": route.lag,
                # a derived stream (candles) receives its source's records: not messages of its own
                "derived_from": route.derived_from,
            }
        sources = {
            sid: {
                "connections": self.metrics.value("tickwire_connections_open", source=sid),
                "reconnects": self.metrics.value("tickwire_reconnects_total", source=sid),
            }
            for sid in self.source_ids
        }
        sinks = {r.id: {"pending": r.pending, "commits": r.commits, "commit_seconds": r.commit_seconds}
                 for r in self.runners.values()}
        elapsed = ((stopped_at or time.monotonic()) - started_at) if started_at else 0.0
        return {"elapsed_s": elapsed, "streams": streams, "sources": sources, "sinks": sinks,
                "dead_letters_unrouted": dead.get("unknown", 0)}
