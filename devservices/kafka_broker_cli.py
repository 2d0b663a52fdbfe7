"""The development Kafka broker's command line (:mod:`.kafka_broker`): ``fetch`` the jars,
``start`` a broker (``--foreground``: until Ctrl-C), ``stop`` it, or ``kill`` it as a crash would.

    python scripts/kafka_broker.py fetch                          # jars only; prints the libs dir
    python scripts/kafka_broker.py start [--port 9092] [--dir DIR] [--foreground]
    python scripts/kafka_broker.py stop [--dir DIR]
    python scripts/kafka_broker.py kill [--dir DIR]                # SIGKILL: a crash, no flush

A broker started without ``--foreground`` outlives the command: its pid is in ``<dir>/broker.json``,
which ``stop`` and ``kill`` read.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from tickwire.devservices import kafka_broker as broker_module
from tickwire.devservices.kafka_broker import DEFAULT_HEAP, STATE_FILE, BrokerError, KafkaBroker, fetch_jars
from tickwire.devservices.maven import cache_root
from tickwire.devservices.processes import stop_requested_on_signals, wait_for_exit


def default_dir(port: int) -> Path:
    return cache_root() / "kafka" / f"broker-{port}"


def stop_from_state(directory: Path, crash: bool = False) -> None:
    """Stop the broker recorded in ``directory``: SIGTERM (SIGKILL after 30 s), or at once
    with SIGKILL when ``crash`` (what the outage tests do; start it again on the same port)."""
    state_path = directory / STATE_FILE
    if not state_path.exists():
        print(f"no broker state in {directory}; nothing to stop", file=sys.stderr)
        return
    pid = json.loads(state_path.read_text())["pid"]
    try:
        os.kill(pid, signal.SIGKILL if crash else signal.SIGTERM)
    except ProcessLookupError:
        print(f"broker process {pid} is not running", file=sys.stderr)
        state_path.unlink()
        return
    if not wait_for_exit(pid, 30, poll=0.2):
        os.kill(pid, signal.SIGKILL)
    state_path.unlink()
    print(f"{'killed' if crash else 'stopped'} broker process {pid}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=broker_module.__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the jars into the cache and print the directory")
    start = commands.add_parser("start", help="start a broker on 127.0.0.1")
    start.add_argument("--port", type=int, default=9092)
    start.add_argument("--controller-port", type=int, default=None)
    start.add_argument("--dir", type=Path, default=None, help="broker directory (data, log, config)")
    start.add_argument("--heap", default=DEFAULT_HEAP)
    start.add_argument("--foreground", action="store_true", help="run until Ctrl-C, then stop cleanly")
    stop = commands.add_parser("stop", help="stop a broker started with `start`")
    stop.add_argument("--port", type=int, default=9092)
    stop.add_argument("--dir", type=Path, default=None)
    kill = commands.add_parser("kill", help="SIGKILL a broker started with `start`, as a crash would")
    kill.add_argument("--port", type=int, default=9092)
    kill.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            print(fetch_jars())
            return 0
        directory = args.dir or default_dir(args.port)
        if args.command in ("stop", "kill"):
            stop_from_state(directory, crash=args.command == "kill")
            return 0
        broker = KafkaBroker(directory, port=args.port, controller_port=args.controller_port, heap=args.heap)
        started = time.monotonic()
        broker.start()
        print(
            f"Kafka broker ready on {broker.bootstrap} in {time.monotonic() - started:.1f}s "
            f"(dir {directory}, log {broker.log_path})",
            file=sys.stderr,
        )
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}")
        if not args.foreground:
            return 0
        stop_requested = stop_requested_on_signals()
        while not stop_requested() and broker.is_running():
            time.sleep(0.5)
        if not broker.is_running():
            print(f"the broker exited by itself; last lines of its log:\n{broker.log_tail()}", file=sys.stderr)
            return 1
        print("stopping the Kafka broker", file=sys.stderr)
        broker.stop()
        return 0
    except BrokerError as error:
        print(f"kafka_broker: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
