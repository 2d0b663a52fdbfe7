"""The run plan: what the engine builds once, before anything runs.

From the loaded config and the plugin registry (:func:`plan_from_config`): the profile's
streams, the sink and source specs with their options completed from each component's schema.
From those (:func:`build_runners`, :func:`build_route`): one :class:`SinkRunner` per sink and,
per stream, a :class:`Route` with its transform chain — fused into one function when the first
transform is a :class:`FusableTransform` that can fuse with the second — and one lane per sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tickwire.framework.components import DerivedSpec, FusableTransform, SinkSpec, SourceSpec, TransformSpec
from tickwire.framework.engine.routing import Lane, Route
from tickwire.framework.engine.runner import SinkRunner
from tickwire.framework.config_schema import BASE_SCHEMA
from tickwire.framework.engine.settings import EngineError, EngineSettings
from tickwire.framework.metrics import Metrics
from tickwire.framework.schemas import StreamSpec

# a stream without ``transforms:`` (the config schema's default, written there once)
STREAM_SCHEMA = BASE_SCHEMA["properties"]["streams"]["additionalProperties"]
DEFAULT_TRANSFORMS = [(name, {}) for name in STREAM_SCHEMA["properties"]["transforms"]["default"]]


@dataclass
class Plan:
    """What :meth:`Engine.from_config` hands to the Engine constructor."""

    streams: list[StreamSpec]
    sources: dict[str, tuple[SourceSpec, dict]]
    sinks: dict[str, tuple[SinkSpec, dict]]
    transforms: dict[str, TransformSpec]
    dead_letter: str | None
    settings: EngineSettings
    derived: list[tuple[str, dict, DerivedSpec]] | None = None  # (name, block, kind) computed in this run


def plan_from_config(config: Any, plugins: Any, profile: str | None = None) -> Plan:
    """The plan of ``profile`` (None: the config's default) of a loaded Config."""
    prof = config.profile(profile)
    streams = config.profile_streams(prof)  # copies, with .sinks = the profile's sinks
    wanted = set(prof.sinks) | ({prof.dead_letter} if prof.dead_letter else set())
    sinks = {}
    for sink_id in sorted(wanted):
        if sink_id not in config.sinks:
            raise EngineError(f"profile {prof.name!r}: sink {sink_id!r} is not declared under sinks:")
        type_, options = config.sinks[sink_id]
        if type_ not in plugins.sinks:
            raise EngineError(f"sink {sink_id!r}: no sink plugin named {type_!r} (known: {', '.join(sorted(plugins.sinks))})")
        sinks[sink_id] = (plugins.sinks[type_], options)
    sources = {}
    declared = config.sources
    for sid in sorted({s.source for s in streams}):
        type_, options = declared.get(sid, (sid, {}))
        if type_ not in plugins.sources:
            raise EngineError(f"source {sid!r}: no source plugin named {type_!r} (known: {', '.join(sorted(plugins.sources))})")
        sources[sid] = (plugins.sources[type_], options)
    for kind, used in (("sink", sinks), ("source", sources)):
        for component_id, (spec, _options) in sorted(used.items()):
            if spec.requires is not None:  # an optional dependency: say how to install it
                spec.requires.check(f"{kind} {component_id!r} (type {spec.name}, plugin {spec.plugin})")
    derived = derived_in_run(config, plugins, streams, sinks)
    return Plan(streams, sources, sinks, dict(plugins.transforms), prof.dead_letter, EngineSettings.from_options(config.engine),
                derived)


def derived_in_run(config: Any, plugins: Any, streams: list[StreamSpec],
                   sinks: dict[str, tuple[SinkSpec, dict]]) -> list[tuple[str, dict, DerivedSpec]]:
    """The ``derived:`` blocks this run computes: those whose source stream runs and goes to
    a sink that stores derived streams (on the Kafka profile the Spark job computes them)."""
    by_name = {s.name: s for s in streams}
    out = []
    for name, block in sorted(config.derived.items()):
        origin = by_name.get(block["from"])
        if origin is None or not any(sinks[sid][0].stores_derived for sid in origin.sinks if sid in sinks):
            continue
        spec = plugins.derived.get(block["kind"])
        if spec is None:
            raise EngineError(f"derived {name!r}: no plugin computes kind {block['kind']!r} in `tickwire run`")
        out.append((name, block, spec))
    return out


def build_derived(derived: list[tuple[str, dict, DerivedSpec]], routes: dict[str, Route], runners: dict[str, SinkRunner],
                  transforms: dict[str, TransformSpec], settings: EngineSettings, metrics: Metrics) -> list:
    """Per derived block: its :class:`~tickwire.framework.derived.Deriver` and a route of its
    own (added to ``routes``) with a lane per storing sink of the source stream; the source
    route taps the deriver, and each of its lanes hands the derived lane of the same sink over
    first (framework/derived.py says why)."""
    built = []
    for name, block, spec in derived:
        source_route = routes[block["from"]]
        try:
            deriver = spec.factory(name, block, source_route.stream, metrics)
        except Exception as exc:
            raise EngineError(f"derived {name!r} (kind {spec.name}, plugin {spec.plugin or spec.name}): {exc}") from exc
        stream = deriver.stream
        stream.sinks = [sid for sid in source_route.stream.sinks if sid in runners and runners[sid].spec.stores_derived]
        route = routes[stream.name] = build_route(stream, transforms, runners, settings, metrics)
        route.derived_from = source_route.name
        source_route.taps.append((deriver, route))
        for lane in source_route.lanes:
            lane.before += [d for d in route.lanes if d.runner is lane.runner]
        built.append((deriver, route))
    return built


def build_runners(sinks: dict[str, tuple[SinkSpec, dict]], dead_letter: str | None, settings: EngineSettings) -> dict[str, SinkRunner]:
    """One runner per sink, its options completed from its schema; checks the destination."""
    runners = {sink_id: SinkRunner(sink_id, spec, spec.complete(options), settings.queue_batches)
               for sink_id, (spec, options) in sinks.items()}
    if dead_letter is not None:
        runner = runners.get(dead_letter)
        if runner is None:
            raise EngineError(f"dead-letter destination {dead_letter!r} is not a configured sink")
        if not runner.spec.supports_dead_letters:
            raise EngineError(f"{runner.who} cannot store dead letters (supports_dead_letters is false)")
    return runners


def build_route(stream: StreamSpec, transforms: dict[str, TransformSpec], runners: dict[str, SinkRunner],
                settings: EngineSettings, metrics: Metrics) -> Route:
    """The stream's route: transforms built (with complete options), fused when they can be,
    a lane per sink of the stream."""
    chain, names = [], []
    # None: the default chain; an explicit [] means records go to the sinks as received
    for name, options in DEFAULT_TRANSFORMS if stream.transforms is None else stream.transforms:
        spec = transforms.get(name)
        if spec is None:
            raise EngineError(f"stream {stream.name!r}: no transform named {name!r} (known: {', '.join(sorted(transforms))})")
        try:
            chain.append(spec.factory(stream, spec.complete(options)))
        except Exception as exc:
            raise EngineError(f"transform {name!r} (plugin {spec.plugin or name}), stream {stream.name!r}: {exc}") from exc
        names.append(name)
    fused = fuse_chain(chain)
    lag_field = next((col.field for col in stream.columns if col.name == stream.event_time and col.field), "E")
    every = settings.lag_sample_every
    every = 1 << max(0, (every - 1).bit_length()) if every > 1 else 1
    route = Route(stream, chain, names, fused, lag_field, every, metrics.event_lag_seconds.labels(stream=stream.name))
    for sink_id in stream.sinks:
        runner = runners.get(sink_id)
        if runner is None:
            raise EngineError(f"stream {stream.name!r}: sink {sink_id!r} is not configured")
        lane = Lane(runner, stream, route)
        route.lanes.append(lane)
        runner.lanes.append(lane)
        route.written[sink_id] = 0
    return route


def fuse_chain(chain: list) -> Any:
    """The fused form of a chain of exactly two transforms whose first is a
    :class:`FusableTransform` that accepts the second; else None (the steps run one by one)."""
    if len(chain) == 2 and isinstance(chain[0], FusableTransform):
        return chain[0].fuse(chain[1])
    return None
