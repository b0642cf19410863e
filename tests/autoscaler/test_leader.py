"""Leader election of autoscalers against real Redis: one holder at a time, hand-over on stop and on expiry,
a holder that cannot renew stops acting before its lease can pass to another, and two services of which
only the leader scales."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from autoscaler import AutoscalerService, AutoscalerSettings
from autoscaler.leader import RENEW_DEADLINE, LeaderLease, read_leader
from fleet.local.servers import LocalRedis, free_port
from schemas import FleetSettings, ModelRecord, Names, RedisSettings

from .conftest import MODEL, wait_until

pytestmark = pytest.mark.integration


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_one_holder_at_a_time_and_hand_over_on_stop(redis_client: Any, names: Names) -> None:
    first = LeaderLease(redis_client, names, lease_s=5.0, holder="first")
    second = LeaderLease(redis_client, names, lease_s=5.0, holder="second")
    async with first:
        assert first.is_leader
        async with second:
            assert not second.is_leader
            assert await first.try_hold()  # renewing is holding
            assert not await second.try_hold()
            assert await read_leader(redis_client, names) == "first"
            await first.stop()  # released at once, not after the lease
            assert not first.is_leader
            assert await second.try_hold()
            assert await read_leader(redis_client, names) == "second"
        assert await read_leader(redis_client, names) is None


async def test_an_expired_lease_is_taken_over(redis_client: Any, names: Names) -> None:
    dead = LeaderLease(redis_client, names, lease_s=1.0, holder="killed")
    assert await dead.try_hold()  # and never renews, as if SIGKILLed
    standby = LeaderLease(redis_client, names, lease_s=1.0, holder="standby")
    assert not await standby.try_hold()
    await asyncio.sleep(1.05)
    assert await standby.try_hold()
    assert not await dead.try_hold()  # the old holder finds out at its next renewal


async def test_a_holder_that_cannot_renew_stops_acting_before_the_lease_expires(names: Names, tmp_path: Path) -> None:
    server = LocalRedis(log_dir=tmp_path)
    await asyncio.to_thread(server.start)
    client = RedisSettings(url=server.url).client()
    clock = Clock()
    changes: list[bool] = []
    lease = LeaderLease(client, names, lease_s=9.0, holder="cut-off", clock=clock, on_change=changes.append)
    try:
        assert await lease.try_hold() and changes == [True]
        await asyncio.to_thread(server.stop)
        clock.now += 9.0 * RENEW_DEADLINE - 0.1
        assert await lease.try_hold()  # the renewal fails (Redis gone), but the lease may still be ours
        clock.now += 0.2  # past the renew deadline, still before the key's TTL could run out
        assert not lease.is_leader and not await lease.try_hold()
        assert changes == [True, False]
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def two_autoscalers(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, tmp_path: Path
) -> AsyncIterator[tuple[AutoscalerService, AutoscalerService, int, int]]:
    ports = free_port(), free_port()
    services = [
        AutoscalerService(
            AutoscalerSettings(
                interval_s=0.1,
                gpus=0,
                inventory_interval_s=0.2,
                metrics_port=port,
                leader_lease_s=3.0,  # renewed every second: a slow CI machine does not lose it
                log_dir=str(tmp_path / str(port)),
                fleet=fleet_settings,
            )
        )
        for port in ports
    ]
    async with services[0], services[1]:
        yield services[0], services[1], ports[0], ports[1]


async def _leader_gauge(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        (line,) = [x for x in (await response.text()).splitlines() if x.startswith("fleet_autoscaler_leader ")]
    return line.split()[1]


async def test_only_the_leading_autoscaler_scales_and_a_standby_takes_over(
    two_autoscalers: tuple[AutoscalerService, AutoscalerService, int, int], redis_client: Any, names: Names
) -> None:
    leader, standby, leader_port, standby_port = two_autoscalers
    assert leader.lease is not None and standby.lease is not None
    assert leader.lease.is_leader and not standby.lease.is_leader  # the first to start took the lease
    assert leader.autoscaler is not None and standby.autoscaler is not None
    await wait_until(lambda: leader.autoscaler and leader.autoscaler.decisions.get(MODEL), 10, "a decision")
    await asyncio.sleep(0.5)  # five rounds of the standby
    assert standby.autoscaler.decisions == {}
    async with aiohttp.ClientSession() as http:
        assert (await _leader_gauge(http, leader_port), await _leader_gauge(http, standby_port)) == ("1.0", "0.0")
        await leader.stop()
        # Released on stop: the standby holds it by its next try (a third of the 3 s lease).
        await wait_until(lambda: standby.lease is not None and standby.lease.is_leader, 5, "the standby leading")
        await wait_until(lambda: standby.autoscaler and standby.autoscaler.decisions.get(MODEL), 10, "a decision")
        assert await _leader_gauge(http, standby_port) == "1.0"
    assert await read_leader(redis_client, names) == standby.lease.holder
