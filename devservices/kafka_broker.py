"""A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) on 127.0.0.1.

The jars come from Maven Central through the pom.xml next to this module and are cached in
`${TICKWIRE_CACHE:-~/.cache/tickwire}/kafka/<version>/libs`, so there is no tarball, no Docker and
no download after the first run. Used by the test fixture (tests/fixtures/kafka.py), the
benchmarks, `make kafka` and by hand, through its command line :mod:`.kafka_broker_cli`
(`python -m tickwire.devservices.kafka_broker_cli` is the same):

    python scripts/kafka_broker.py fetch                          # jars only; prints the libs dir
    python scripts/kafka_broker.py start [--port 9092] [--dir DIR] [--foreground]
    python scripts/kafka_broker.py stop [--dir DIR]
    python scripts/kafka_broker.py kill [--dir DIR]                # SIGKILL: a crash, no flush

Several brokers as one cluster: :mod:`.kafka_cluster` (its nodes are :class:`KafkaBroker`s).
A broker can be stopped cleanly (`stop`), killed with SIGKILL (`kill`) and started again on the
same ports and the same data directory, which is what the "broker dies mid-stream" tests need.
Its log goes to `<dir>/broker.log`; when it fails to start, the tail of that log is in the error.

Besides the standard library it needs only tickwire.devservices (Maven fetch, probe, ports), so
it runs in a run-time install without extras.
"""

from __future__ import annotations

import base64
import ctypes
import json
import re
import shutil
import signal
import struct
import subprocess
import time
import uuid
from pathlib import Path

from tickwire.devservices.kafka_probe import broker_count
from tickwire.devservices.maven import MavenError, cache_root, fetch_dependencies
from tickwire.devservices.ports import free_port

POM = Path(__file__).resolve().parent / "pom.xml"  # the broker's jars (package data)
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
DEFAULT_HEAP = "512m"

# Internal topics default to three replicas, which one node can never satisfy; the group
# coordinator's 50 offset partitions also make the first consumer group slow to appear.
SINGLE_NODE_SETTINGS = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.partitions": "1",
    # Topics must be provisioned (`tickwire kafka provision`), so a missing topic is an error
    # the tests see instead of a topic silently created with default settings.
    "auto.create.topics.enable": "false",
    "log.segment.bytes": str(64 * 1024 * 1024),
    # After a SIGKILL the restarted broker waits for its previous incarnation's session to expire
    # before it is unfenced: 9 s by default, which would dominate every crash test.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "2500",
}

LOG4J2_PROPERTIES = """\
# Written by tickwire.devservices.kafka_broker: everything to stdout, which is redirected to broker.log.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
"""


class BrokerError(RuntimeError):
    """Fetching, formatting, starting or stopping the broker failed; the message says why."""


# ---------------------------------------------------------------------------------------------
# jars


def kafka_version(pom: Path = POM) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if not match:
        raise BrokerError(f"{pom} does not declare <kafka.version>")
    return match.group(1).strip()


def fetch_jars(pom: Path = POM, quiet: bool = False) -> Path:
    """Return the directory holding the broker's jars, fetching them with Maven when the cache
    is empty or was filled from a different pom.xml. Safe to call from concurrent processes."""
    version = kafka_version(pom)
    try:
        return fetch_dependencies(pom, cache_root() / "kafka" / version / "libs", what=f"the Apache Kafka {version} jars",
                                  expect=f"kafka_2.13-{version}.jar", quiet=quiet)
    except MavenError as error:
        raise BrokerError(str(error)) from None


# ---------------------------------------------------------------------------------------------
# the process


def die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL the started process (a broker, a Spark daemon) if the
    test process dies, so an aborted test run never leaves a JVM holding ports.

    The kernel ties this to the *thread* that started the broker, not the process: call
    ``start()`` from a thread that lives as long as the broker should (the main thread), never
    from an executor thread, or the broker dies when that thread is retired."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes in URL-safe base64 without padding, never starting with
    "-" (one id in 64 did, and `kafka-storage format -t -…` took it for an option; Kafka's own
    Uuid.randomUuid() skips those too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


# ---------------------------------------------------------------------------------------------
# the broker


class KafkaBroker:
    """One KRaft broker+controller process. Ports are picked once (free ones unless given) and
    kept, so `kill()` then `start()` brings the same broker back on the same address."""

    def __init__(
        self,
        directory: Path | str,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        die_with_parent: bool = False,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.die_with_parent = die_with_parent
        self.extra_settings = dict(extra_settings or {})
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker (formatting its storage on first start) and return once it answers
        a Metadata request listing itself."""
        if self.process is not None and self.process.poll() is None:
            return
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to answer: a cluster launches every node
        first, since no node of a multi-voter quorum is ready before a majority runs."""
        if self.process is not None and self.process.poll() is None:
            return
        libs = fetch_jars()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage(libs)
        log = open(self.log_path, "ab")
        log.write(f"\n---- tickwire: starting broker on {self.bootstrap} at {time.ctime()}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            self._java_command(libs, "kafka.Kafka", str(self.directory / "server.properties")),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            preexec_fn=die_with_parent if self.die_with_parent else None,
            # Its own process group: a Ctrl-C meant for a foreground `make kafka` or pytest
            # reaches us first, and we stop the broker cleanly instead of it dying mid-write.
            start_new_session=True,
        )
        log.close()
        self._write_state()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown that flushes logs), SIGKILL if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no flush, no controlled shutdown."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no broker log yet)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------------------

    def _java_command(self, libs: Path, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java 17+ is needed to run Kafka: `apt-get install -y openjdk-17-jdk-headless`")
        return [
            java,
            f"-Xms{self.heap}" if main_class == "kafka.Kafka" else "-Xms64m",
            f"-Xmx{self.heap}" if main_class == "kafka.Kafka" else "-Xmx256m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.directory}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def _write_config(self) -> None:
        settings = {
            "process.roles": "broker,controller",
            **self._node_settings(),
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **self._topology_settings(),
            **self.extra_settings,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        (self.directory / "server.properties").write_text(
            "# Written by tickwire.devservices.kafka_broker on each start.\n" + "\n".join(lines) + "\n"
        )
        (self.directory / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _node_settings(self) -> dict[str, str]:
        """Who this node is and where its controller quorum is: alone, a quorum of one."""
        return {"node.id": "1", "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"}

    def _topology_settings(self) -> dict[str, str]:
        """Settings that depend on how many nodes there are (internal topics' replication)."""
        return SINGLE_NODE_SETTINGS

    def _format_arguments(self) -> tuple[str, list[str]]:
        """The cluster id to format the storage with, and the StorageTool arguments that say how
        the controller quorum is set up: a fresh id, and this node as the whole (dynamic) quorum."""
        return new_cluster_id(), ["--standalone"]

    def _format_storage(self, libs: Path) -> None:
        cluster_id, quorum = self._format_arguments()
        command = self._java_command(
            libs, "kafka.tools.StorageTool", "format", *quorum,
            "-t", cluster_id, "-c", str(self.directory / "server.properties"),
        )
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.directory)
        with open(self.log_path, "a") as log:
            log.write(f"---- tickwire: formatted storage, cluster id {cluster_id}\n")
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} failed:\n{(result.stdout + result.stderr)[-3000:]}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Return once the launched broker answers a Metadata request; BrokerError if it exits
        or stays silent for ``timeout`` seconds (then it is killed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise BrokerError(
                    f"the Kafka broker exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if broker_count("127.0.0.1", self.port) >= 1:
                    return
            except (OSError, struct.error):
                pass
            time.sleep(0.2)
        self.kill()
        raise BrokerError(
            f"the Kafka broker did not answer on {self.bootstrap} within {timeout:.0f}s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _write_state(self) -> None:
        state = {
            "pid": self.process.pid,
            "port": self.port,
            "controller_port": self.controller_port,
            "bootstrap": self.bootstrap,
        }
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
