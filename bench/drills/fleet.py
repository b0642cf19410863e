"""The fleet every drill runs on (real processes on this machine) and the closed-loop load it serves."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from fleet.demo.modelgen import tiny_mlp
from fleet.local.cluster import LocalCluster
from fleet.local.heartbeats import read_workers
from fleet.local.procs import ServiceProcess
from fleet.local.servers import LocalBroker, LocalRedis, free_port, wait_for_port
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    FleetSettings,
    KafkaSettings,
    ModelRegistry,
    Names,
    RedisSettings,
)
from schemas.topics import ensure_model_topics

MODEL = "tiny"
PARTITIONS = 4
NAMESPACE = "drill"
#: Consumer-group timings for the local broker (a SIGKILLed worker's partitions move after the session timeout).
KAFKA_ENV = {"FLEET_KAFKA_SESSION_TIMEOUT_MS": "2000", "FLEET_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}
REQUEST_TIMEOUT_MS = 30_000


@dataclass
class Outcome:
    """One HTTP request as the client saw it."""

    request_id: str
    sent: float  # monotonic
    done: float = 0.0
    status: int = 0  # 0: no HTTP answer (connection refused or cut, client timeout)
    code: str = ""  # error code of a non-200 answer, or the transport error's type
    correct: bool = False

    @property
    def latency_s(self) -> float:
        return self.done - self.sent


@dataclass
class DrillFleet:
    """Broker, Redis, one gateway and worker processes for one drill."""

    root: Path
    workers: int = 2
    persistent_redis: bool = False
    #: Writes the served model's ONNX file at the given path (the tiny MLP unless a drill needs a slower one).
    model: Callable[[Path], Path] = tiny_mlp
    batching: BatchingConfig = field(default_factory=lambda: BatchingConfig(64, 2))
    #: Extra environment of the gateway process (its limits, for the drills that push them).
    gateway_env: dict[str, str] = field(default_factory=dict)
    #: A Redis Cluster to run on instead of one Valkey server (started and stopped with the fleet).
    redis_cluster: LocalCluster | None = None
    broker: LocalBroker = field(init=False)
    redis_server: LocalRedis = field(init=False)
    gateway: ServiceProcess | None = None
    autoscaler: ServiceProcess | None = None
    worker_procs: list[ServiceProcess] = field(default_factory=list)
    url: str = ""
    gateway_port: int = 0
    inputs: list[npt.NDArray[np.float32]] = field(default_factory=list)
    expected: list[npt.NDArray[np.float32]] = field(default_factory=list)
    _spawned: int = 0

    def __post_init__(self) -> None:
        logs = self.root / "logs"
        self.broker = LocalBroker(log_dir=logs)
        # persistent: the local stack's durable default (an append-only file, fsynced before each answer)
        data_dir = self.root / "redis-data" if self.persistent_redis else None
        self.redis_server = LocalRedis(log_dir=logs, data_dir=data_dir)

    @property
    def settings(self) -> FleetSettings:
        return FleetSettings(
            namespace=NAMESPACE,
            kafka=KafkaSettings(
                bootstrap=self.broker.bootstrap,
                partitions=PARTITIONS,
                session_timeout_ms=2000,
                heartbeat_interval_ms=500,
            ),
            redis=RedisSettings(url=self.redis_url),
        )

    @property
    def redis_url(self) -> str:
        """The URL of the fleet's Redis: the cluster's (``redis+cluster://``) when it runs on one."""
        return self.redis_cluster.url if self.redis_cluster is not None else self.redis_server.url

    @property
    def names(self) -> Names:
        return Names(NAMESPACE)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **KAFKA_ENV,
            "FLEET_NAMESPACE": NAMESPACE,
            "FLEET_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "FLEET_REDIS_URL": self.redis_url,
            "FLEET_EVENT_LOOP": "asyncio",
            "PYTHONUNBUFFERED": "1",
        }

    async def start(self) -> None:
        self.broker.start()
        if self.redis_cluster is not None:
            await asyncio.to_thread(self.redis_cluster.start)
        else:
            self.redis_server.start()
        path = self.model(self.root / "model.onnx")
        self._expected_outputs(path)
        redis = self.settings.redis.client()
        try:
            record = build_record(MODEL, "1", path, batching=self.batching)
            await ModelRegistry(redis, self.names).register(record)
        finally:
            await redis.aclose()
        await ensure_model_topics(self.settings.kafka, self.names, MODEL, PARTITIONS)
        self.gateway_port = free_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        await self.start_gateway()
        for _ in range(self.workers):
            self.spawn_worker()
        await self.wait_workers_ready(self.workers)

    def start_autoscaler(self, env: dict[str, str]) -> ServiceProcess:
        """Start an autoscaler process (local backend: the workers it runs are its children) with ``env`` added."""
        logs = self.root / "logs"
        self.autoscaler = ServiceProcess(
            "autoscaler",
            [sys.executable, "-m", "autoscaler"],
            self.env() | {"FLEET_AUTOSCALER_BACKEND": "local", "FLEET_AUTOSCALER_LOG_DIR": str(logs)} | env,
            logs / "autoscaler.log",
        )
        self.autoscaler.start()
        return self.autoscaler

    async def start_gateway(self) -> ServiceProcess:
        """Start the gateway process (again, after a kill) on the fleet's port; wait until it listens."""
        self.gateway = ServiceProcess(
            "gateway",
            [sys.executable, "-m", "gateway"],
            self.env()
            | self.gateway_env
            # a free gRPC port: the default (8001) may be another stack's on a shared machine
            | {"FLEET_GATEWAY_PORT": str(self.gateway_port), "FLEET_GATEWAY_ID": "drill-gw"}
            | {"FLEET_GATEWAY_GRPC_PORT": self.gateway_env.get("FLEET_GATEWAY_GRPC_PORT", str(free_port()))},
            self.root / "logs" / "gateway.log",
        )
        self.gateway.start()
        await asyncio.to_thread(wait_for_port, self.gateway_port, 30.0)
        return self.gateway

    def _expected_outputs(self, path: Path) -> None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(7)
        self.inputs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(32)]
        self.expected = [np.asarray(session.run(None, {"x": x})[0], np.float32) for x in self.inputs]

    def spawn_worker(self) -> ServiceProcess:
        self._spawned += 1
        worker_id = f"drill-w{self._spawned}"
        env = self.env() | {"FLEET_WORKER_MODELS": MODEL, "FLEET_WORKER_ID": worker_id, "FLEET_WORKER_DEVICE": "cpu"}
        proc = ServiceProcess(
            worker_id, [sys.executable, "-m", "workers"], env, self.root / "logs" / f"{worker_id}.log"
        )
        proc.start()
        self.worker_procs.append(proc)
        return proc

    async def wait_workers_ready(self, count: int, timeout_s: float = 60.0) -> None:
        redis = self.settings.redis.client()
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                alive = {p.name for p in self.worker_procs if p.running}
                views = await read_workers(redis, self.names)
                if sum(1 for v in views if v.id in alive and v.state == "ready") >= count:
                    return
                await asyncio.sleep(0.2)
        finally:
            await redis.aclose()
        raise RuntimeError(f"{count} workers not ready after {timeout_s:.0f} s; logs in {self.root / 'logs'}")

    async def stop(self) -> None:
        procs = [p for p in (self.gateway, self.autoscaler, *self.worker_procs) if p is not None]
        await asyncio.gather(*(p.stop(15.0) for p in procs))
        self.redis_server.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        self.broker.stop()


class Load:
    """Closed-loop HTTP load: ``concurrency`` tasks, each sending the next request when one is answered."""

    def __init__(
        self,
        fleet: DrillFleet,
        concurrency: int,
        prefix: str,
        *,
        timeout_ms: int = REQUEST_TIMEOUT_MS,
        connections: int | None = None,
    ) -> None:
        self.fleet = fleet
        self.concurrency = concurrency
        self.prefix = prefix
        self.timeout_ms = timeout_ms
        self.connections = connections if connections is not None else concurrency + 4
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.connections))
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()

    async def finish(self, timeout_s: float = 60.0) -> None:
        """Stop sending; wait for the requests in flight to get their answers."""
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self, lane: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            outcome = await self.one(f"{self.prefix}-{lane}-{n}", n % len(self.fleet.inputs))
            if outcome.status != 200:
                await asyncio.sleep(0.05)  # a failing fleet is not hammered in a tight loop

    async def one(self, request_id: str, which: int) -> Outcome:
        """Send one infer request and record its outcome."""
        assert self._session is not None
        x = self.fleet.inputs[which]
        body = {
            "id": request_id,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "parameters": {"timeout_ms": self.timeout_ms},
        }
        outcome = Outcome(request_id, time.monotonic())
        self.outcomes.append(outcome)
        url = f"{self.fleet.url}/v2/models/{MODEL}/infer"
        try:
            limit = aiohttp.ClientTimeout(total=self.timeout_ms / 1000 + 5)
            async with self._session.post(url, json=body, timeout=limit) as response:
                doc = await response.json(content_type=None)
                outcome.status = response.status
            if outcome.status == 200:
                y = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
                outcome.correct = doc.get("id") == request_id and bool(
                    np.allclose(y, self.fleet.expected[which], rtol=1e-4, atol=1e-5)
                )
            else:
                outcome.code = str(doc.get("code", "")) if isinstance(doc, dict) else ""
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError) as exc:
            outcome.code = type(exc).__name__
        finally:
            outcome.done = time.monotonic()
        return outcome


def tally(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts of a load's outcomes (pure)."""
    ids = Counter(o.request_id for o in outcomes)
    ok = [o for o in outcomes if o.status == 200]
    return {
        "sent": len(outcomes),
        "answered_ok": sum(1 for o in ok if o.correct),
        "wrong": sum(1 for o in ok if not o.correct),
        "no_http_answer": sum(1 for o in outcomes if o.status == 0),
        "statuses": dict(Counter(str(o.status) for o in outcomes)),
        "codes": dict(Counter(o.code for o in outcomes if o.code)),
        "duplicated_ids": sum(1 for n in ids.values() if n > 1),
    }
