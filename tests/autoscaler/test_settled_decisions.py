"""A round decides again only the models whose inputs changed or whose decision was not settled, and keeping a
settled decision decides what deciding every round would have (scale-down windows, the idle period)."""

from __future__ import annotations

from collections.abc import Sequence

from autoscaler import Autoscaler, AutoscalerSettings, ModelLoad, PartitionLoad, ServiceStats


class Backend:
    def __init__(self, **replicas: int) -> None:
        self.counts = dict(replicas)

    async def replicas(self, model: str) -> int:
        return self.counts.get(model, 0)

    async def scale(self, model: str, replicas: int) -> None:
        self.counts[model] = replicas


class Loads:
    """The same `ModelLoad` object per model until ``set`` changes it (as the collector does for a quiet model)."""

    def __init__(self) -> None:
        self.loads: dict[str, ModelLoad] = {}

    def set(self, model: str, *, log_end: int = 0, lag: int = 0, arrival: float = 0.0) -> None:
        parts = (
            PartitionLoad(0, log_end, log_end - lag, lag, arrival_rate=arrival, rates_known=True),
            PartitionLoad(1, 0, 0, 0, rates_known=True),
        )
        self.loads[model] = ModelLoad(model, f"t.{model}", f"g.{model}", parts, at=0.0, rates_known=True)

    async def collect(self, models: Sequence[str]) -> dict[str, ModelLoad]:
        return {m: self.loads[m] for m in models}


class NoStats:
    async def read(self, model: str) -> ServiceStats:
        return ServiceStats()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _autoscaler(backend: Backend, loads: Loads, clock: Clock, **settings: float) -> Autoscaler:
    models = tuple(loads.loads)
    return Autoscaler(AutoscalerSettings(models=models, **settings), backend, loads, NoStats(), clock=clock)  # type: ignore[arg-type]


async def test_idle_models_are_not_decided_again_until_one_moves() -> None:
    loads, clock = Loads(), Clock()
    for i in range(50):
        loads.set(f"m{i}")
    scaler = _autoscaler(Backend(), loads, clock)
    assert len(await scaler.step()) == 50 and scaler.last_round.decided == 50
    for _ in range(3):
        clock.t += 1
        decisions = await scaler.step()
        assert len(decisions) == 50 and scaler.last_round.decided == 0  # every model kept its decision
    loads.set("m7", log_end=3, lag=3)  # new records for one model at zero
    clock.t += 1
    decisions = await scaler.step()
    assert scaler.last_round.decided == 1
    assert [(d.model, d.desired) for d in decisions if d.desired] == [("m7", 1)]


async def test_a_kept_decision_counts_in_the_scale_down_window() -> None:
    """2 workers wanted at t=0, nothing changes until t=40, then 1 is enough: the window of the last 30 s still
    holds the 2 of the rounds that kept the decision, so the scale-down waits (deciding every round does too)."""
    loads, clock = Loads(), Clock()
    loads.set("m", log_end=100, arrival=30.0)  # 30/s at 20/s per worker: 2 workers
    backend = Backend(m=2)
    scaler = _autoscaler(backend, loads, clock, scale_down_stabilization_s=30.0, idle_to_zero_s=3600.0)
    assert [d.desired for d in await scaler.step()] == [2]
    for _ in range(40):
        clock.t += 1
        await scaler.step()
        assert scaler.last_round.decided == 0
    loads.set("m", log_end=100, arrival=10.0)  # 1 worker is enough now
    clock.t += 1
    (decision,) = await scaler.step()
    assert decision.desired == 2 and "scale-down held" in decision.reason, decision.reason
    clock.t += 31
    (decision,) = await scaler.step()
    assert decision.desired == 1 and backend.counts["m"] == 1


async def test_a_kept_decision_ends_with_the_idle_period() -> None:
    loads, clock = Loads(), Clock()
    loads.set("m", log_end=5)
    backend = Backend(m=1)
    scaler = _autoscaler(backend, loads, clock, idle_to_zero_s=10.0)
    await scaler.step()
    for _ in range(9):
        clock.t += 1
        (decision,) = await scaler.step()
        assert decision.desired == 1 and scaler.last_round.decided == 0
    clock.t += 1  # the idle period is over: decided again, to zero
    (decision,) = await scaler.step()
    assert scaler.last_round.decided == 1 and decision.desired == 0 and backend.counts["m"] == 0
