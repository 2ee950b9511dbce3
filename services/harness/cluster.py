"""A 3-node KRaft cluster on loopback (replication 3, min ISR 2, no unclean election),
from the same jars as the single broker: for rolling restarts and outages in tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.harness.ports import free_port
from services.kafka import local_broker

NODES = 3


class Cluster:
    """Nodes 1..3, each broker and controller; stop and start them one by one."""

    def __init__(self, home: Path, jar_cache: Path | None = None) -> None:
        ports = [(free_port(), free_port()) for _ in range(NODES)]
        voters = tuple((node, controller) for node, (_, controller) in enumerate(ports, 1))
        cluster_id = local_broker.new_cluster_id()
        self.nodes = [
            local_broker.BrokerLayout(
                home / f"node{node}",
                port=port,
                controller_port=controller,
                jar_cache=jar_cache,
                node_id=node,
                voters=voters,
                cluster_id=cluster_id,
            )
            for node, (port, controller) in enumerate(ports, 1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, *indexes: int, timeout_s: float = 120) -> None:
        """Start the nodes (all by default) together, then wait until each answers: a
        controller quorum needs two of them up before any answers."""
        chosen = [self.nodes[i] for i in indexes or range(NODES)]
        processes = [(node, local_broker.start(node)) for node in chosen]
        for node, process in processes:
            local_broker.wait_answering(node, process, timeout_s)

    def stop(self, index: int, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (a clean, controlled shutdown) or SIGKILL (a crash) one node."""
        local_broker.down(self.nodes[index], sig=sig)

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        for node in self.nodes:
            local_broker.down(node, sig=sig)


@contextmanager
def running_cluster(home: Path, jar_cache: Path | None = None) -> Iterator[Cluster]:
    cluster = Cluster(home, jar_cache)
    try:
        cluster.start()
        yield cluster
    finally:
        # Its data is thrown away: a controlled shutdown of the last nodes, each waiting
        # for a quorum that is leaving too, took 34 s of the test suite for nothing.
        cluster.stop_all(signal.SIGKILL)
