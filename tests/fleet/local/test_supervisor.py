"""fleet.local.supervisor: restart with backoff and giving up (pure: a fake clock and a fake restart)."""

from __future__ import annotations

from pathlib import Path

from fleet.client.errors import StackError
from fleet.local.procs import RestartPolicy
from fleet.local.supervisor import Supervisor, Unit

POLICY = RestartPolicy(initial_s=1.0, max_s=4.0, factor=2.0, stable_s=30.0, max_failures=2)
LOG = Path("/tmp/x.log")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Restarts:
    def __init__(self, fail: bool = False) -> None:
        self.names: list[str] = []
        self.fail = fail

    async def __call__(self, name: str) -> None:
        self.names.append(name)
        if self.fail:
            raise StackError(f"{name} did not come up")


def unit(name: str, running: bool) -> Unit:
    return Unit(name, running, LOG, None if running else 1)


async def test_a_dead_unit_restarts_after_its_delay_and_running_ones_are_left_alone() -> None:
    clock, restarts = Clock(), Restarts()
    sup = Supervisor(POLICY, clock)
    assert await sup.heal([unit("gateway", True), unit("redis", True)], restarts) == []
    clock.now += 0.5
    assert await sup.heal([unit("gateway", True), unit("redis", False)], restarts) == []  # waits 1 s first
    clock.now += 0.9
    assert await sup.heal([unit("gateway", True), unit("redis", False)], restarts) == []
    clock.now += 0.2
    assert await sup.heal([unit("gateway", True), unit("redis", False)], restarts) == ["redis"]
    assert restarts.names == ["redis"] and sup.failure is None


async def test_quick_failures_back_off_then_give_up_with_the_reason() -> None:
    clock, restarts = Clock(), Restarts()
    sup = Supervisor(POLICY, clock)
    await sup.heal([unit("gateway", True)], restarts)
    waits = []
    for _ in range(2):  # dies right after each start: 1 s, then 2 s
        clock.now += 0.1
        await sup.heal([unit("gateway", False)], restarts)
        before = len(restarts.names)
        waited = 0.0
        while len(restarts.names) == before:
            clock.now += 0.5
            waited += 0.5
            await sup.heal([unit("gateway", False)], restarts)
        waits.append(waited)
    assert waits == [1.0, 2.0]
    clock.now += 0.1
    assert await sup.heal([unit("gateway", False)], restarts) == []
    assert sup.failure is not None
    assert "the gateway died 3 times in a row" in sup.failure and "last exit status 1" in sup.failure
    assert str(LOG) in sup.failure


async def test_a_long_run_starts_the_count_over() -> None:
    clock, restarts = Clock(), Restarts()
    sup = Supervisor(POLICY, clock)
    await sup.heal([unit("broker", True)], restarts)
    for _ in range(5):  # each run lasts longer than stable_s: never gives up, always the first delay
        clock.now += 60.0
        await sup.heal([unit("broker", False)], restarts)
        clock.now += 1.0
        assert await sup.heal([unit("broker", False)], restarts) == ["broker"]
    assert sup.failure is None and len(restarts.names) == 5


async def test_a_failed_restart_counts_as_a_quick_failure() -> None:
    clock, restarts = Clock(), Restarts(fail=True)
    sup = Supervisor(POLICY, clock)
    await sup.heal([unit("autoscaler", True)], restarts)
    for _ in range(10):
        clock.now += 0.5
        await sup.heal([unit("autoscaler", False)], restarts)
        if sup.failure is not None:
            break
    assert restarts.names == ["autoscaler", "autoscaler"]  # then it gives up: 3 quick failures
    assert sup.failure is not None and "the autoscaler died 3 times" in sup.failure
