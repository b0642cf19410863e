"""The scaling policy: desired workers per model from measured load. Pure and deterministic.

No I/O and no clock of its own: every call gets the measurements and ``now`` (monotonic seconds), so a
table of inputs always yields the same decisions. The only state is per model: the recent
recommendations (stabilization windows, as in the Kubernetes HPA) and when the model last saw work.

Rules, in order:

1. A pinned model (manual override) gets exactly its pinned count; nothing else applies.
2. Base recommendation, in workers::

       ceil(lag / (throughput x target_drain_s) + arrival_rate / throughput)

   where ``throughput`` is the measured per-worker completion rate, or the configured default until
   workers publish one. The first term drains the backlog within the target time; the second keeps up
   with new arrivals. Lag and arrivals count Kafka records while throughput counts requests: where the
   workers measure more than one request per record (the gateway coalesces sync requests), the sum is
   multiplied by that ratio. A model at zero has no measured ratio (a wake is decided as without it).
3. Extra triggers can only raise it: p95 latency over its target and GPU utilization over its target
   (both proportional, like the HPA: ``ceil(current x measured / target)``), and requests buffered in
   workers over the per-worker queue-depth target; a text-generation model whose workers run at least
   ``SEQUENCES_BUSY`` of their sequence cap (``FLEET_WORKER_MAX_SEQUENCES``) while more requests wait in Kafka
   (lag over the sequences in flight) is busy: one worker more.
4. Zero: a model at zero wakes (0 -> >=1) as soon as lag reaches ``activation_lag``; below it, it stays
   at zero. A running model goes to zero only after ``idle_to_zero_s`` without arrivals and without lag;
   until then it keeps at least one worker.
5. ``min_replicas``/``max_replicas``, then the topic's partition count caps the result (a worker beyond
   it would own no partition); the reason says when the cap binds.
6. Scale up at once (or to the lowest recommendation of ``scale_up_stabilization_s``); scale down only
   to the highest recommendation of the last ``scale_down_stabilization_s`` seconds. Scale to zero after
   the idle period is not delayed further.

Settled decisions: `ScalingPolicy.settled_until` says until when deciding again with the same inputs would
give the same decision (a model without lag whose workers match its recommendation, until its idle period
ends), so a control loop may skip such a model while its inputs stay; `ScalingPolicy.held` then records the
recommendation of the skipped rounds in its windows, as deciding would have.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from .settings import AutoscalerSettings
from .signals import ModelLoad, ServiceStats

#: Slack for ``ceil`` so that 2.0000000001 (float noise) does not become 3.
_EPSILON = 1e-9
#: Share of the workers' sequence cap in flight from which a text-generation model counts as busy.
SEQUENCES_BUSY = 0.9

InputValue = float | int | str | bool | None


class Direction(StrEnum):
    """Which way a decision moves a model."""

    UP = "up"
    DOWN = "down"
    NONE = "none"


@dataclass(frozen=True)
class Decision:
    """Desired workers for one model, with the reason and the inputs that led to it."""

    model: str
    current: int
    desired: int
    reason: str
    inputs: dict[str, InputValue]
    capped_by_partitions: bool = False
    pinned: bool = False

    @property
    def direction(self) -> Direction:
        """Up, down or none, comparing desired with current."""
        if self.desired > self.current:
            return Direction.UP
        if self.desired < self.current:
            return Direction.DOWN
        return Direction.NONE

    @property
    def work(self) -> float:
        """The measured work, in workers: the raw recommendation (the backlog to drain plus the arrivals, over one
        worker's throughput) before rounding, limits and triggers; for a pinned model, its arrivals over that
        throughput. Placement weighs a model's replicas by it."""
        raw = self.inputs.get("raw_replicas")
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return max(0.0, float(raw))
        arrival, throughput = self.inputs.get("arrival_rate"), self.inputs.get("per_replica_throughput")
        per_record = self.inputs.get("requests_per_record", 1.0)
        if not isinstance(per_record, int | float) or isinstance(per_record, bool):
            per_record = 1.0
        if isinstance(arrival, int | float) and isinstance(throughput, int | float) and throughput > 0:
            return max(0.0, float(arrival) * float(per_record) / float(throughput))
        return 0.0

    def why(self) -> str:
        """One log line: the change, the reason and every input."""
        inputs = " ".join(f"{k}={_fmt(v)}" for k, v in self.inputs.items())
        return f"{self.model}: {self.current} -> {self.desired} ({self.direction}): {self.reason} [{inputs}]"


def _fmt(value: InputValue) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass
class _ModelState:
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    last_active: float | None = None
    last_log_end: int | None = None
    #: Until when the last decision holds while the inputs stay the same (-inf: decide again next round).
    settled_until: float = -math.inf


class ScalingPolicy:
    """Turns measurements into decisions; keeps only the per-model windows it needs."""

    def __init__(self, settings: AutoscalerSettings) -> None:
        self.settings = settings
        self._states: dict[str, _ModelState] = {}

    def forget(self, model: str) -> None:
        """Drop a model's windows (it was removed from the fleet)."""
        self._states.pop(model, None)

    def settled_until(self, model: str) -> float:
        """Monotonic time until which deciding ``model`` again with the inputs of its last decision would give the
        same decision (-inf when it must be decided again; inf while its inputs alone can change it)."""
        state = self._states.get(model)
        return -math.inf if state is None else state.settled_until

    def held(self, model: str, at: float) -> None:
        """``model`` was not decided again up to ``at`` because its decision was settled: its recommendation of
        those rounds (its workers, unchanged) enters the stabilization windows as deciding would have put it
        (one entry at the last such round is enough: the windows take the lowest or the highest of a span)."""
        state = self._states.get(model)
        if state is None or not state.recommendations:
            return
        last_at, last = state.recommendations[-1]
        if at > last_at:
            state.recommendations.append((at, last))

    def decide(
        self,
        model: str,
        load: ModelLoad,
        stats: ServiceStats,
        current: int,
        now: float,
        *,
        partitions: int | None = None,
        pinned: int | None = None,
        max_replicas: int | None = None,
    ) -> Decision:
        """Desired workers for ``model`` now; ``partitions`` defaults to the load's partition count.

        ``max_replicas``: the model's own cap (its ``max_replicas`` label), below ``settings.max_replicas``.
        """
        s = self.settings
        state = self._states.get(model)
        if state is None:
            # A fresh policy (autoscaler restart) treats the running count as recommended just now, so it
            # does not scale down before a full stabilization window of its own measurements.
            state = self._states[model] = _ModelState()
            state.recommendations.append((now, current))
        state.settled_until = -math.inf
        partitions = load.partition_count if partitions is None else partitions
        lag, arrival = load.lag, load.arrival_rate
        active = lag > 0 or (state.last_log_end is not None and load.log_end != state.last_log_end)
        if active or state.last_active is None:
            state.last_active = now
        state.last_log_end = load.log_end
        idle_for = now - state.last_active
        throughput = stats.per_replica_throughput if stats.per_replica_throughput > 0 else s.default_replica_throughput
        inputs: dict[str, InputValue] = {
            "lag": lag,
            "arrival_rate": arrival,
            "completion_rate": load.completion_rate,
            "per_replica_throughput": throughput,
            "throughput_measured": stats.per_replica_throughput > 0,
            "p95_latency_ms": stats.p95_latency_ms,
            "gpu_utilization": stats.gpu_utilization,
            "queue_depth": stats.queue_depth,
            "sequences": stats.sequences,
            "max_sequences": stats.max_sequences,
            "partitions": partitions,
            "current": current,
            "idle_for_s": round(idle_for, 3),
        }
        # Lag and arrivals count records, throughput requests: with coalesced records, requests per record. Only a
        # model with workers has a current ratio; one at zero wakes as it always did.
        per_record = stats.requests_per_record if current > 0 and stats.requests_per_record > 1.0 else 1.0
        if per_record > 1.0:
            inputs["requests_per_record"] = round(per_record, 3)
        if pinned is not None:
            reason = f"pinned to {pinned} by operator override; autoscaling is off for this model"
            if 0 < partitions < pinned:
                reason += f" (exceeds {partitions} partitions: {pinned - partitions} worker(s) will sit idle)"
            state.recommendations.clear()
            if pinned == current:
                state.settled_until = math.inf
            return Decision(model, current, pinned, reason, inputs, pinned=True)

        raw = lag / (throughput * s.target_drain_s) + arrival / throughput
        formula = (
            f"lag {lag} / ({throughput:.3g}/s x {s.target_drain_s:g}s) + arrival {arrival:.3g}/s / {throughput:.3g}/s"
        )
        if per_record > 1.0:
            raw *= per_record
            formula = f"({formula}) x {per_record:.3g} requests/record"
        desired = max(0, math.ceil(raw - _EPSILON))
        inputs["raw_replicas"] = round(raw, 4)
        reasons = [f"{formula} = {raw:.2f} -> {desired}"]
        desired = self._triggers(desired, current, stats, reasons)
        desired = self._sequences(desired, current, lag, stats, reasons)
        desired, to_zero = self._zero(desired, current, lag, idle_for, reasons)
        desired, capped = self._limits(desired, partitions, reasons, max_replicas)
        final = desired if to_zero and desired == 0 else self._stabilize(state, desired, current, now, reasons)
        if final == desired == current and lag == 0:
            # Settled: with the same inputs only the idle time moves, which matters once the idle period ends.
            idle_left = s.idle_to_zero_s - idle_for
            state.settled_until = now + idle_left if current > 0 and idle_left > 0 else math.inf
        return Decision(model, current, final, "; ".join(reasons), inputs, capped_by_partitions=capped)

    def _triggers(self, desired: int, current: int, stats: ServiceStats, reasons: list[str]) -> int:
        s = self.settings
        if s.latency_p95_target_ms > 0 and current > 0 and stats.p95_latency_ms > s.latency_p95_target_ms:
            wanted = math.ceil(current * stats.p95_latency_ms / s.latency_p95_target_ms - _EPSILON)
            if wanted > desired:
                desired = wanted
                reasons.append(f"p95 {stats.p95_latency_ms:.0f}ms > target {s.latency_p95_target_ms:g}ms -> {wanted}")
        util = stats.gpu_utilization
        if s.gpu_util_target > 0 and current > 0 and util is not None and util > s.gpu_util_target:
            wanted = math.ceil(current * util / s.gpu_util_target - _EPSILON)
            if wanted > desired:
                desired = wanted
                reasons.append(f"GPU utilization {util:.0f}% > target {s.gpu_util_target:g}% -> {wanted}")
        if s.queue_depth_target > 0 and stats.queue_depth > 0:
            wanted = math.ceil(stats.queue_depth / s.queue_depth_target - _EPSILON)
            if wanted > desired:
                desired = wanted
                reasons.append(f"{stats.queue_depth} requests queued in workers / {s.queue_depth_target} -> {wanted}")
        return desired

    def _sequences(self, desired: int, current: int, lag: int, stats: ServiceStats, reasons: list[str]) -> int:
        """A generation model's workers near their sequence cap with requests waiting: one worker more."""
        if current <= 0 or stats.max_sequences <= 0 or lag <= stats.sequences:
            return desired
        if stats.sequences < SEQUENCES_BUSY * stats.max_sequences - _EPSILON or desired > current:
            return desired
        reasons.append(
            f"{stats.sequences}/{stats.max_sequences} sequences in flight and {lag - stats.sequences} waiting "
            f"-> {current + 1}"
        )
        return current + 1

    def _zero(self, desired: int, current: int, lag: int, idle_for: float, reasons: list[str]) -> tuple[int, bool]:
        """Activation from zero and idling to zero; returns (desired, goes straight to zero)."""
        s = self.settings
        if current == 0:
            if lag >= s.activation_lag:
                if desired < 1:
                    desired = 1
                reasons.append(f"activation: lag {lag} >= activation_lag {s.activation_lag}")
            elif desired > 0:
                reasons.append(f"stays at zero: lag {lag} < activation_lag {s.activation_lag}")
                desired = 0
            return desired, False
        if lag == 0 and idle_for >= s.idle_to_zero_s:
            reasons.append(f"idle for {idle_for:.1f}s >= idle_to_zero_s {s.idle_to_zero_s:g}s -> 0")
            return 0, True
        if desired < 1:
            reasons.append(f"idle for {idle_for:.1f}s < idle_to_zero_s {s.idle_to_zero_s:g}s: keep 1")
            desired = 1
        return desired, False

    def _limits(
        self, desired: int, partitions: int, reasons: list[str], model_max: int | None = None
    ) -> tuple[int, bool]:
        s = self.settings
        if desired < s.min_replicas:
            reasons.append(f"raised to min_replicas {s.min_replicas}")
            desired = s.min_replicas
        if desired > s.max_replicas:
            reasons.append(f"limited to max_replicas {s.max_replicas}")
            desired = s.max_replicas
        if model_max is not None and desired > model_max:
            reasons.append(f"limited to the model's max_replicas label {model_max}")
            desired = model_max
        if 0 < partitions < desired:
            reasons.append(
                f"capped at the topic's {partitions} partitions (wanted {desired}; more workers would sit idle)"
            )
            return partitions, True
        return desired, False

    def _stabilize(self, state: _ModelState, desired: int, current: int, now: float, reasons: list[str]) -> int:
        s = self.settings
        window = state.recommendations
        window.append((now, desired))
        horizon = max(s.scale_up_stabilization_s, s.scale_down_stabilization_s)
        while window and window[0][0] < now - horizon:
            window.popleft()
        if desired > current:
            if current == 0 or s.scale_up_stabilization_s <= 0:
                return desired
            lowest = min(r for t, r in window if t >= now - s.scale_up_stabilization_s)
            final = max(current, lowest)
            if final < desired:
                reasons.append(
                    f"scale-up held at {final}: lowest recommendation of the last {s.scale_up_stabilization_s:g}s"
                )
            return final
        if desired < current:
            highest = max(r for t, r in window if t >= now - s.scale_down_stabilization_s)
            final = min(current, highest)
            if final > desired:
                reasons.append(
                    f"scale-down held at {final}: highest recommendation of the last {s.scale_down_stabilization_s:g}s"
                )
            return final
        return desired
