"""Async jobs over HTTP with real servers: submit → 202 → poll, idempotency, TTL, cancel, deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from fleet.client import FleetClient, job_sync, submit_sync, wait_sync
from fleet.client.errors import ClientError, FleetHTTPError, JobFailedError
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import (
    BatchingConfig,
    ErrorCode,
    FleetSettings,
    InferenceRequest,
    JobStatus,
    ModelRecord,
    Names,
    ReplyAddress,
    ReplyKind,
)
from workers import Worker, WorkerSettings
from workers.jobs import JobClaims

from .module_stack import ModuleStack, module_settings, module_stack
from .offsets import wait_committed


def _reference(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def _body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    body.update(extra)
    return body


async def _submit(
    session: aiohttp.ClientSession, url: str, x: np.ndarray, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[int, Any, Any]:
    async with session.post(f"{url}/v2/models/tiny/infer?async=true", json=_body(x, **extra), headers=headers) as r:
        return r.status, await r.json(), r.headers


async def _job(session: aiohttp.ClientSession, url: str, job_id: str) -> tuple[int, Any]:
    async with session.get(f"{url}/v2/jobs/{job_id}") as r:
        return r.status, await r.json()


async def _wait_status(
    session: aiohttp.ClientSession, url: str, job_id: str, wanted: set[str], timeout_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, doc = await _job(session, url, job_id)
        assert status == 200, doc
        if doc["status"] in wanted:
            return doc  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"job {job_id} still {doc['status']}"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
async def jobs_stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModuleStack]:
    """A gateway and a worker serving ``tiny`` (as the ``tiny_model`` fixture registers it) for the tests whose jobs
    a worker answers; the tests that need no worker, or one started later, have stacks of their own."""
    path = tiny_mlp(tmp_path_factory.mktemp("asyncjobs") / "tiny.onnx")
    record = build_record("tiny", "1", path, batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5))
    async with module_stack(module_settings(kafka_bootstrap, redis_url, "asyncjobs"), [record]) as stack:
        yield stack


def _served(stack: ModuleStack) -> tuple[Gateway, ModelRecord]:
    assert stack.gateway is not None
    return stack.gateway, stack.records["tiny"]


@pytest.fixture
async def short_ttl_gateway(fleet_settings: FleetSettings, tiny_model: ModelRecord) -> AsyncIterator[Gateway]:
    async with Gateway(GatewaySettings(fleet=fleet_settings, port=0, job_ttl_s=1)) as gw:
        await gw.wait_ready()
        yield gw


async def test_submit_poll_done_with_the_right_tensor(jobs_stack: ModuleStack) -> None:
    gateway, tiny_model = _served(jobs_stack)
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    async with aiohttp.ClientSession() as session:
        status, accepted, headers = await _submit(session, gateway.url, x, id="client-7")
        assert status == 202, accepted
        job_id = accepted["job_id"]
        assert accepted["status"] == "pending" and headers["Location"] == f"/v2/jobs/{job_id}"
        doc = await _wait_status(session, gateway.url, job_id, {"done", "failed", "expired"})
        # Prefer: respond-async is the other way to ask
        async with session.post(
            f"{gateway.url}/v2/models/tiny/versions/1/infer", json=_body(x), headers={"Prefer": "respond-async"}
        ) as r:
            assert r.status == 202 and r.headers["Preference-Applied"] == "respond-async"
            other = (await r.json())["job_id"]
        assert (await _wait_status(session, gateway.url, other, {"done", "failed"}))["status"] == "done"
    assert doc["status"] == "done", doc
    assert doc["model"] == "tiny" and doc["version"] == "1" and "error" not in doc
    assert doc["created_ms"] <= doc["started_ms"] < doc["expires_ms"]
    result = doc["result"]
    assert result["id"] == "client-7" and result["model_name"] == "tiny"
    (out,) = result["outputs"]
    y = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(y, _reference(tiny_model, x), rtol=1e-5, atol=1e-6)


async def test_idempotency_key_gives_one_job_and_one_execution(jobs_stack: ModuleStack) -> None:
    gateway, _ = _served(jobs_stack)
    success = jobs_stack.worker.metrics.success.labels("tiny", "1")
    before = success._value.get()  # the module's worker has answered the module's earlier tests
    x = np.ones((1, 16), dtype=np.float32)
    key = {"Idempotency-Key": "order-42"}
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(_submit(session, gateway.url, x, key) for _ in range(5)))
        assert {status for status, _, _ in results} == {202}, results
        job_ids = {accepted["job_id"] for _, accepted, _ in results}
        assert len(job_ids) == 1, job_ids
        assert sum(headers.get("Idempotent-Replayed") == "true" for _, _, headers in results) == 4
        (job_id,) = job_ids
        doc = await _wait_status(session, gateway.url, job_id, {"done", "failed"})
        assert doc["status"] == "done", doc
        # after completion a resubmit still returns the same job, now done
        status, again, headers = await _submit(session, gateway.url, x, key)
        assert status == 202 and again == {"job_id": job_id, "status": "done"}
        # the same key with another body is a conflict
        status, conflict, _ = await _submit(session, gateway.url, x * 2, key)
        assert status == 409 and conflict["code"] == "CONFLICT", conflict
        # the key only makes sense for async requests; bad keys are refused
        async with session.post(f"{gateway.url}/v2/models/tiny/infer", json=_body(x), headers=key) as r:
            assert r.status == 400 and "Idempotency-Key" in (await r.json())["error"]
        status, bad, _ = await _submit(session, gateway.url, x, {"Idempotency-Key": "has space"})
        assert status == 400 and bad["code"] == "INVALID_REQUEST"
    executed = success._value.get() - before
    assert executed == 1, executed  # five submissions, one execution


async def test_job_is_forgotten_after_its_ttl(short_ttl_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        status, accepted, _ = await _submit(session, short_ttl_gateway.url, np.ones((1, 16), dtype=np.float32))
        assert status == 202
        status, doc = await _job(session, short_ttl_gateway.url, accepted["job_id"])
        assert status == 200 and doc["status"] == "pending" and doc["deadline_ms"] <= doc["expires_ms"]
        await asyncio.sleep(1.3)
        status, doc = await _job(session, short_ttl_gateway.url, accepted["job_id"])
    assert status == 404 and doc["code"] == "JOB_NOT_FOUND", doc


async def test_unknown_job_is_404(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        for job_id in ("0" * 32, "not:valid", "x" * 200):
            async with session.get(f"{gateway.url}/v2/jobs/{job_id}") as r:
                assert r.status == 404, job_id
                assert (await r.json())["code"] == "JOB_NOT_FOUND"
        async with session.delete(f"{gateway.url}/v2/jobs/{'0' * 32}") as r:
            assert r.status == 404 and (await r.json())["code"] == "JOB_NOT_FOUND"
        async with session.post(f"{gateway.url}/v2/models/tiny/infer?async=maybe", json={"inputs": []}) as r:
            assert r.status == 400 and (await r.json())["code"] == "INVALID_REQUEST"


async def test_cancelled_pending_job_is_skipped_by_a_later_worker(
    gateway: Gateway, fleet_settings: FleetSettings, tiny_model: ModelRecord, names: Names, redis_client: Any
) -> None:
    x = np.ones((1, 16), dtype=np.float32)
    async with aiohttp.ClientSession() as session:
        _, cancelled_job, _ = await _submit(session, gateway.url, x)
        job_id = cancelled_job["job_id"]
        async with session.delete(f"{gateway.url}/v2/jobs/{job_id}") as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["status"] == "cancelled" and doc["error"]["code"] == "CANCELLED", doc
        async with session.delete(f"{gateway.url}/v2/jobs/{job_id}") as r:
            assert r.status == 200 and (await r.json())["status"] == "cancelled"  # idempotent
        _, later, _ = await _submit(session, gateway.url, x)  # queued behind the cancelled one
        async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker:
            await worker.wait_ready(30)
            done = await _wait_status(session, gateway.url, later["job_id"], {"done", "failed"})
            assert done["status"] == "done", done
            await wait_committed(fleet_settings, names, "tiny", 2)  # the worker went past the cancelled record
            executed = worker.metrics.success.labels("tiny", "1")._value.get()
        status, doc = await _job(session, gateway.url, job_id)
    assert status == 200 and doc["status"] == "cancelled" and doc["started_ms"] is None, doc
    assert executed == 1  # only the later job ran
    assert not await redis_client.hexists(names.job_key(job_id), "worker")


async def test_cancel_running_or_done_is_409(jobs_stack: ModuleStack) -> None:
    (gateway, _), names, redis_client = _served(jobs_stack), jobs_stack.names, jobs_stack.redis
    x = np.ones((1, 16), dtype=np.float32)
    async with aiohttp.ClientSession() as session:
        _, accepted, _ = await _submit(session, gateway.url, x)
        await _wait_status(session, gateway.url, accepted["job_id"], {"done"})
        async with session.delete(f"{gateway.url}/v2/jobs/{accepted['job_id']}") as r:
            body = await r.json()
            assert r.status == 409 and body["code"] == "CONFLICT" and "done" in body["error"], body
        # A job a worker has claimed (the worker's first step for result-kind requests) is running.
        fields = {"model": "tiny", "version": "1", "created_ms": "1", "deadline_ms": repr(time.time() * 1000 + 60_000)}
        job_id = "f" * 32
        await redis_client.hset(names.job_key(job_id), mapping=fields)
        request = InferenceRequest(job_id, "tiny", "1", (), reply=ReplyAddress(ReplyKind.RESULT, ""))
        assert await JobClaims(redis_client, names, "w-test").skipped([request]) == set()
        status, doc = await _job(session, gateway.url, job_id)
        assert status == 200 and doc["status"] == "running", doc
        async with session.delete(f"{gateway.url}/v2/jobs/{job_id}") as r:
            body = await r.json()
            assert r.status == 409 and "running" in body["error"], body


async def test_expired_deadline_reports_expired(
    gateway: Gateway, fleet_settings: FleetSettings, tiny_model: ModelRecord, names: Names
) -> None:
    x = np.ones((1, 16), dtype=np.float32)
    async with aiohttp.ClientSession() as session:
        _, accepted, _ = await _submit(session, gateway.url, x, parameters={"timeout_ms": 150})
        job_id = accepted["job_id"]
        await asyncio.sleep(0.3)
        status, doc = await _job(session, gateway.url, job_id)
        assert status == 200 and doc["status"] == "expired", doc
        assert doc["error"]["code"] == "DEADLINE_EXCEEDED"
        async with session.delete(f"{gateway.url}/v2/jobs/{job_id}") as r:
            assert r.status == 409 and "expired" in (await r.json())["error"]
        # the worker that gets to it later answers DEADLINE_EXCEEDED without running the model
        async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker:
            await worker.wait_ready(30)
            _, later, _ = await _submit(session, gateway.url, x)
            await _wait_status(session, gateway.url, later["job_id"], {"done"})
            await wait_committed(fleet_settings, names, "tiny", 2)
            executed = worker.metrics.success.labels("tiny", "1")._value.get()
        status, doc = await _job(session, gateway.url, job_id)
    assert status == 200 and doc["status"] == "expired" and doc["error"]["code"] == "DEADLINE_EXCEEDED", doc
    assert "deadline passed" in doc["error"]["message"]  # the worker's stored answer, not the derived one
    assert executed == 1


async def test_sdk_submit_wait_cancel(gateway: Gateway, fleet_settings: FleetSettings, tiny_model: ModelRecord) -> None:
    x = np.random.default_rng(9).standard_normal((3, 16)).astype(np.float32)
    async with FleetClient(gateway.url, timeout_s=20) as client:
        # no worker yet: pending, result() is None, wait() times out, cancel() works
        pending = await client.submit("tiny", {"x": x})
        assert (await client.job(pending)).status is JobStatus.PENDING
        assert await client.result(pending) is None
        with pytest.raises(ClientError) as timed_out:
            await client.wait(pending, timeout_s=0.1)
        assert timed_out.value.code is ErrorCode.DEADLINE_EXCEEDED
        cancelled = await client.cancel(pending)
        assert cancelled.status is JobStatus.CANCELLED and cancelled.finished
        with pytest.raises(JobFailedError) as failed:
            await client.wait(pending)
        assert failed.value.code is ErrorCode.CANCELLED and failed.value.status == "cancelled"
        with pytest.raises(FleetHTTPError) as unknown:
            await client.job("0" * 32)
        assert unknown.value.status == 404 and unknown.value.code is ErrorCode.JOB_NOT_FOUND

        job_id = await client.submit("tiny", {"x": x}, idempotency_key="sdk-1", outputs=["y"], request_id="mine")
        assert (
            await client.submit("tiny", {"x": x}, idempotency_key="sdk-1", outputs=["y"], request_id="mine") == job_id
        )
        async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker:
            await worker.wait_ready(30)
            result = await client.wait(job_id)
            sync_id = await asyncio.to_thread(submit_sync, gateway.url, "tiny", {"x": x}, version="1")
            sync_result = await asyncio.to_thread(wait_sync, gateway.url, sync_id, 20.0)
            with pytest.raises(FleetHTTPError) as conflict:
                await client.cancel(job_id)
            assert conflict.value.status == 409 and conflict.value.code is ErrorCode.CONFLICT
    expected = _reference(tiny_model, x)
    assert result.id == "mine" and result.model == "tiny" and result.model_version == "1"
    np.testing.assert_allclose(result["y"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sync_result["y"], expected, rtol=1e-5, atol=1e-6)
    assert (await asyncio.to_thread(job_sync, gateway.url, job_id)).status is JobStatus.DONE


async def test_result_route_answers_what_the_sync_request_would_have(jobs_stack: ModuleStack) -> None:
    gateway, tiny_model = _served(jobs_stack)
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    expected = _reference(tiny_model, x)
    async with aiohttp.ClientSession() as session:
        _, accepted, _ = await _submit(session, gateway.url, x, id="client-9")
        job_id = accepted["job_id"]
        await _wait_status(session, gateway.url, job_id, {"done"})
        async with session.get(f"{gateway.url}/v2/jobs/{job_id}/result") as r:
            assert r.status == 200 and r.content_type == "application/json"
            answer = await r.json()
        assert answer["id"] == "client-9" and answer["model_name"] == "tiny"
        (out,) = answer["outputs"]
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), expected, rtol=1e-5)
        async with session.get(f"{gateway.url}/v2/jobs/{job_id}/result?binary=true") as r:
            assert r.status == 200 and r.content_type == "application/octet-stream"
            header_length = int(r.headers["Inference-Header-Content-Length"])
            raw = await r.read()
        header = json.loads(raw[:header_length])
        (out,) = header["outputs"]
        assert out["parameters"]["binary_data_size"] == len(raw) - header_length
        y = np.frombuffer(raw[header_length:], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
        async with session.get(f"{gateway.url}/v2/jobs/{job_id}/result?binary=maybe") as r:
            assert r.status == 400 and (await r.json())["code"] == "INVALID_REQUEST"


async def test_result_route_is_409_while_pending_and_the_error_once_expired(
    gateway: Gateway, tiny_model: ModelRecord
) -> None:
    x = np.ones((1, 16), dtype=np.float32)
    async with aiohttp.ClientSession() as session:  # no worker: the job stays pending until its deadline
        status, accepted, _ = await _submit(session, gateway.url, x, headers={"X-Fleet-Timeout-Ms": "300"})
        assert status == 202, accepted
        result_url = f"{gateway.url}/v2/jobs/{accepted['job_id']}/result"
        async with session.get(result_url) as r:
            answer = await r.json()
            assert r.status == 409 and answer["code"] == "CONFLICT" and "pending" in answer["error"], answer
        await asyncio.sleep(0.4)
        async with session.get(result_url) as r:
            answer = await r.json()
        assert r.status == 504 and answer["code"] == "DEADLINE_EXCEEDED", answer
        async with session.get(f"{gateway.url}/v2/jobs/{'0' * 32}/result") as r:
            assert r.status == 404 and (await r.json())["code"] == "JOB_NOT_FOUND"
