"""The control loop: collect load -> read worker stats -> decide -> log, export and record -> tell the backend.

Everything it talks to is a protocol, so tests inject in-memory fakes and deployments plug in a local
process backend or a Kubernetes one. One round is `Autoscaler.step()`; `start()` runs it every
``interval_s`` in a background task owned by the object.

A round decides again only the models whose inputs (load, service stats, workers, pin, cap) changed since their
last decision, or whose decision was not settled (`ScalingPolicy.settled_until`: lag, a pending change, a held
scale-down, the end of an idle period): an idle model keeps its decision, its metrics and its stored record
without any work, so an idle round costs about the same whatever the model count. The models that have workers
are handed to the collector (``relax``, when it has it) each round: it may probe their quiet partitions less
often, since their workers consume them anyway; a model at zero is measured every round.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.eventloop import AsyncService

from .errors import AutoscalerError, BackendError
from .metrics import AutoscalerMetrics
from .policy import Decision, Direction, ScalingPolicy
from .settings import AutoscalerSettings
from .signals import ModelLoad, ServiceStats

log = logging.getLogger("fleet.autoscaler")


class Backend(Protocol):
    """Runs workers: reports and changes how many serve each model."""

    async def replicas(self, model: str) -> int:
        """Workers of ``model`` running or starting now."""
        ...

    async def scale(self, model: str, replicas: int) -> None:
        """Make ``model`` have ``replicas`` workers (stopping ones drain before exiting)."""
        ...


class LoadSource(Protocol):
    """Measures Kafka load (`LagCollector` is one)."""

    async def collect(self, models: Sequence[str]) -> dict[str, ModelLoad]:
        """The load of each model."""
        ...


class StatsSource(Protocol):
    """Worker service stats per model (`ServiceStatsReader` is one)."""

    async def read(self, model: str) -> ServiceStats:
        """Aggregated stats of ``model``."""
        ...


class PinSource(Protocol):
    """Runtime manual overrides (`PinStore` is one)."""

    async def pins(self) -> dict[str, int]:
        """{model: pinned replicas}."""
        ...


class DecisionSink(Protocol):
    """Where each round's decisions are recorded for operators (`DecisionStore` is one)."""

    async def publish(self, decisions: Sequence[Decision]) -> None:
        """Record the decisions of one round."""
        ...


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


#: The stats of a model whose workers' stats were not read (none of them can matter this round).
_NO_STATS = ServiceStats()

#: What a decision was made from: load, service stats, current workers, pin, cap.
_Inputs = tuple[ModelLoad, ServiceStats, int, int | None, int | None]


@dataclass(frozen=True)
class RoundWork:
    """What one `Autoscaler.step` did (for tests and logs)."""

    #: Models the round covered.
    models: int = 0
    #: Models the policy decided again (the others kept their settled decision: same inputs).
    decided: int = 0


class Autoscaler(AsyncService):
    """Scales the workers of each model with `ScalingPolicy`; ``async with`` runs the loop."""

    def __init__(
        self,
        settings: AutoscalerSettings,
        backend: Backend,
        collector: LoadSource,
        stats: StatsSource,
        *,
        models: Callable[[], Awaitable[Sequence[str]]] | None = None,
        pins: PinSource | None = None,
        limits: Callable[[Sequence[str]], Awaitable[Mapping[str, int]]] | None = None,
        sink: DecisionSink | None = None,
        metrics: AutoscalerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        may_act: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._may_act = may_act  # False while another autoscaler leads (`autoscaler.leader`)
        self.backend = backend
        self.policy = ScalingPolicy(settings)
        self.metrics = metrics or AutoscalerMetrics()
        self._collector = collector
        self._stats = stats
        self._models = models or self._configured_models
        self._pins = pins
        self._limits = limits  # model -> its own max replicas (the max_replicas label)
        self._sink = sink
        self._clock = clock
        self._state = _State.NEW
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._crash: BaseException | None = None
        #: The latest decision of each model.
        self.decisions: dict[str, Decision] = {}
        #: Models whose workers reported stats last round (their stats are read while they do).
        self._reporting: set[str] = set()
        #: Models that had workers last round (the collector may probe their quiet partitions less often).
        self._served: frozenset[str] = frozenset()
        #: The inputs of each model's latest decision, and when it was last kept without deciding again.
        self._inputs: dict[str, _Inputs] = {}
        self._kept_at: dict[str, float] = {}
        self._last_models: list[str] = []
        #: What the last round did.
        self.last_round = RoundWork()

    async def _configured_models(self) -> Sequence[str]:
        return self.settings.models

    async def step(self) -> list[Decision]:
        """One round over every model; failures of one model or source are logged, not raised.

        Nothing happens (no measurement, no decision) while ``may_act`` says another autoscaler leads.
        """
        if self._may_act is not None and not self._may_act():
            return []
        models = list(await self._models())
        if not models:
            return []
        relax = getattr(self._collector, "relax", None)
        if relax is not None:
            relax(self._served)
        try:
            loads = await self._collector.collect(models)
        except AutoscalerError as exc:
            log.warning("autoscaler round skipped: %s", exc)
            self.metrics.errors.labels("*", exc.code).inc()
            return []
        pins = await self._read_pins()
        caps = await self._read_caps(models)
        current: dict[str, int] = {}
        for model in models:
            try:
                current[model] = await self._replicas(model)
            except AutoscalerError as exc:
                log.warning("autoscaling %s failed this round: %s", model, exc)
                self.metrics.errors.labels(model, exc.code).inc()
        self._served = frozenset(m for m, n in current.items() if n > 0)
        stats = await self._read_stats([m for m in current if self._needs_stats(m, loads[m], current[m])])
        if models != self._last_models:
            self._forget_removed(models)
        now = self._clock()
        decisions: list[Decision] = []
        decided = 0
        for model, replicas in current.items():
            inputs: _Inputs = (loads[model], stats.get(model, _NO_STATS), replicas, pins.get(model), caps.get(model))
            previous = self.decisions.get(model)
            if previous is not None and now < self.policy.settled_until(model) and inputs == self._inputs.get(model):
                self._kept_at[model] = now
                decisions.append(previous)
                continue
            kept_at = self._kept_at.pop(model, None)
            if kept_at is not None:
                self.policy.held(model, kept_at)
            decided += 1
            try:
                decision = await self._scale_model(model, *inputs)
            except AutoscalerError as exc:
                log.warning("autoscaling %s failed this round: %s", model, exc)
                self.metrics.errors.labels(model, exc.code).inc()
                self._inputs.pop(model, None)
                continue
            self._inputs[model] = inputs
            decisions.append(decision)
        self.last_round = RoundWork(len(models), decided)
        await self._record(decisions)
        return decisions

    def _forget_removed(self, models: Sequence[str]) -> None:
        """Drop what is kept of models no longer scaled."""
        present = set(models)
        for model in [m for m in self.decisions if m not in present]:
            del self.decisions[model]
            self.policy.forget(model)
            self._inputs.pop(model, None)
            self._kept_at.pop(model, None)
        self._last_models = list(models)

    def _needs_stats(self, model: str, load: ModelLoad, current: int) -> bool:
        """Whether the workers' stats of ``model`` can matter this round: it has workers, work or reporters.
        A model with none of them is skipped (its stats are all zero; the policy would decide the same), so
        idle models cost no stats reads."""
        return (
            current > 0 or load.lag > 0 or load.arrival_rate > 0 or load.completion_rate > 0 or model in self._reporting
        )

    async def _read_stats(self, models: Sequence[str]) -> dict[str, ServiceStats]:
        """Stats of ``models``: in one batch when the source can (``read_many``), else one by one; a model
        whose stats cannot be read gets defaults."""
        stats: dict[str, ServiceStats] = {}
        read_many = getattr(self._stats, "read_many", None)
        if read_many is not None and models:
            try:
                stats = dict(await read_many(models))
            except AutoscalerError as exc:
                log.warning("service stats unavailable, assuming defaults: %s", exc)
        else:
            for model in models:
                try:
                    stats[model] = await self._stats.read(model)
                except AutoscalerError as exc:
                    log.warning("service stats of %s unavailable, assuming defaults: %s", model, exc)
        self._reporting = {m for m, s in stats.items() if s.replicas_reporting > 0}
        return stats

    async def _record(self, decisions: Sequence[Decision]) -> None:
        if self._sink is None or not decisions:
            return
        try:
            await self._sink.publish(decisions)
        except AutoscalerError as exc:  # status output goes stale; scaling goes on
            log.warning("decisions not recorded: %s", exc)
            self.metrics.errors.labels("*", exc.code).inc()

    async def _read_pins(self) -> Mapping[str, int]:
        pins = self.settings.pins()
        if self._pins is not None:
            try:
                pins.update(await self._pins.pins())
            except AutoscalerError as exc:
                log.warning("runtime pins unreadable, using static ones: %s", exc)
        return pins

    async def _read_caps(self, models: Sequence[str]) -> Mapping[str, int]:
        if self._limits is None:
            return {}
        try:
            return await self._limits(models)
        except AutoscalerError as exc:
            log.warning("per-model replica caps unreadable this round: %s", exc)
            return {}

    async def _replicas(self, model: str) -> int:
        try:
            return await self.backend.replicas(model)
        except AutoscalerError:
            raise
        except Exception as exc:
            raise BackendError(f"replicas({model!r}) failed: {exc!r}") from exc

    async def _scale_model(
        self,
        model: str,
        load: ModelLoad,
        stats: ServiceStats,
        current: int,
        pinned: int | None,
        cap: int | None = None,
    ) -> Decision:
        decision = self.policy.decide(model, load, stats, current, self._clock(), pinned=pinned, max_replicas=cap)
        self.decisions[model] = decision
        self.metrics.observe(load, stats, decision)
        if decision.direction is Direction.NONE:
            if log.isEnabledFor(logging.DEBUG):  # why() formats every input: not for each model every round
                log.debug("%s", decision.why())
            return decision
        log.info("scale %s", decision.why())
        try:
            await self.backend.scale(model, decision.desired)
        except AutoscalerError:
            raise
        except Exception as exc:
            raise BackendError(f"scale({model!r}, {decision.desired}) failed: {exc!r}") from exc
        return decision

    async def start(self) -> None:
        """Start the control loop in the background."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"Autoscaler cannot start from state {self._state.value}")
        self._state = _State.RUNNING
        self._task = asyncio.create_task(self._control_routine(), name="autoscaler-control")

    async def stop(self) -> None:
        """Stop the loop after the round in progress; idempotent. Raises if the loop had crashed."""
        self._state = _State.STOPPED
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        self.check_errors()

    def check_errors(self) -> None:
        """Raise the error that ended the control loop, if any."""
        if self._crash is not None:
            raise AutoscalerError(f"autoscaler loop crashed: {self._crash!r}") from self._crash

    async def _control_routine(self) -> None:
        try:
            while not self._closing.is_set():
                started = self._clock()
                await self.step()
                pause = max(0.0, self.settings.interval_s - (self._clock() - started))
                # Wait on the closing event rather than sleeping, so stop() is not delayed by the interval.
                try:
                    await asyncio.wait_for(self._closing.wait(), pause)
                except TimeoutError:
                    pass
        except Exception as exc:  # surfaced by stop()/check_errors(), never swallowed
            log.exception("autoscaler loop crashed")
            self._crash = exc
