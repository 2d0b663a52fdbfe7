"""A real N-broker Apache Kafka cluster (KRaft) on 127.0.0.1, from the same Maven jars as the
single broker (:mod:`.kafka_broker`).

Every node is one JVM that is both broker and controller, with its own node id, broker port,
controller port and data directory under the cluster's directory; the controllers form one
static quorum (``controller.quorum.voters``), so the cluster keeps a controller majority and
keeps serving when any one of three nodes dies. Internal topics are replicated to every node
(at most three). Used by the `kafka_cluster` test fixture (tests/fixtures/kafka.py) and by
`make kafka-cluster` (`python -m tickwire.devservices.kafka_cluster start --foreground`).

A node can be SIGKILLed (``cluster.node(2).kill()``) and started again on the same ports and
data, as a crashed machine that comes back would.
"""

from __future__ import annotations

import argparse
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from tickwire.devservices.kafka_broker import (
    DEFAULT_HEAP,
    SINGLE_NODE_SETTINGS,
    BrokerError,
    KafkaBroker,
    new_cluster_id,
)
from tickwire.devservices.kafka_probe import broker_count
from tickwire.devservices.maven import cache_root
from tickwire.devservices.ports import free_port
from tickwire.devservices.processes import stop_requested_on_signals


def cluster_settings(size: int) -> dict[str, str]:
    """The single node's settings, with internal topics replicated as a cluster of ``size`` can
    afford: three copies (or ``size``), and a write acknowledged by all in-sync replicas (acks=all)
    needs at least two of them in sync, so an acknowledged record survives the loss of a node."""
    replicas = str(min(size, 3))
    return {
        **SINGLE_NODE_SETTINGS,
        "min.insync.replicas": str(min(size, 2)),
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": str(min(size, 2)),
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": str(min(size, 2)),
    }


class ClusterNode(KafkaBroker):
    """One broker+controller of a :class:`KafkaCluster`; it knows every voter of the quorum."""

    def __init__(self, directory: Path, node_id: int, port: int, controller_port: int,
                 voters: dict[int, int], cluster_id: str, heap: str, die_with_parent: bool) -> None:
        super().__init__(directory, port=port, controller_port=controller_port, heap=heap,
                         die_with_parent=die_with_parent)
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id

    def _node_settings(self) -> dict[str, str]:
        return {
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(f"{i}@127.0.0.1:{port}" for i, port in sorted(self.voters.items())),
        }

    def _topology_settings(self) -> dict[str, str]:
        return cluster_settings(len(self.voters))

    def _format_arguments(self) -> tuple[str, list[str]]:
        # A static quorum: the voters come from the config, every node formats with one cluster id.
        return self.cluster_id, []


class KafkaCluster:
    """``size`` nodes in ``directory/node-<id>``; ports are free ones unless ``base_port`` is
    given (then brokers listen on base_port, base_port+1, … and controllers 10000 higher)."""

    def __init__(self, directory: Path | str, size: int = 3, base_port: int | None = None,
                 heap: str = DEFAULT_HEAP, die_with_parent: bool = False) -> None:
        if size < 1:
            raise BrokerError(f"a Kafka cluster needs at least one node, not {size}")
        self.directory = Path(directory).resolve()
        ids = range(1, size + 1)
        ports = {i: base_port + i - 1 if base_port else free_port() for i in ids}
        controller_ports = {i: base_port + 10000 + i - 1 if base_port else free_port() for i in ids}
        cluster_id = new_cluster_id()
        self.nodes = [
            ClusterNode(self.directory / f"node-{i}", i, ports[i], controller_ports[i], controller_ports,
                        cluster_id, heap, die_with_parent)
            for i in ids
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's address: a client finds the cluster through whichever is up."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id} in this cluster (ids 1..{len(self.nodes)})")

    def start(self, timeout: float = 120.0) -> None:
        """Start every node that is not running, and return once each of them answers listing
        all nodes of the cluster (every broker registered and unfenced)."""
        deadline = time.monotonic() + timeout
        stopped = [node for node in self.nodes if not node.is_running()]
        for node in stopped:
            node.launch()
        for node in stopped:
            node.wait_ready(max(1.0, deadline - time.monotonic()))
        self.wait_complete(max(1.0, deadline - time.monotonic()))

    def wait_complete(self, timeout: float = 60.0) -> None:
        """Until every node's Metadata answer lists every node; BrokerError after ``timeout``."""
        deadline = time.monotonic() + timeout
        counts: dict[int, int | str] = {}
        while time.monotonic() < deadline:
            for node in self.nodes:
                try:
                    counts[node.node_id] = broker_count("127.0.0.1", node.port)
                except (OSError, struct.error) as error:
                    counts[node.node_id] = f"no answer ({error.__class__.__name__})"
            if all(count == len(self.nodes) for count in counts.values()):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"the Kafka cluster did not assemble within {timeout:.0f}s; brokers seen by each node: {counts}; "
            + "; ".join(f"node {node.node_id} log tail:\n{node.log_tail(10)}" for node in self.nodes)
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every node at once (one by one, the last would wait for a quorum that is
        gone), SIGKILL to those still running after ``timeout``."""
        running = [node for node in self.nodes if node.is_running()]
        for node in running:
            node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in running:
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None

    def kill(self) -> None:
        """SIGKILL every node, as a power cut would."""
        for node in self.nodes:
            node.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a cluster on 127.0.0.1 and run it until Ctrl-C")
    start.add_argument("--nodes", type=int, default=3)
    start.add_argument("--port", type=int, default=9092, help="first broker port; the others follow it")
    start.add_argument("--dir", type=Path, default=None, help="cluster directory (one folder per node)")
    start.add_argument("--heap", default=DEFAULT_HEAP, help="heap of each node")
    start.add_argument("--foreground", action="store_true", required=True,
                       help="run until Ctrl-C, then stop every node cleanly (the only mode)")
    args = parser.parse_args(argv)

    # Fixed ports and directory: a second start brings back the same cluster with its data
    # (nodes are formatted, with the cluster id, only on their first start).
    directory = args.dir or cache_root() / "kafka" / f"cluster-{args.port}"
    cluster = KafkaCluster(directory, size=args.nodes, base_port=args.port, heap=args.heap)
    stop_requested = stop_requested_on_signals()
    try:
        started = time.monotonic()
        cluster.start()
        print(f"Kafka cluster of {args.nodes} ready in {time.monotonic() - started:.1f}s (dir {directory})",
              file=sys.stderr)
        print(f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap}", flush=True)
        while not stop_requested() and all(node.is_running() for node in cluster.nodes):
            time.sleep(0.5)
        dead = [node for node in cluster.nodes if not node.is_running()]
        for node in dead:
            print(f"node {node.node_id} exited by itself; last lines of its log:\n{node.log_tail()}", file=sys.stderr)
        return 1 if dead else 0
    except BrokerError as error:
        print(f"kafka_cluster: {error}", file=sys.stderr)
        return 1
    finally:
        print("stopping the Kafka cluster", file=sys.stderr)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
