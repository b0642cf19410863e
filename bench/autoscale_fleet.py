"""The fleet under test in the autoscaling benchmark: model, embedded stack, autoscaler, sampler, load.

`harness` starts, for one scenario, a fresh `fleet.local.stack.LocalStack` (local broker + Redis + gateway, no
fixed workers), registers the benchmark model on a topic of `PARTITIONS` partitions, runs the autoscaler in
this process (`AutoscalerService` with a `RecordingBackend`, i.e. local worker processes whose scale calls
are noted) on fast settings, samples the fleet every `SAMPLE_S` seconds and holds an open-loop load
generator. Everything it started is stopped when the ``async with`` block ends, on error and on Ctrl-C too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autoscaler import AutoscalerSettings
from autoscaler.backends import LocalProcessBackend
from autoscaler.backends.local import WorkerPhase
from autoscaler.policy import Decision
from autoscaler.service import AutoscalerService
from bench.autoscale_load import OpenLoop
from bench.autoscale_report import Sample, WorkerMilestones, parse_worker_log, since
from fleet.demo.modelgen import mlp_onnx, random_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, FleetSettings, KafkaSettings, ModelRegistry, Names, RedisSettings
from schemas.topics import ensure_model_topics

MODEL = "deep"
FEATURES = 16
ROWS_PER_REQUEST = 128
LAYERS = [FEATURES] + [512] * 64 + [8]
BATCH_REQUESTS = 4
PARTITIONS = 4
#: The model is CPU-bound with one intra-op thread per worker: workers beyond the cores add no capacity, only
#: contention (on a GPU host each worker would own a device instead), so the fleet is capped at the core count.
MAX_REPLICAS = max(2, min(PARTITIONS, os.cpu_count() or 2))
INTERVAL_S = 0.5
STABILIZATION_S = 10.0
IDLE_TO_ZERO_S = 15.0
SAMPLE_S = 0.5
#: Consumer-group timings that suit the local broker, and worker knobs, handed to every worker.
KAFKA = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 10}

WORKER_ENV = {
    "FLEET_WORKER_INTRA_OP_THREADS": "1",
    "FLEET_WORKER_HEARTBEAT_INTERVAL_S": "1.0",
    # A round fetches at most this many records and commits once at its end; the default (512) would be
    # ~10 s of work for this model, so rounds (and the rebalances that wait for them) would be that long.
    "FLEET_WORKER_MAX_FETCH_RECORDS": str(2 * BATCH_REQUESTS),
}


@dataclass(frozen=True)
class ModelKit:
    """The benchmark model: its artifact, input pool, expected outputs and measured in-process figures."""

    path: Path
    inputs: list[npt.NDArray[np.float32]]
    expected: list[npt.NDArray[np.float32]]
    #: Requests/s one worker thread completes at full batches (ONNX Runtime alone, 1 thread).
    capacity: float
    #: Seconds ONNX Runtime takes to load the artifact (in this process).
    load_s: float


def build_model(directory: Path) -> ModelKit:
    """Write the model and measure it with ONNX Runtime (1 intra-op thread, like a worker)."""
    import onnxruntime as ort

    path = mlp_onnx(directory / f"{MODEL}.onnx", random_mlp(LAYERS, seed=4))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    began = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - began
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((ROWS_PER_REQUEST, FEATURES)).astype(np.float32) for _ in range(16)]
    expected = [np.asarray(session.run(None, {"x": x})[0], dtype=np.float32) for x in inputs]
    batch = np.concatenate(inputs[:BATCH_REQUESTS])
    session.run(None, {"x": batch})
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < 2.0:
        session.run(None, {"x": batch})
        calls += 1
    capacity = calls * BATCH_REQUESTS / (time.perf_counter() - began)
    return ModelKit(path, inputs, expected, capacity, load_s)


@dataclass(frozen=True)
class ScaleEvent:
    """One backend scale call that changed the worker count."""

    t: float
    wall: float
    before: int
    after: int
    lag: int
    pinned: bool
    spawned: list[str]


class RecordingBackend(LocalProcessBackend):
    """The local process backend, noting when each scale call happened and which workers it spawned."""

    def __init__(self, *args: Any, t0: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.t0 = t0
        self.events: list[ScaleEvent] = []
        self.spawned_at: dict[str, float] = {}
        self.decision_of: Callable[[str], Decision | None] = lambda _model: None

    async def scale(self, model: str, replicas: int) -> None:
        """Scale (see LocalProcessBackend.scale), recording the event."""
        before_ids = {w.worker_id for w in self.workers(model)}
        before = await self.replicas(model)
        wall, mono = time.time(), time.monotonic()
        await super().scale(model, replicas)
        spawned = [w.worker_id for w in self.workers(model) if w.worker_id not in before_ids]
        for worker_id in spawned:
            self.spawned_at[worker_id] = wall
        decision = self.decision_of(model)
        lag = decision.inputs.get("lag", 0) if decision is not None else 0
        pinned = decision.pinned if decision is not None else False
        event = ScaleEvent(round(mono - self.t0, 3), wall, before, replicas, int(lag or 0), pinned, spawned)
        self.events.append(event)
        print(f"  [{event.t:6.1f}s] scale {before} -> {replicas} (lag {event.lag}{', pinned' if pinned else ''})")


@dataclass
class Harness:
    """One scenario's fleet: stack, model, autoscaler, sampler, load generator and a Redis client."""

    name: str
    kit: ModelKit
    home: Path
    min_replicas: int
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)
    samples: list[Sample] = field(default_factory=list)
    heartbeat: dict[str, str] = field(default_factory=dict)
    stack: LocalStack | None = None
    service: AutoscalerService | None = None
    backend: RecordingBackend | None = None
    load: OpenLoop | None = None
    redis: Any = None
    names: Names = field(default_factory=lambda: Names("fleet"))

    @property
    def gateway_id(self) -> str:
        """Id of the gateway (its reply stream is ``names.reply_stream(gateway_id)``)."""
        return f"bench-{self.name}"

    def now(self) -> float:
        """Seconds since the scenario began."""
        return time.monotonic() - self.t0

    def at(self, wall: float | None) -> float | None:
        """A wall-clock instant as seconds since the scenario began."""
        return None if wall is None else round(wall - self.wall0, 3)

    def settings(self, fleet: FleetSettings) -> AutoscalerSettings:
        """Fast autoscaler settings for the benchmark."""
        return AutoscalerSettings(
            models=(MODEL,),
            interval_s=INTERVAL_S,
            target_drain_s=5.0,
            min_replicas=self.min_replicas,
            max_replicas=MAX_REPLICAS,
            default_replica_throughput=round(self.kit.capacity, 1),
            scale_down_stabilization_s=STABILIZATION_S,
            idle_to_zero_s=IDLE_TO_ZERO_S,
            smoothing_half_life_s=2.0,
            drain_timeout_s=30.0,
            ready_timeout_s=60.0,
            gpus=0,
            fleet=fleet,
        )

    async def start(self, exits: contextlib.AsyncExitStack, timeout_s: float) -> None:
        """Start stack, model, autoscaler, sampler and load generator; ``exits`` stops them in reverse."""
        env = dict(os.environ) | {"FLEET_GATEWAY_ID": self.gateway_id}
        self.stack = await exits.enter_async_context(
            LocalStack(StackConfig(home=self.home, workers=0, models=(), env=env))
        )
        fleet = FleetSettings(
            namespace=self.stack.config.namespace,
            kafka=KafkaSettings(
                bootstrap=self.stack.kafka_bootstrap,
                partitions=PARTITIONS,
                session_timeout_ms=KAFKA["session_timeout_ms"],
                heartbeat_interval_ms=KAFKA["heartbeat_interval_ms"],
                fetch_max_wait_ms=KAFKA["fetch_max_wait_ms"],
            ),
            redis=RedisSettings(url=self.stack.redis_url),
        )
        self.names = Names(fleet.namespace)
        self.redis = fleet.redis.client()
        exits.push_async_callback(self.redis.aclose)
        record = build_record(MODEL, "1", self.kit.path, batching=BatchingConfig(BATCH_REQUESTS * ROWS_PER_REQUEST))
        await ModelRegistry(self.redis, self.names).register(record)
        await ensure_model_topics(fleet.kafka, self.names, MODEL, PARTITIONS)
        self.backend = RecordingBackend(
            fleet, log_dir=self.home / "workers", extra_env=WORKER_ENV, gpu_count=0, t0=self.t0, drain_timeout_s=30.0
        )
        self.service = await exits.enter_async_context(AutoscalerService(self.settings(fleet), backend=self.backend))
        autoscaler = self.service.autoscaler
        assert autoscaler is not None
        self.backend.decision_of = autoscaler.decisions.get
        self.load = await exits.enter_async_context(
            OpenLoop(self.stack.url, MODEL, self.kit.inputs, self.kit.expected, prefix=self.name, timeout_s=timeout_s)
        )
        sampler = asyncio.create_task(self._sample_routine(), name="sampler")

        async def stop_sampler() -> None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)

        exits.push_async_callback(stop_sampler)

    async def _sample_routine(self) -> None:
        assert self.service is not None and self.backend is not None and self.load is not None
        autoscaler, backend, load = self.service.autoscaler, self.backend, self.load
        assert autoscaler is not None
        while True:
            decision = autoscaler.decisions.get(MODEL)
            inputs = decision.inputs if decision is not None else {}
            workers = backend.workers(MODEL)
            raw = float(inputs.get("raw_replicas", 0.0) or 0.0)
            recommended = min(MAX_REPLICAS, max(self.min_replicas, math.ceil(raw - 1e-9)))
            sample = Sample(
                t=round(self.now(), 3),
                desired=decision.desired if decision is not None else 0,
                recommended=recommended,
                actual=sum(1 for w in workers if w.phase is not WorkerPhase.DRAINING),
                ready=sum(1 for w in workers if w.phase is WorkerPhase.READY),
                draining=sum(1 for w in workers if w.phase is WorkerPhase.DRAINING),
                lag=int(inputs.get("lag", 0) or 0),
                arrival_rate=round(float(inputs.get("arrival_rate", 0.0) or 0.0), 2),
                completion_rate=round(float(inputs.get("completion_rate", 0.0) or 0.0), 2),
                sent=load.sent,
                answered=load.answered,
                failed=load.failed,
                in_flight=load.in_flight,
            )
            self.samples.append(sample)
            await self._poll_heartbeats()
            if len(self.samples) % 4 == 0:
                self._report(sample)
            await asyncio.sleep(SAMPLE_S)

    def _report(self, s: Sample) -> None:
        window = [x for x in self.samples if s.t - x.t <= 2.0]
        span = s.t - window[0].t
        answered = (s.answered - window[0].answered) / span if span > 0 else 0.0
        sent = (s.sent - window[0].sent) / span if span > 0 else 0.0
        print(
            f"  t={s.t:6.1f}s desired {s.desired} actual {s.actual} ready {s.ready} draining {s.draining} "
            f"lag {s.lag:5d} sent {sent:5.1f}/s answered {answered:5.1f}/s in flight {s.in_flight:4d} "
            f"failed {s.failed}",
            flush=True,
        )

    async def _poll_heartbeats(self) -> None:
        assert self.backend is not None
        ids = [w for w in self.backend.spawned_at if self.heartbeat.get(w) != "stopped"]
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hget(self.names.worker_key(worker_id), "state")
            states = await pipe.execute()
        for worker_id, state in zip(ids, states, strict=True):
            if state is not None:
                self.heartbeat[worker_id] = state.decode()

    async def until(self, check: Callable[[Sample], bool], timeout_s: float) -> bool:
        """Wait until a new sample satisfies ``check``; False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.samples)
        while time.monotonic() < deadline:
            if len(self.samples) > seen and check(self.samples[-1]):
                return True
            await asyncio.sleep(0.05)
        return False

    def milestones(self, worker_id: str) -> WorkerMilestones:
        """What the worker's log says about its start and stop."""
        assert self.backend is not None
        try:
            return parse_worker_log((self.backend.log_dir / f"{worker_id}.log").read_text(errors="replace"))
        except OSError:
            return WorkerMilestones()

    def first_answers(self) -> dict[str, float]:
        """Epoch seconds at which each worker's first correct answer reached the client.

        Measured at the client (the ``worker`` response parameter), not from the gateway's reply stream: the
        gateway trims that stream as it reads it.
        """
        assert self.load is not None
        first: dict[str, float] = {}
        for outcome in self.load.outcomes:
            if outcome.correct and outcome.worker:
                first[outcome.worker] = min(outcome.answered_wall, first.get(outcome.worker, outcome.answered_wall))
        return first

    def worker_detail(self, worker_id: str, first_answer: dict[str, float]) -> dict[str, Any]:
        """Start-up milestones of one worker, in seconds since the scenario began (and the spans)."""
        assert self.backend is not None
        m = self.milestones(worker_id)
        spawn = self.backend.spawned_at.get(worker_id)
        return {
            "worker": worker_id,
            "spawned_t": self.at(spawn),
            "first_log_t": self.at(m.first_log),
            "loaded_t": self.at(m.loaded),
            "join_start_t": self.at(m.join_start),
            "assigned_t": self.at(m.assigned),
            "first_answer_t": self.at(first_answer.get(worker_id)),
            "spawn_to_assigned_s": since(m.assigned, spawn),
            "group_join_pause_s": since(m.assigned, m.join_start),
            "spawn_to_loaded_s": since(m.loaded, spawn),
            "assignments": [(self.at(at), parts) for at, parts in m.assignments],
        }


@contextlib.asynccontextmanager
async def harness(
    name: str, kit: ModelKit, root: Path, *, min_replicas: int, timeout_s: float = 30.0
) -> AsyncIterator[Harness]:
    """A started `Harness`; everything it started is stopped on exit (also on error or Ctrl-C)."""
    h = Harness(name, kit, root / name, min_replicas)
    async with contextlib.AsyncExitStack() as exits:
        await h.start(exits, timeout_s)
        yield h


async def wait_ready(h: Harness, count: int, timeout_s: float = 60.0) -> None:
    """Wait for ``count`` ready workers."""
    assert h.backend is not None
    await h.backend.wait_ready(MODEL, count, timeout_s)
