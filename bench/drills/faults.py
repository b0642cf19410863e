"""Drills of the faults outside testing found: killed gateways and Redis, frozen backends, overload, a full Redis,
large and slow bodies.

Each drill checks the same promises: no accepted (202) job is lost, no answer is wrong, every request gets an
HTTP answer (a 2xx, or an error with a specific code) within its timeout + 1 s, and normal traffic beside large or
slow bodies keeps its p99 within 2x of its idle value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.drills.fleet import MODEL, DrillFleet, Load, Outcome, tally
from fleet.demo.modelgen import mlp_onnx, random_mlp
from schemas import BatchingConfig, InferenceResponse

#: Request timeout of the drills below: short, so "answered within timeout + 1 s" is a tight promise.
TIMEOUT_MS = 5_000
SLACK_S = 1.0
INFER = f"/v2/models/{MODEL}/infer"


#: Connections an open-loop client may hold: a generous pool, as a real client has (not one per request).
CLIENT_CONNECTIONS = 1024


def slow_mlp(path: Path) -> Path:
    """16 -> 3 x 4096 -> 4 MLP (~34 M multiply-adds a row), unbatched: a worker serves on the order of 100
    requests/s, so a Python load generator on the same two cores can offer 3x that."""
    return mlp_onnx(path, random_mlp([16, 4096, 4096, 4096, 4], seed=11))


def promises(outcomes: list[Outcome], timeout_ms: int = TIMEOUT_MS) -> dict[str, Any]:
    """The promises every drill checks, counted over ``outcomes`` (pure)."""
    limit_s = timeout_ms / 1000 + SLACK_S
    ok = sorted(o.latency_s for o in outcomes if o.status == 200)
    return {
        **tally(outcomes),
        "late": sum(1 for o in outcomes if o.latency_s > limit_s),
        "slowest_s": round(max((o.latency_s for o in outcomes), default=0.0), 3),
        "unspecific_errors": sum(1 for o in outcomes if o.status >= 400 and not o.code),
        "p99_ok_ms": round(1000 * ok[int(0.99 * (len(ok) - 1))], 1) if ok else None,
    }


def kept(figures: dict[str, Any]) -> bool:
    """No wrong answer, no request without an HTTP answer, none late, every error specific."""
    return bool(
        figures["wrong"] == 0
        and figures["no_http_answer"] == 0
        and figures["late"] == 0
        and figures["unspecific_errors"] == 0
    )


def _body(fleet: DrillFleet, which: int) -> dict[str, Any]:
    x = fleet.inputs[which]
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


class Jobs:
    """Async jobs a drill submitted and had accepted, checked at the end against the model's outputs in Redis."""

    def __init__(self, fleet: DrillFleet) -> None:
        self.fleet = fleet
        self.accepted: dict[str, int] = {}  # job id -> index of its input
        self.by_key: dict[str, str] = {}  # Idempotency-Key -> job id of its first 202
        self.replays_naming_another_job = 0
        self.refused: Counter[str] = Counter()

    async def submit(self, http: aiohttp.ClientSession, key: str, which: int) -> bool:
        """POST one job with ``key``; True once it is accepted (202)."""
        try:
            async with http.post(
                f"{self.fleet.url}{INFER}?async=true",
                json=_body(self.fleet, which),
                headers={"Idempotency-Key": key},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_MS / 1000 + 5),
            ) as response:
                doc = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.refused[type(exc).__name__] += 1
            return False
        if status != 202:
            self.refused[f"{status} {doc.get('code', '') if isinstance(doc, dict) else ''}".strip()] += 1
            return False
        job_id = str(doc["job_id"])
        first = self.by_key.setdefault(key, job_id)
        if first != job_id:
            self.replays_naming_another_job += 1
        self.accepted[job_id] = which
        return True

    async def outcomes(self, timeout_s: float) -> Counter[str]:
        """Wait until every accepted job has a result (or ``timeout_s``): done / wrong / <error code> / lost."""
        final: dict[str, str] = {}
        redis = self.fleet.settings.redis.client()
        names = self.fleet.names
        deadline = time.monotonic() + timeout_s
        try:
            while len(final) < len(self.accepted) and time.monotonic() < deadline:
                waiting = [j for j in self.accepted if j not in final]
                for start in range(0, len(waiting), 500):
                    chunk = waiting[start : start + 500]
                    async with redis.pipeline(transaction=False) as pipe:  # GETs: the results are in 8 job shards
                        for job_id in chunk:
                            pipe.get(names.result_key(job_id))
                        stored = await pipe.execute()
                    for job_id, raw in zip(chunk, stored, strict=True):
                        if raw is not None:
                            final[job_id] = self._judge(job_id, raw)
                if len(final) < len(self.accepted):
                    await asyncio.sleep(0.5)
        finally:
            await redis.aclose()
        return Counter(final.get(j, "lost") for j in self.accepted)

    def _judge(self, job_id: str, raw: bytes) -> str:
        response = InferenceResponse.from_bytes(raw)
        if response.error is not None:
            return response.error.code.value
        y = response.outputs[0].to_numpy()
        right = np.allclose(y, self.fleet.expected[self.accepted[job_id]], rtol=1e-4, atol=1e-5)
        return "done" if right else "wrong"


# gateway-kill ------------------------------------------------------------------------------------------------
async def _keyed_client(jobs: Jobs, stop: asyncio.Event, prefix: str) -> None:
    """Submit jobs one after another, each under its own Idempotency-Key, retrying a key until it is accepted."""
    async with aiohttp.ClientSession() as http:
        n = 0
        while not stop.is_set():
            n += 1
            key, which = f"{prefix}-{n}", n % len(jobs.fleet.inputs)
            give_up = time.monotonic() + 30.0
            while not await jobs.submit(http, key, which) and time.monotonic() < give_up:  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # a client's retry pause, not a wait on something in this process
            # A second submission of an accepted key must name the same job (an idempotent replay).
            if n % 10 == 0:
                await jobs.submit(http, key, which)


async def drill_gateway_kill(root: Path) -> dict[str, Any]:
    duration_s = 30.0
    fleet = DrillFleet(root / "gateway-kill", workers=2)
    await fleet.start()
    jobs = Jobs(fleet)
    stop = asyncio.Event()
    kills = 0
    try:
        clients = [asyncio.create_task(_keyed_client(jobs, stop, f"k{i}")) for i in range(8)]
        began = time.monotonic()
        while time.monotonic() - began < duration_s:
            await asyncio.sleep(random.uniform(1.0, 3.0))
            assert fleet.gateway is not None
            os.kill(fleet.gateway.pid, signal.SIGKILL)
            kills += 1
            await fleet.gateway.wait(10.0)
            await fleet.start_gateway()
        stop.set()
        await asyncio.gather(*clients)
        final = await jobs.outcomes(timeout_s=90.0)
    finally:
        await fleet.stop()
    lost, wrong = final.get("lost", 0), final.get("wrong", 0)
    ok = lost == 0 and wrong == 0 and jobs.replays_naming_another_job == 0 and final.get("done", 0) > 0
    return {
        "pass": ok,
        "kills": kills,
        "jobs_accepted": len(jobs.accepted),
        "keys": len(jobs.by_key),
        "jobs_final": dict(final),
        "replays_naming_another_job": jobs.replays_naming_another_job,
        "refused": dict(jobs.refused),
        "summary": f"{kills} gateway SIGKILLs in {duration_s:.0f} s under keyed async submissions: "
        f"{len(jobs.accepted)} jobs accepted, {final.get('done', 0)} done, {lost} lost, {wrong} wrong; "
        f"{jobs.replays_naming_another_job} replays named another job",
    }


# redis-kill --------------------------------------------------------------------------------------------------
async def _job_client(jobs: Jobs, stop: asyncio.Event, prefix: str) -> None:
    async with aiohttp.ClientSession() as http:
        n = 0
        while not stop.is_set():
            n += 1
            await jobs.submit(http, f"{prefix}-{n}", n % len(jobs.fleet.inputs))
            await asyncio.sleep(0.02)


async def drill_redis_kill(root: Path) -> dict[str, Any]:
    """SIGKILL the Redis of a local stack (its durable default: append-only file) and start it again at once."""
    fleet = DrillFleet(root / "redis-kill", workers=2, persistent_redis=True)
    await fleet.start()
    jobs = Jobs(fleet)
    stop = asyncio.Event()
    try:
        async with Load(fleet, concurrency=4, prefix="rk", timeout_ms=TIMEOUT_MS) as load:
            submitter = asyncio.create_task(_job_client(jobs, stop, "rk-job"))
            await asyncio.sleep(5.0)
            pid = fleet.redis_server.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            fleet.redis_server.stop()  # reaps the killed process
            fleet.redis_server.start()
            restarted_s = time.monotonic() - killed_at
            await asyncio.sleep(10.0)
            stop.set()
            await submitter
            await load.finish()
            figures = promises(load.outcomes)
            after = [o for o in load.outcomes if o.sent > killed_at + 5.0]
        final = await jobs.outcomes(timeout_s=60.0)
    finally:
        await fleet.stop()
    lost, wrong = final.get("lost", 0), final.get("wrong", 0)
    serving_again = any(o.status == 200 for o in after)
    ok = kept(figures) and lost == 0 and wrong == 0 and serving_again
    return {
        "pass": ok,
        "restarted_s": round(restarted_s, 2),
        "jobs_accepted": len(jobs.accepted),
        "jobs_final": dict(final),
        "jobs_refused": dict(jobs.refused),
        **figures,
        "summary": f"Redis SIGKILLed and restarted in {restarted_s:.1f} s: registry kept (200s again: "
        f"{'yes' if serving_again else 'NO'}); async jobs {final.get('done', 0)}/{len(jobs.accepted)} done, "
        f"{lost} lost; "
        f"sync {figures['answered_ok']}/{figures['sent']} ok, {figures['wrong']} wrong, {figures['late']} late "
        f"(slowest {figures['slowest_s']} s), codes {figures['codes']}",
    }


# freeze ------------------------------------------------------------------------------------------------------
async def _freeze(pid: int, seconds: float) -> float:
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    return frozen_at


async def drill_freeze(root: Path) -> dict[str, Any]:
    """SIGSTOP the broker for 5 s, then Redis for 5 s, under sync load and async submissions."""
    fleet = DrillFleet(root / "freeze", workers=2)
    await fleet.start()
    jobs = Jobs(fleet)
    stop = asyncio.Event()
    recovered: dict[str, float | None] = {}
    try:
        async with Load(fleet, concurrency=8, prefix="fz", timeout_ms=TIMEOUT_MS) as load:
            submitter = asyncio.create_task(_job_client(jobs, stop, "fz-job"))
            await asyncio.sleep(3.0)
            for name, server in (("broker", fleet.broker), ("redis", fleet.redis_server)):
                assert server.pid is not None
                await _freeze(server.pid, 5.0)
                thawed = time.monotonic()
                await asyncio.sleep(8.0)
                first_ok = min((o.done for o in load.outcomes if o.sent >= thawed and o.status == 200), default=None)
                recovered[name] = None if first_ok is None else round(first_ok - thawed, 2)
            stop.set()
            await submitter
            await load.finish()
            figures = promises(load.outcomes)
        final = await jobs.outcomes(timeout_s=60.0)
    finally:
        await fleet.stop()
    lost, wrong = final.get("lost", 0), final.get("wrong", 0)
    ok = kept(figures) and lost == 0 and wrong == 0 and all(v is not None for v in recovered.values())
    return {
        "pass": ok,
        "recovered_s": recovered,
        "jobs_accepted": len(jobs.accepted),
        "jobs_final": dict(final),
        "jobs_refused": dict(jobs.refused),
        **figures,
        "summary": f"broker, then Redis frozen 5 s each: sync {figures['answered_ok']}/{figures['sent']} ok, "
        f"{figures['wrong']} wrong, {figures['no_http_answer']} unanswered, {figures['late']} late (slowest "
        f"{figures['slowest_s']} s), codes {figures['codes']}; 200 again after {recovered} s; async "
        f"{final.get('done', 0)}/{len(jobs.accepted)} done, {lost} lost",
    }


# overload ----------------------------------------------------------------------------------------------------
async def _capacity(fleet: DrillFleet, seconds: float = 10.0) -> float:
    """Answers per second of a closed loop that keeps the fleet busy."""
    async with Load(fleet, concurrency=48, prefix="cap", timeout_ms=TIMEOUT_MS) as load:
        await asyncio.sleep(2.0)  # warm up
        began, before = time.monotonic(), sum(1 for o in load.outcomes if o.status == 200)
        await asyncio.sleep(seconds)
        answered = sum(1 for o in load.outcomes if o.status == 200) - before
        return answered / (time.monotonic() - began)


async def _open_loop(rate: float, seconds: float, send: Callable[[int], Awaitable[object]]) -> None:
    """Call ``send(n)`` ``rate`` times a second for ``seconds``, never waiting for an answer; then await them all."""
    tasks: set[asyncio.Task[object]] = set()
    began = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate)
        while n < due:
            n += 1
            task: asyncio.Task[object] = asyncio.create_task(send(n))  # type: ignore[arg-type]
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(set(tasks))


async def drill_overload(root: Path) -> dict[str, Any]:
    """3x the measured capacity for 60 s of sync requests, then 60 s of async submissions."""
    seconds = 60.0
    fleet = DrillFleet(root / "overload", workers=1, model=slow_mlp, batching=BatchingConfig(1, 0))
    await fleet.start()
    jobs = Jobs(fleet)
    try:
        capacity = await _capacity(fleet)
        rate = 3 * capacity
        load = Load(fleet, concurrency=0, prefix="ov", timeout_ms=TIMEOUT_MS, connections=CLIENT_CONNECTIONS)
        async with load:
            await _open_loop(rate, seconds, lambda n: load.one(f"ov-{n}", n % len(fleet.inputs)))
            figures = promises(load.outcomes)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS)) as http:
            await _open_loop(rate, seconds, lambda n: jobs.submit(http, f"ov-job-{n}", n % len(fleet.inputs)))
        final = await jobs.outcomes(timeout_s=300.0)
    finally:
        await fleet.stop()
    backend = figures["codes"].get("BACKEND_UNAVAILABLE", 0)
    lost, wrong = final.get("lost", 0), final.get("wrong", 0)
    ok = kept(figures) and backend == 0 and lost == 0 and wrong == 0
    return {
        "pass": ok,
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(rate, 1),
        **figures,
        "jobs_offered": int(rate * seconds),
        "jobs_accepted": len(jobs.accepted),
        "jobs_refused": dict(jobs.refused),
        "jobs_final": dict(final),
        "summary": f"capacity {capacity:.0f} req/s, offered {rate:.0f} req/s for {seconds:.0f} s: sync "
        f"{figures['answered_ok']}/{figures['sent']} ok (p99 {figures['p99_ok_ms']} ms), shed {figures['codes']}, "
        f"{figures['late']} late, {figures['no_http_answer']} unanswered, {figures['wrong']} wrong; async "
        f"{len(jobs.accepted)} accepted, {final.get('done', 0)} done, {lost} lost, refused {dict(jobs.refused)}",
    }


# redis-maxmemory ---------------------------------------------------------------------------------------------
async def drill_redis_maxmemory(root: Path) -> dict[str, Any]:
    """Redis refuses writes (maxmemory with noeviction) for 5 s under sync load: replies wait, none is lost."""
    fleet = DrillFleet(root / "redis-maxmemory", workers=2)
    await fleet.start()
    redis = fleet.settings.redis.client()
    timeout_ms = 30_000
    try:
        async with Load(fleet, concurrency=8, prefix="mm", timeout_ms=timeout_ms) as load:
            await asyncio.sleep(3.0)
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", "1")
            full_at = time.monotonic()
            await asyncio.sleep(5.0)
            await redis.config_set("maxmemory", "0")
            freed_at = time.monotonic()
            await asyncio.sleep(5.0)
            await load.finish()
            figures = promises(load.outcomes, timeout_ms)
            during = [o for o in load.outcomes if full_at <= o.sent < freed_at]
    finally:
        await redis.aclose()
        await fleet.stop()
    ok = kept(figures) and figures["sent"] == figures["answered_ok"]
    return {
        "pass": ok,
        "sent_while_full": len(during),
        "answered_ok_while_full": sum(1 for o in during if o.status == 200),
        **figures,
        "summary": f"Redis full for 5 s: {figures['answered_ok']}/{figures['sent']} requests answered correctly "
        f"({sum(1 for o in during if o.status == 200)}/{len(during)} sent while full), {figures['wrong']} wrong, "
        f"slowest {figures['slowest_s']} s, codes {figures['codes']}",
    }


# heavy-bodies ------------------------------------------------------------------------------------------------
def _big_bad_body(megabytes: int) -> bytes:
    """A JSON body of about ``megabytes`` MiB: millions of empty BYTES elements sent to an FP32 input."""
    count = (megabytes << 20) // 3
    head = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [count], "data": []}]})
    return head.replace("[]", "[" + ",".join(['""'] * count) + "]", 1).encode()


async def _big_bodies(url: str, body: bytes, stop: asyncio.Event, statuses: Counter[str]) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.post(
                    url, data=body, headers={"Content-Type": "application/json"}, timeout=aiohttp.ClientTimeout(120)
                ) as response:
                    doc = await response.json(content_type=None)
                    statuses[f"{response.status} {doc.get('code', '') if isinstance(doc, dict) else ''}"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                statuses[type(exc).__name__] += 1


async def _slow_client(port: int, chunked: bool, stop: asyncio.Event, fates: Counter[str]) -> None:
    """A slowloris: half a request's headers (or a chunked body that stops), then a byte every 2 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    try:
        if chunked:
            writer.write(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"inp\r\n".encode()
            )
        else:
            writer.write(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n".encode())
        await writer.drain()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(1024), timeout=2.0)
                what = "body" if chunked else "headers"
                fates[f"{what}: {_first_line(data)} after {_bucket(time.monotonic() - opened)}"] += 1
                return
            if not chunked:
                writer.write(b"X")
                await writer.drain()
        fates[f"{'body' if chunked else 'headers'}: still open at the end"] += 1
    except (ConnectionError, OSError):
        fates[f"{'body' if chunked else 'headers'}: reset after {_bucket(time.monotonic() - opened)}"] += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


def _bucket(seconds: float) -> str:
    return f"<{int(seconds // 10 + 1) * 10} s"


ABUSE_S = 30.0


def _abuse(url: str, port: int, seconds: float) -> tuple[Counter[str], Counter[str]]:
    """In a process of its own: 4 clients sending 15 MiB bad bodies and 200 slow connections for ``seconds``;
    what each got."""

    async def run() -> tuple[Counter[str], Counter[str]]:
        big: Counter[str] = Counter()
        slow: Counter[str] = Counter()
        body = _big_bad_body(15)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_big_bodies(url + INFER, body, stop, big)) for _ in range(4)]
        tasks += [asyncio.create_task(_slow_client(port, i % 4 == 0, stop, slow)) for i in range(200)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return big, slow

    return asyncio.run(run())


async def drill_heavy_bodies(root: Path) -> dict[str, Any]:
    """Normal traffic beside 15 MiB bad bodies and 200 slow connections: its p99 stays within 2x of idle, and
    the slow connections are closed by the gateway's read timeouts (10 s here)."""
    # Read timeouts short enough to see the slow connections closed within the drill.
    timeouts = {"FLEET_GATEWAY_HEADER_TIMEOUT_S": "10", "FLEET_GATEWAY_BODY_TIMEOUT_S": "10"}
    fleet = DrillFleet(root / "heavy-bodies", workers=1, gateway_env=timeouts)
    await fleet.start()
    try:
        async with Load(fleet, concurrency=4, prefix="idle", timeout_ms=TIMEOUT_MS) as idle:
            await asyncio.sleep(15.0)
            await idle.finish()
            baseline = promises(idle.outcomes)
        # The abusers run in a process of their own: pushing 50 MB/s of bodies from the load generator's event
        # loop would slow the very client whose latency is measured.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            abuse = asyncio.get_running_loop().run_in_executor(
                pool, _abuse, fleet.url, fleet.gateway_port, ABUSE_S + 1.0
            )
            await asyncio.sleep(1.0)
            async with Load(fleet, concurrency=4, prefix="busy", timeout_ms=TIMEOUT_MS) as busy:
                await asyncio.sleep(ABUSE_S - 1.0)
                await busy.finish()
                loaded = promises(busy.outcomes)
            big, slow = await abuse
    finally:
        await fleet.stop()
    p99_idle, p99_busy = baseline["p99_ok_ms"] or 0.0, loaded["p99_ok_ms"] or float("inf")
    # Refused for what they are (400, 413) or told to come back (503 OVERLOADED: large bodies take turns).
    big_specific = all(k.split()[0] in ("400", "413", "503") and len(k.split()) > 1 for k in big)
    slow_closed = not any("still open" in k for k in slow)
    ok = (
        kept(loaded)
        and loaded["sent"] == loaded["answered_ok"]
        and p99_busy <= 2 * p99_idle
        and big_specific
        and slow_closed
    )
    return {
        "pass": ok,
        "p99_idle_ms": p99_idle,
        "p99_busy_ms": p99_busy,
        "big_bodies": dict(big),
        "slow_connections": dict(slow),
        "normal": loaded,
        "summary": f"normal p99 {p99_idle} ms idle, {p99_busy} ms beside 4 clients of 15 MiB bad bodies "
        f"({dict(big)}) and 200 slow connections ({dict(slow)}); normal {loaded['answered_ok']}/{loaded['sent']} "
        "answered correctly",
    }


FAULT_DRILLS: dict[str, Callable[[Path], Awaitable[dict[str, Any]]]] = {
    "gateway-kill": drill_gateway_kill,
    "redis-kill": drill_redis_kill,
    "freeze": drill_freeze,
    "overload": drill_overload,
    "redis-maxmemory": drill_redis_maxmemory,
    "heavy-bodies": drill_heavy_bodies,
}
