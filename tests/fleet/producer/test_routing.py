"""fleet.client.producer.routing: defaults, traffic splits, the TTL and outages, against a fake registry."""

from __future__ import annotations

import pytest

from fleet.client.producer import RoutingCache
from schemas import (
    BackendUnavailableError,
    ErrorCode,
    Framework,
    ModelRecord,
    RegistryError,
    SchemaError,
    TensorSpec,
)
from schemas.traffic import TrafficSplit


def record(version: str) -> ModelRecord:
    spec = (TensorSpec("x", "FP32", (-1, 4)),)
    return ModelRecord("m", version, Framework.ONNX, "/m.onnx", "0" * 64, spec, spec)


class FakeRegistry:
    """The reads routing makes; ``down`` makes them fail as an unreachable Redis does."""

    def __init__(self) -> None:
        self.default: str | None = "1"
        self.split: TrafficSplit | None = None
        self.bad_split = False
        self.down = False
        self.reads = 0
        self.gets = 0

    async def default_version(self, model: str) -> str | None:
        self.reads += 1
        if self.down:
            raise BackendUnavailableError("Redis unavailable")
        return self.default

    async def traffic(self, model: str) -> TrafficSplit | None:
        if self.bad_split:
            raise SchemaError("shares must add up to 100")
        return self.split

    async def get(self, model: str, version: str | None = None) -> ModelRecord:
        self.gets += 1
        return record(version or "1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_default_then_split_after_the_ttl(registry: FakeRegistry, clock: Clock) -> None:
    routing = RoutingCache(registry, 1.0, clock=clock)
    ids = [f"r-{i}" for i in range(50)]
    assert {await routing.version_for("m", i) for i in ids} == {"1"}
    split = TrafficSplit.of({"1": 50, "2": 50})
    registry.split = split
    clock.now = 0.5
    assert {await routing.version_for("m", i) for i in ids} == {"1"}  # cached within the TTL
    assert registry.reads == 1
    clock.now = 1.0
    picked = {i: await routing.version_for("m", i) for i in ids}
    assert picked == {i: split.pick(i) for i in ids} and set(picked.values()) == {"1", "2"}
    assert registry.reads == 2


async def test_last_known_route_is_kept_while_redis_is_down(registry: FakeRegistry, clock: Clock) -> None:
    routing = RoutingCache(registry, 1.0, clock=clock)
    assert (await routing.route("m")).default == "1"
    registry.down = True
    clock.now = 5.0
    assert (await routing.route("m")).default == "1"
    assert registry.reads == 2
    assert (await routing.route("m")).default == "1"  # not re-read again until a TTL later
    assert registry.reads == 2
    with pytest.raises(BackendUnavailableError):
        await routing.route("other")  # nothing known to fall back on


async def test_an_unreadable_split_serves_the_default(registry: FakeRegistry, clock: Clock) -> None:
    registry.bad_split = True
    routing = RoutingCache(registry, 1.0, clock=clock)
    assert await routing.version_for("m", "any") == "1"


async def test_unknown_model(registry: FakeRegistry, clock: Clock) -> None:
    registry.default = None
    with pytest.raises(RegistryError) as info:
        await RoutingCache(registry, 1.0, clock=clock).route("m")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND


async def test_records_are_cached_and_follow_the_default(registry: FakeRegistry, clock: Clock) -> None:
    routing = RoutingCache(registry, 1.0, clock=clock)
    assert (await routing.record("m")).version == "1"
    assert (await routing.record("m", "1")).version == "1"
    assert registry.gets == 1  # a version is immutable: read once
    registry.default = "2"
    clock.now = 1.0
    assert (await routing.record("m")).version == "2"
    assert registry.gets == 2
