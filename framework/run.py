"""``tickwire run``: the pipeline of one profile, until Ctrl-C / SIGTERM / ``--duration``.

At start it prints where the data goes; while running it shows a live table on a terminal or
logs a progress line (JSON logs elsewhere); at exit it prints a summary. With JSON logs, the
start (event ``starting``: destinations, metrics URL) and the summary (event ``summary``) are
log events too, so stderr is nothing but JSON lines. SIGINT/SIGTERM stop
the sources, flush every buffer, wait for the sinks to commit, close them and exit 0. A second
SIGINT exits at once (code 130), saying how many records were not committed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from typing import Any

import click

from framework.engine import Engine, EngineError
from framework.logs import FORMATS, LEVELS, configure, get_logger
from framework.metrics import DEFAULT_HOST, DEFAULT_PORT, Metrics
from framework.status import Progress, StatusView, summary_lines

EXIT_FORCED = 130


class MetricsPort(click.ParamType):
    name = "port"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            port = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a port number nor 'auto'", param, ctx)
        if not 0 <= port <= 65535:
            self.fail(f"{port} is not a port (0-65535; 0 = no endpoint)", param, ctx)
        return port


@click.command("run")
@click.option("--profile", default=None, help="Profile of streams.yaml to run (default: default_profile, i.e. 'local').")
@click.option("--log-format", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="auto: console on a terminal, JSON lines otherwise.")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@click.option("--metrics-port", type=MetricsPort(), default=None, metavar="PORT|auto",
              help="Port of the Prometheus /metrics endpoint (default: metrics.port, 9464). 0 = no endpoint; "
                   "auto = a free port chosen by the OS (shown at start).")
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Stop by itself after this many seconds (flushes like Ctrl-C).")
@click.option("--no-status", is_flag=True, help="No live table, even on a terminal (progress log lines instead).")
@click.option("--progress-interval", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="Seconds between progress log lines when there is no live table.")
@click.pass_obj
def run(app: Any, profile: str | None, log_format: str, log_level: str, metrics_port: int | None,
        duration: float | None, no_status: bool, progress_interval: float) -> None:
    """Run the pipeline: sources -> validate -> normalize -> sinks of the profile.

    \b
    Examples:
      tickwire run                                   # Binance -> SQLite (data/tickwire.db)
      tickwire run --profile compose                 # Binance -> Kafka (Spark -> PostgreSQL)
      tickwire --set sources.binance.url=ws://127.0.0.1:9443 run --duration 30
    """
    fmt = configure(log_format, log_level)
    log = get_logger(component="run")
    config = app.config
    metrics = Metrics()
    try:
        engine = Engine.from_config(config, app.manager, profile, metrics=metrics)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc
    prof = config.profile(profile)
    live = fmt == "console" and not no_status and sys.stderr.isatty()
    settings = getattr(config, "metrics", None) or {}
    host = settings.get("host", DEFAULT_HOST)
    port = metrics_port if metrics_port is not None else settings.get("port", DEFAULT_PORT)
    tune_gc()
    code = asyncio.run(_main(engine, log, prof.name, host, port, duration, live, progress_interval, fmt == "json"))
    sys.exit(code)


def tune_gc() -> None:
    """Freeze the startup heap and collect the young generation less often.

    A record costs a few short-lived dicts, while modules, config, schemas and generated code
    stay alive for the whole run: with CPython's defaults the collector rescans that heap over
    and over and took ~12% of the CPU at 70,000 trades/s (bench/kafka_bench.py). Frozen objects
    are never scanned; a larger first threshold lets most records die before a collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _say(text: str) -> None:
    click.echo(text, err=True)


async def _main(engine: Engine, log: Any, profile: str, host: str, port: int, duration: float | None,
                live: bool, progress_interval: float, json_logs: bool) -> int:
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        name = signal.Signals(signum).name
        if signals["count"] == 1:
            log.info(f"{name}: stopping — flushing buffers and waiting for the sinks to commit (again to force)")
            engine.stop()
            return
        pending = sum(s["pending"] for s in engine.snapshot()["sinks"].values())
        _say(f"tickwire: forced exit on second {name}; {pending:,} records were not committed")
        os._exit(EXIT_FORCED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        bound = engine.metrics.serve(host, port)
    except OSError as exc:
        _say(f"tickwire: cannot serve metrics on {host}:{port}: {exc} (--metrics-port auto picks a free port, 0 turns it off)")
        return 2
    task = asyncio.create_task(engine.run())
    # wait until the sinks are open, so their destinations can be printed (or the run failed)
    ready = asyncio.create_task(engine.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    metrics_url = f"http://{host}:{bound}/metrics" if bound else None
    if not task.done():
        if json_logs:
            log.info("starting", profile=profile, streams=list(engine.streams), destinations=engine.destinations(),
                     metrics=metrics_url)
        else:
            _say(f"tickwire run: profile '{profile}', streams {', '.join(engine.streams)}")
            for line in engine.destinations():
                _say(f"  -> {line}")
            _say(f"  metrics: {metrics_url or 'off'}")
    if duration is not None:
        loop.call_later(duration, engine.stop)
    view = None
    ticker = None
    if live:
        from rich.console import Console
        from rich.live import Live

        view = Live(get_renderable=StatusView(engine, f"tickwire run ({profile})").render,
                    console=Console(stderr=True), refresh_per_second=2, transient=False)
        view.start()
    else:
        progress = Progress(engine, log, progress_interval)

        async def tick() -> None:
            while True:
                await asyncio.sleep(progress_interval)
                progress.emit()

        ticker = asyncio.create_task(tick())
    code = 0
    try:
        await task
    except EngineError as exc:
        if json_logs:
            log.error(str(exc))
        else:
            _say(f"tickwire: {exc}")
        code = 1
    finally:
        if view is not None:
            view.stop()
        if ticker is not None:
            ticker.cancel()
        engine.metrics.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    snapshot = engine.snapshot()
    if json_logs:  # stderr stays pure JSON lines for log shippers
        log.info("summary", text=summary_lines(snapshot), **{k: v for k, v in snapshot.items() if k != "sources"})
    else:
        for line in summary_lines(snapshot):
            _say(line)
    return code


run_command = run
