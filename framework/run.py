"""``tickwire run``: the pipeline of one profile, until Ctrl-C / SIGTERM / ``--duration``.

At start it prints where the data goes; while running it shows a live table on a terminal or
logs a progress line (JSON logs elsewhere); at exit it prints a summary. With JSON logs, the
start (event ``starting``: destinations, metrics URL) and the summary (event ``summary``) are
log events too, so stderr is nothing but JSON lines (third-party libraries' log records
included, see framework/logs.py).

Stopping: SIGINT, SIGTERM or the end of ``--duration`` stop the sources, flush every buffer, wait
for the sinks to commit, close them. The whole stop takes at most ``engine.shutdown_timeout_s``
(default 15 s) whatever a sink is doing — a database that is down, a broker that is gone: what is
not committed by then is abandoned and counted per sink and stream (an error line and
``tickwire_records_abandoned_total``). Should the process still be alive 5 s after that (a
thread stuck inside a driver), a watchdog ends it. A second SIGINT or SIGTERM exits at once,
with one error line saying what was abandoned.

Exit codes: 0 every record received was committed (or spooled); 1 the run failed (a sink
could not open, or raised PermanentError while running: the message names sink, plugin and
stream; framework/components.py); 2 bad configuration or command line; 3 stopped in time but records were
abandoned at ``shutdown_timeout_s`` (or the watchdog ended it); 130 forced by a second signal.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import socket
import sys
import threading
from typing import Any

import click
import structlog

from tickwire.framework.engine import Engine, EngineError, describe_uncommitted, uncommitted_fields
from tickwire.framework.logs import FORMATS, LEVELS, configure, get_logger, log_loop_exceptions, report_suppressed
from tickwire.framework.metrics import Metrics
from tickwire.framework.sharding import Shard, shard_option
from tickwire.framework.status import Progress, StatusView, summary_lines

EXIT_ABANDONED = 3
EXIT_FORCED = 130
WATCHDOG_GRACE_S = 5.0  # after shutdown_timeout_s, before the watchdog ends a process that hangs


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


INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")


def default_instance() -> str:
    """``hostname-pid``: unique per process, so redundant instances differ without a flag."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _instance_name(ctx, param, value: str | None) -> str:
    if value is None or value == "":
        return default_instance()
    if not INSTANCE_NAME.match(value):
        raise click.BadParameter(
            f"{value!r}: 1-100 characters, letters, digits and . _ : @ - (a name for logs and metrics)",
            ctx, param)
    return value


@click.command("run")
@click.option("--profile", default=None, help="Profile of streams.yaml to run (default: default_profile, i.e. 'local').")
@click.option("--log-format", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="auto: console on a terminal, JSON lines otherwise.")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@click.option("--metrics-port", type=MetricsPort(), default=None, metavar="PORT|auto",
              help="Port of the Prometheus /metrics endpoint (default: metrics.port, 9464). 0 = no endpoint; "
                   "auto = a free port chosen by the OS (shown at start).")
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Stop by itself after this many seconds (flushes like Ctrl-C, within engine.shutdown_timeout_s).")
@click.option("--no-status", is_flag=True, help="No live table, even on a terminal (progress log lines instead).")
@click.option("--progress-interval", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="Seconds between progress log lines when there is no live table.")
@click.option("--instance", envvar="TICKWIRE_INSTANCE", default=None, callback=_instance_name, metavar="NAME",
              help="This process's name in every log line (`instance`) and in the metric tickwire_instance_info, "
                   "to tell redundant instances apart (env TICKWIRE_INSTANCE; default: hostname-pid).")
@shard_option
@click.pass_obj
def run(app: Any, profile: str | None, log_format: str, log_level: str, metrics_port: int | None,
        duration: float | None, no_status: bool, progress_interval: float, instance: str,
        shard: Shard | None) -> None:
    """Run the pipeline: sources -> validate -> normalize -> sinks of the profile.

    \b
    Examples:
      tickwire run                                   # Binance -> SQLite (data/tickwire.db)
      tickwire run --profile compose                 # Binance -> Kafka (Spark -> PostgreSQL)
      tickwire --set sources.binance.url=ws://127.0.0.1:9443 run --duration 30
    """
    fmt = configure(log_format, log_level, fields={"instance": instance})
    if shard is not None:  # every log line of this process says which shard it is
        structlog.contextvars.bind_contextvars(shard=str(shard))
    log = get_logger(component="run")
    config = app.config
    metrics = Metrics()
    metrics.identify(instance)
    try:
        engine = Engine.from_config(config, app.manager, profile, metrics=metrics, shard=shard)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from exc
    prof = config.profile(profile)
    live = fmt == "console" and not no_status and sys.stderr.isatty()
    settings = config.metrics  # the schema's defaults filled in
    host = settings["host"]
    port = metrics_port if metrics_port is not None else settings["port"]
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


def _detach_from_closed_terminal() -> None:
    """After a hangup, writes to the terminal fail (EIO): point its stdout and stderr at /dev/null
    so the shutdown's log lines cannot break the flush. Output to a file or pipe is kept."""
    devnull = None
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                devnull = devnull if devnull is not None else os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
        except OSError:
            pass


async def _main(engine: Engine, log: Any, profile: str, host: str, port: int, duration: float | None,
                live: bool, progress_interval: float, json_logs: bool) -> int:
    loop = asyncio.get_running_loop()
    log_loop_exceptions(loop)
    signals = {"count": 0}
    watchdog: list[threading.Timer] = []

    def request_stop() -> None:
        engine.stop()
        if not watchdog:
            watchdog.append(_arm_watchdog(engine.settings.shutdown_timeout_s + WATCHDOG_GRACE_S, log))

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            _detach_from_closed_terminal()
        if signals["count"] == 1:
            log.info(f"{name}: stopping — flushing buffers and waiting for the sinks to commit, at most "
                     f"{engine.settings.shutdown_timeout_s:g}s (again to force)")
            request_stop()
            return
        counts = engine.take_uncommitted()
        for (sink, stream), n in counts.items():
            engine.metrics.records_abandoned.labels(sink=sink, stream=stream).inc(n)
        if counts:
            log.error(f"forced exit on second {name}: {describe_uncommitted(counts)}", **uncommitted_fields(counts))
        else:
            log.error(f"forced exit on second {name}: 0 records were not committed")
        sys.stderr.flush()
        os._exit(EXIT_FORCED)

    # SIGHUP (the terminal closed, an SSH session dropped) stops as cleanly as SIGTERM: without a
    # handler it killed the run before the buffers were flushed
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        bound = engine.metrics.serve(host, port)
    except OSError as exc:
        _say(f"tickwire: cannot serve metrics on {host}:{port}: {exc} (--metrics-port auto picks a free port, 0 turns it off)")
        return 2
    task = asyncio.create_task(engine.run())
    # --duration counts from when the pipeline is ready; a start-up that hangs (a store that does
    # not answer where to resume) is stopped after the same time
    timer = loop.call_later(duration, request_stop) if duration is not None else None
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
    if timer is not None and engine.ready.is_set():
        timer.cancel()
        loop.call_later(duration, request_stop)
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
    else:
        if engine.abandoned:
            code = EXIT_ABANDONED
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
    report_suppressed()
    return code


def _arm_watchdog(after: float, log: Any) -> threading.Timer:
    """End the process ``after`` seconds from now if it is still alive: the engine's own bound
    cannot interrupt a thread blocked inside a driver, and the interpreter waits for it at exit."""

    def fire() -> None:
        log.error(f"still running {after:g}s after the stop request (a sink's thread does not let go); exiting now")
        sys.stderr.flush()
        os._exit(EXIT_ABANDONED)

    timer = threading.Timer(after, fire)
    timer.daemon = True
    timer.start()
    return timer


run_command = run
