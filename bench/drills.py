"""Failure drills (issue 6): faults injected under load, each checked and printed as one table row.

Every drill runs on its own fleet of real processes on this machine: the embedded broker (Tansu), a Valkey
server, a gateway and worker processes (``python -m gateway`` / ``python -m workers``) serving the tiny
MLP on a topic of 4 partitions. Load is closed-loop HTTP (JSON infer) with a unique request id per request;
every 200 answer is checked against the model's output computed in this process.

* ``worker-kill``   SIGKILL a random worker every 4 s for 60 s (a replacement starts at once, as a
  supervisor would): 0 lost, 0 wrong, 0 duplicated client-visible results.
* ``redis-restart`` stop Redis for 5 s under sync load and async job submissions, then start it again (same
  port, append-only file, as a persistent production Redis): the gateway answers 503 quickly while it is
  down, answers 200 again within 5 s of its return, and every accepted (202) async job completes.
* ``broker-stop``   stop the broker for 5 s under load: 503 within the gateway's 1 s backend timeout, no hang;
  recovery once it is back.
  The embedded broker keeps its log in memory, so what was queued in it is gone after its restart; a
  Kafka cluster keeps it (the drill reports how many requests got a 503/504 instead of an answer).
* ``fuzz``          10,000 undecodable or invalid records on the model topic while sync load runs: every sync
  request answered, every bad record in the dead-letter topic with a reason.
* ``sigterm-all``   SIGTERM the gateway and every worker at once under load: every request in flight gets an
  HTTP answer (200, or 503/504 when its record was still queued), no connection is cut, and the
  committed offsets equal the records answered (the workers committed what they replied to).

    .venv/bin/python -m bench.drills [--drill NAME ...] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from autoscaler.collector import LagCollector
from bench.common import git_commit, machine, write_report
from fleet.artifacts import build_record
from fleet.heartbeats import read_workers
from fleet.localservers import LocalBroker, LocalRedis, free_port, wait_for_port
from fleet.modelgen import tiny_mlp
from fleet.procs import ServiceProcess
from schemas import (
    BatchingConfig,
    DeadLetter,
    FleetSettings,
    KafkaSettings,
    ModelRegistry,
    Names,
    RedisSettings,
    SchemaError,
)
from schemas.topics import ensure_model_topics

MODEL = "tiny"
PARTITIONS = 4
NAMESPACE = "drill"
#: Consumer-group timings for the local broker (a SIGKILLed worker's partitions move after the session timeout).
KAFKA_ENV = {"FLEET_KAFKA_SESSION_TIMEOUT_MS": "2000", "FLEET_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}
REQUEST_TIMEOUT_MS = 30_000
#: The gateway bounds a publish by FLEET_GATEWAY_BACKEND_TIMEOUT_S (1 s); the client sees that plus its own
#: HTTP round trip, which this margin allows for.
HTTP_MARGIN_S = 0.05


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


class PersistentRedis(LocalRedis):
    """Valkey with an append-only file (fsync always), so a restart keeps the registry and the jobs."""

    def __init__(self, data_dir: Path, port: int | None = None, log_dir: Path | None = None) -> None:
        super().__init__(port, log_dir)
        self.data_dir = data_dir

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [*super().command(), "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]


@dataclass
class DrillFleet:
    """Broker, Redis, one gateway and worker processes for one drill."""

    root: Path
    workers: int = 2
    persistent_redis: bool = False
    broker: LocalBroker = field(init=False)
    redis_server: LocalRedis = field(init=False)
    gateway: ServiceProcess | None = None
    worker_procs: list[ServiceProcess] = field(default_factory=list)
    url: str = ""
    inputs: list[npt.NDArray[np.float32]] = field(default_factory=list)
    expected: list[npt.NDArray[np.float32]] = field(default_factory=list)
    _spawned: int = 0

    def __post_init__(self) -> None:
        logs = self.root / "logs"
        self.broker = LocalBroker(log_dir=logs)
        self.redis_server = (
            PersistentRedis(self.root / "redis-data", log_dir=logs)
            if self.persistent_redis
            else LocalRedis(log_dir=logs)
        )

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
            redis=RedisSettings(url=self.redis_server.url),
        )

    @property
    def names(self) -> Names:
        return Names(NAMESPACE)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **KAFKA_ENV,
            "FLEET_NAMESPACE": NAMESPACE,
            "FLEET_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "FLEET_REDIS_URL": self.redis_server.url,
            "FLEET_EVENT_LOOP": "asyncio",
            "PYTHONUNBUFFERED": "1",
        }

    async def start(self) -> None:
        self.broker.start()
        self.redis_server.start()
        path = tiny_mlp(self.root / "tiny.onnx")
        self._expected_outputs(path)
        redis = self.settings.redis.client()
        try:
            record = build_record(MODEL, "1", path, batching=BatchingConfig(64, 2))
            await ModelRegistry(redis, self.names).register(record)
        finally:
            await redis.aclose()
        await ensure_model_topics(self.settings.kafka, self.names, MODEL, PARTITIONS)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.gateway = ServiceProcess(
            "gateway",
            [sys.executable, "-m", "gateway"],
            self.env() | {"FLEET_GATEWAY_PORT": str(port), "FLEET_GATEWAY_ID": "drill-gw"},
            self.root / "logs" / "gateway.log",
        )
        self.gateway.start()
        await asyncio.to_thread(wait_for_port, port, 30.0)
        for _ in range(self.workers):
            self.spawn_worker()
        await self.wait_workers_ready(self.workers)

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
        procs = [p for p in (self.gateway, *self.worker_procs) if p is not None]
        await asyncio.gather(*(p.stop(15.0) for p in procs))
        self.redis_server.stop()
        self.broker.stop()


class Load:
    """Closed-loop HTTP load: ``concurrency`` tasks, each sending the next request when one is answered."""

    def __init__(self, fleet: DrillFleet, concurrency: int, prefix: str) -> None:
        self.fleet = fleet
        self.concurrency = concurrency
        self.prefix = prefix
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency + 4))
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
            "parameters": {"timeout_ms": REQUEST_TIMEOUT_MS},
        }
        outcome = Outcome(request_id, time.monotonic())
        self.outcomes.append(outcome)
        url = f"{self.fleet.url}/v2/models/{MODEL}/infer"
        try:
            limit = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_MS / 1000 + 5)
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


# drills ------------------------------------------------------------------------------------------------------
async def drill_worker_kill(root: Path) -> dict[str, Any]:
    duration_s, every_s = 60.0, 4.0
    fleet = DrillFleet(root / "worker-kill", workers=3)
    await fleet.start()
    kills = 0
    try:
        async with Load(fleet, concurrency=8, prefix="wk") as load:
            began = time.monotonic()
            while time.monotonic() - began < duration_s:
                await asyncio.sleep(every_s)
                alive = [p for p in fleet.worker_procs if p.running]
                victim = random.choice(alive)
                os.kill(victim.pid, signal.SIGKILL)
                kills += 1
                fleet.spawn_worker()
            await load.finish(timeout_s=REQUEST_TIMEOUT_MS / 1000 + 10)
            counts = tally(load.outcomes)
    finally:
        await fleet.stop()
    ok = counts["sent"] == counts["answered_ok"] and counts["duplicated_ids"] == 0
    return {
        "pass": ok,
        "kills": kills,
        **counts,
        "summary": f"{kills} SIGKILLs in {duration_s:.0f} s: {counts['sent']} sent, {counts['answered_ok']} answered "
        f"correctly, {counts['sent'] - counts['answered_ok']} lost, {counts['wrong']} wrong, "
        f"{counts['duplicated_ids']} duplicated",
    }


async def _submit_jobs(fleet: DrillFleet, stop: asyncio.Event, accepted: list[str], refused: Counter[str]) -> None:
    """Submit an async job every 50 ms; note the accepted job ids and the refusals."""
    async with aiohttp.ClientSession() as http:
        n = 0
        while not stop.is_set():
            n += 1
            x = fleet.inputs[n % len(fleet.inputs)]
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}
            try:
                async with http.post(
                    f"{fleet.url}/v2/models/{MODEL}/infer?async=true", json=body, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    doc = await response.json(content_type=None)
                    if response.status == 202:
                        accepted.append(doc["job_id"])
                    else:
                        refused[f"{response.status} {doc.get('code', '')}"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                refused[type(exc).__name__] += 1
            await asyncio.sleep(0.05)


async def _job_statuses(fleet: DrillFleet, job_ids: list[str], timeout_s: float) -> Counter[str]:
    """Poll the jobs until all are finished (or ``timeout_s``); their final statuses."""
    final: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and len(final) < len(job_ids):
            for job_id in job_ids:
                if job_id in final:
                    continue
                async with http.get(f"{fleet.url}/v2/jobs/{job_id}") as response:
                    doc = await response.json(content_type=None)
                status = doc.get("status", f"http {response.status}")
                if status not in ("pending", "running"):
                    final[job_id] = status
            await asyncio.sleep(0.5)
    return Counter(final.get(j, "unfinished") for j in job_ids)


async def _outage(
    fleet: DrillFleet, load: Load, stop_server: Callable[[], None], start_server: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Stop a server for 5 s under load; figures of the requests sent while it was down and after.

    Besides the closed-loop load (whose requests in flight at the stop may wait for the server's return), a
    probe sends one request every 100 ms whatever happens, so requests arriving during the outage are seen.
    """
    probes: set[asyncio.Task[Outcome]] = set()

    async def probe() -> None:
        for n in itertools.count():
            task = asyncio.create_task(load.one(f"probe-{n}", n % len(fleet.inputs)))
            probes.add(task)
            task.add_done_callback(probes.discard)
            await asyncio.sleep(0.1)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(3.0)
    down_at = time.monotonic()
    await asyncio.to_thread(stop_server)  # it waits for the process to exit: not on the event loop
    gone_at = time.monotonic()
    await asyncio.sleep(5.0)
    up_at = time.monotonic()
    await start_server()
    await asyncio.sleep(10.0)
    prober.cancel()
    await asyncio.gather(prober, return_exceptions=True)
    if probes:
        await asyncio.wait(set(probes), timeout=REQUEST_TIMEOUT_MS / 1000 + 10)
    during = [o for o in load.outcomes if gone_at <= o.sent < up_at]
    refused = [o for o in during if o.status == 503]
    first_ok = min((o.done for o in load.outcomes if o.sent >= up_at and o.status == 200), default=None)
    return {
        "requests_while_down": len(during),
        "answered_503": len(refused),
        "slowest_503_s": round(max((o.latency_s for o in refused), default=0.0), 3),
        "while_down_statuses": dict(Counter(f"{o.status} {o.code}".strip() for o in during)),
        "while_down_answered_200": [
            {"sent_after_stop_s": round(o.sent - gone_at, 3), "latency_s": round(o.latency_s, 3)}
            for o in during
            if o.status == 200
        ],
        "stop_took_s": round(gone_at - down_at, 3),
        "recovered_s": None if first_ok is None else round(first_ok - up_at, 2),
    }


async def drill_redis_restart(root: Path) -> dict[str, Any]:
    fleet = DrillFleet(root / "redis-restart", workers=2, persistent_redis=True)
    await fleet.start()
    accepted: list[str] = []
    refused: Counter[str] = Counter()
    stop_jobs = asyncio.Event()
    try:
        async with Load(fleet, concurrency=4, prefix="rr") as load:
            jobs = asyncio.create_task(_submit_jobs(fleet, stop_jobs, accepted, refused))

            async def start_redis() -> None:
                fleet.redis_server.start()

            figures = await _outage(fleet, load, fleet.redis_server.stop, start_redis)
            stop_jobs.set()
            await jobs
            await load.finish()
            counts = tally(load.outcomes)
        statuses = await _job_statuses(fleet, accepted, timeout_s=60.0)
    finally:
        await fleet.stop()
    done = statuses.get("done", 0)
    ok = (
        figures["answered_503"] > 0
        and figures["slowest_503_s"] <= 2.0
        and figures["recovered_s"] is not None
        and figures["recovered_s"] <= 5.0
        and done == len(accepted)
        and counts["wrong"] == 0
        and counts["no_http_answer"] == 0
    )
    return {
        "pass": ok,
        **figures,
        "jobs_accepted": len(accepted),
        "jobs_final": dict(statuses),
        "jobs_refused": dict(refused),
        **counts,
        "summary": f"down 5 s: {figures['answered_503']}/{figures['requests_while_down']} requests got 503, slowest "
        f"{figures['slowest_503_s']} s; 200 again {figures['recovered_s']} s after restart; async jobs "
        f"{done}/{len(accepted)} accepted ones done ({sum(refused.values())} refused while down)",
    }


async def drill_broker_stop(root: Path) -> dict[str, Any]:
    fleet = DrillFleet(root / "broker-stop", workers=2)
    await fleet.start()
    try:
        async with Load(fleet, concurrency=4, prefix="bs") as load:

            async def start_broker() -> None:
                fleet.broker.start()
                # The embedded broker lost its topics with its memory: recreate them as an operator would.
                await ensure_model_topics(fleet.settings.kafka, fleet.names, MODEL, PARTITIONS)

            figures = await _outage(fleet, load, fleet.broker.stop, start_broker)
            await load.finish()
            counts = tally(load.outcomes)
    finally:
        await fleet.stop()
    ok = (
        figures["answered_503"] > 0
        and figures["slowest_503_s"] <= 1.0 + HTTP_MARGIN_S
        and figures["recovered_s"] is not None
        and counts["no_http_answer"] == 0
    )
    return {
        "pass": ok,
        **figures,
        **counts,
        "summary": f"down 5 s: {figures['answered_503']}/{figures['requests_while_down']} requests got 503, slowest "
        f"{figures['slowest_503_s']} s; 200 again {figures['recovered_s']} s after restart; "
        f"{counts['no_http_answer']} requests without an HTTP answer",
    }


def _fuzz_records(count: int, seed: int = 3) -> list[bytes]:
    """Random bytes, truncated msgpack, valid msgpack of the wrong shape, and envelopes from the future."""
    rng = random.Random(seed)
    records: list[bytes] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            records.append(rng.randbytes(rng.randint(0, 300)))
        elif kind == 1:
            records.append(msgpack.packb({"v": 1, "id": f"f{i}", "model": MODEL})[: rng.randint(1, 12)])
        elif kind == 2:
            records.append(msgpack.packb([rng.random(), "x" * rng.randint(0, 50), {"a": i}]))
        else:
            records.append(msgpack.packb({"v": 99, "id": f"f{i}", "model": MODEL, "inputs": []}))
    return records


async def _count_dead_letters(fleet: DrillFleet, expected: int, timeout_s: float) -> Counter[str]:
    consumer = AIOKafkaConsumer(
        fleet.names.dlq_topic(MODEL),
        bootstrap_servers=fleet.broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    reasons: Counter[str] = Counter()
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while sum(reasons.values()) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for record in records:
                    try:
                        reasons[DeadLetter.from_bytes(record.value).code.value] += 1
                    except SchemaError:
                        reasons["unreadable dead letter"] += 1
    finally:
        await consumer.stop()
    return reasons


async def drill_fuzz(root: Path) -> dict[str, Any]:
    count = 10_000
    fleet = DrillFleet(root / "fuzz", workers=1)
    await fleet.start()
    try:
        async with Load(fleet, concurrency=2, prefix="fz") as load:
            producer = AIOKafkaProducer(bootstrap_servers=fleet.broker.bootstrap, linger_ms=5)
            await producer.start()
            began = time.monotonic()
            try:
                for i, value in enumerate(_fuzz_records(count)):
                    await producer.send(fleet.names.request_topic(MODEL), value, key=f"fuzz-{i}".encode())
                await producer.flush()
            finally:
                await producer.stop()
            reasons = await _count_dead_letters(fleet, count, timeout_s=120.0)
            elapsed = time.monotonic() - began
            await asyncio.sleep(3.0)  # and the worker still serves afterwards
            await load.finish()
            counts = tally(load.outcomes)
        worker_alive = all(p.running for p in fleet.worker_procs)
    finally:
        await fleet.stop()
    letters = sum(reasons.values())
    ok = letters == count and worker_alive and counts["sent"] == counts["answered_ok"]
    return {
        "pass": ok,
        "bad_records": count,
        "dead_letters": letters,
        "reasons": dict(reasons),
        "seconds": round(elapsed, 1),
        "worker_alive": worker_alive,
        **counts,
        "summary": f"{count} bad records: {letters} dead letters ({', '.join(f'{k} {v}' for k, v in reasons.items())}) "
        f"in {elapsed:.1f} s; sync load meanwhile {counts['answered_ok']}/{counts['sent']} answered; worker "
        f"{'alive' if worker_alive else 'DIED'}",
    }


async def _offsets(fleet: DrillFleet) -> tuple[int, int]:
    """(sum of committed offsets, sum of log-end offsets) of the model's interactive topic."""
    async with LagCollector(fleet.settings) as collector:
        load = (await collector.collect([MODEL]))[MODEL]
    return sum(p.committed or 0 for p in load.partitions), sum(p.log_end for p in load.partitions)


async def _stored_results(fleet: DrillFleet) -> int:
    redis = fleet.settings.redis.client()
    try:
        return sum([1 async for _ in redis.scan_iter(match=fleet.names.result_key("*"), count=1000)])
    finally:
        await redis.aclose()


async def drill_sigterm_all(root: Path) -> dict[str, Any]:
    fleet = DrillFleet(root / "sigterm-all", workers=2)
    await fleet.start()
    try:
        async with Load(fleet, concurrency=16, prefix="st") as load:
            await asyncio.sleep(5.0)
            procs = [p for p in (fleet.gateway, *fleet.worker_procs) if p is not None]
            signalled = time.monotonic()
            for proc in procs:
                os.kill(proc.pid, signal.SIGTERM)
            exited = await asyncio.gather(*(p.wait(60.0) for p in procs))
            stopped_s = time.monotonic() - signalled
            await load.finish()
            in_flight = [o for o in load.outcomes if o.sent < signalled]
        codes = [p.returncode for p in procs]
        committed, log_end = await _offsets(fleet)
        stored = await _stored_results(fleet)
    finally:
        await fleet.stop()
    answered = [o for o in in_flight if o.status != 0]
    counts = tally(in_flight)
    ok = all(exited) and codes == [0] * len(codes) and len(answered) == len(in_flight) and committed == stored
    return {
        "pass": ok,
        "exit_codes": codes,
        "stopped_s": round(stopped_s, 2),
        "in_flight_answered": len(answered),
        "committed_offsets": committed,
        "log_end_offsets": log_end,
        "results_stored": stored,
        **counts,
        "summary": f"all {len(codes)} processes exited {set(codes)} within {stopped_s:.1f} s; requests sent before "
        f"the signal: {len(answered)}/{len(in_flight)} got an HTTP answer ({counts['statuses']}); committed "
        f"offsets {committed} = results stored {stored} (log end {log_end})",
    }


DRILLS: dict[str, Callable[[Path], Awaitable[dict[str, Any]]]] = {
    "worker-kill": drill_worker_kill,
    "redis-restart": drill_redis_restart,
    "broker-stop": drill_broker_stop,
    "fuzz": drill_fuzz,
    "sigterm-all": drill_sigterm_all,
}


async def run(names: list[str]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fleet-drills-"))
    print(f"working folder (logs): {root}")
    results: dict[str, Any] = {}
    for name in names:
        print(f"== {name}", flush=True)
        began = time.monotonic()
        try:
            results[name] = await DRILLS[name](root)
        except Exception as exc:  # a drill that cannot run is a failed drill, and the others still run
            results[name] = {"pass": False, "summary": f"drill crashed: {type(exc).__name__}: {exc}"}
        results[name]["wall_s"] = round(time.monotonic() - began, 1)
        print(f"   {'PASS' if results[name]['pass'] else 'FAIL'}  {results[name]['summary']}", flush=True)
    print("\n| drill | result | figures |\n|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {'PASS' if result['pass'] else 'FAIL'} | {result['summary']} |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drill", action="append", choices=sorted(DRILLS), help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    results = asyncio.run(run(args.drill or list(DRILLS)))
    report = {
        "benchmark": "drills",
        "commit": git_commit(),
        "machine": machine(),
        "drills": results,
    }
    write_report(args.out / "drills.json", report)
    sys.exit(0 if all(r["pass"] for r in results.values()) else 1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
