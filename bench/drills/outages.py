"""Drills of outages and bad traffic: worker kills, Redis and broker restarts, fuzzed records, SIGTERM of all."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from autoscaler.collector import LagCollector
from bench.drills.fleet import MODEL, PARTITIONS, REQUEST_TIMEOUT_MS, DrillFleet, Load, Outcome, tally
from schemas import DeadLetter, SchemaError
from schemas.constants import HEADER_BATCH
from schemas.topics import ensure_model_topics


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

            def crash_broker() -> None:
                assert fleet.broker.pid is not None
                os.kill(fleet.broker.pid, signal.SIGKILL)
                fleet.broker.stop()  # reaps it

            figures = await _outage(fleet, load, crash_broker, start_broker)
            await load.finish()
            counts = tally(load.outcomes)
            slowest = max((o.latency_s for o in load.outcomes), default=0.0)
    finally:
        await fleet.stop()
    waited = len(figures["while_down_answered_200"])
    # A request sent while the broker is down gets a 503 at once (the gateway's metadata probe found no broker)
    # or, handed to the producer before that, waits for the broker within its deadline and is answered 200.
    ok = (
        figures["recovered_s"] is not None
        and counts["no_http_answer"] == 0
        and counts["wrong"] == 0
        and slowest <= REQUEST_TIMEOUT_MS / 1000 + 1.0
        and set(counts["codes"]) <= {"BACKEND_UNAVAILABLE"}
    )
    return {
        "pass": ok,
        **figures,
        **counts,
        "slowest_s": round(slowest, 3),
        "summary": f"broker SIGKILLed for 5 s: of {figures['requests_while_down']} requests sent meanwhile "
        f"{figures['answered_503']} got 503 (slowest {figures['slowest_503_s']} s) and {waited} waited for the "
        f"broker and got 200; 200 again {figures['recovered_s']} s after restart; slowest answer {slowest:.1f} s "
        f"(timeout {REQUEST_TIMEOUT_MS / 1000:.0f} s); {counts['no_http_answer']} without an HTTP answer, "
        f"{counts['wrong']} wrong",
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
        fleet.names.dlq_topic,  # shared by the namespace: the drill has one model
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


async def _offsets(fleet: DrillFleet) -> tuple[int, int, int]:
    """(sum of committed offsets, sum of log-end offsets, requests in the committed records) of the model's
    interactive topic: a record may carry several requests (a coalesced batch: ``fleet-batch`` header)."""
    async with LagCollector(fleet.settings) as collector:
        load = (await collector.collect([MODEL]))[MODEL]
    committed = {p.partition: p.committed or 0 for p in load.partitions}
    consumer = AIOKafkaConsumer(bootstrap_servers=fleet.broker.bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    requests = 0
    try:
        topic = fleet.names.request_topic(MODEL)
        partitions = [TopicPartition(topic, p) for p, offset in committed.items() if offset > 0]
        if partitions:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while [tp for tp in partitions if await consumer.position(tp) < committed[tp.partition]]:
                for tp, records in (await consumer.getmany(timeout_ms=500, max_records=2000)).items():
                    for record in records:
                        if record.offset < committed[tp.partition]:
                            batch = dict(record.headers).get(HEADER_BATCH)
                            requests += int(batch) if batch else 1
    finally:
        await consumer.stop()
    return sum(committed.values()), sum(p.log_end for p in load.partitions), requests


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
            # A sync reply stores nothing in Redis (and the gateway drops its reply stream when it stops): what
            # the workers answered is what the client was answered. Every committed record was answered, and
            # nothing answered was left uncommitted (it would run again after a restart).
            answered_ok = sum(1 for o in load.outcomes if o.status == 200)
        codes = [p.returncode for p in procs]
        committed, log_end, committed_requests = await _offsets(fleet)
    finally:
        await fleet.stop()
    answered = [o for o in in_flight if o.status != 0]
    counts = tally(in_flight)
    ok = all(exited) and codes == [0] * len(codes) and len(answered) == len(in_flight)
    ok = ok and committed_requests == answered_ok
    return {
        "pass": ok,
        "exit_codes": codes,
        "stopped_s": round(stopped_s, 2),
        "in_flight_answered": len(answered),
        "committed_offsets": committed,
        "committed_requests": committed_requests,
        "log_end_offsets": log_end,
        "answered_ok_total": answered_ok,
        **counts,
        "summary": f"all {len(codes)} processes exited {set(codes)} within {stopped_s:.1f} s; requests sent before "
        f"the signal: {len(answered)}/{len(in_flight)} got an HTTP answer ({counts['statuses']}); requests in the "
        f"committed records {committed_requests} = requests answered 200 {answered_ok} (records committed "
        f"{committed}, log end {log_end})",
    }


OUTAGE_DRILLS: dict[str, Callable[[Path], Awaitable[dict[str, Any]]]] = {
    "worker-kill": drill_worker_kill,
    "redis-restart": drill_redis_restart,
    "broker-stop": drill_broker_stop,
    "fuzz": drill_fuzz,
    "sigterm-all": drill_sigterm_all,
}
