"""The request id runs end to end through the JSON logs: the gateway's lines and the worker's (a real
``python -m workers`` with ``FLEET_LOG_FORMAT=json``) carry the id the client gets back in ``X-Request-Id``;
it travels in the request envelope and the ``fleet-request-id`` Kafka header."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway import Gateway
from schemas import ModelRecord, Names
from schemas.logs import JsonFormatter

from .conftest import WorkerProcess, wait_worker_ready

BODY = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}


@pytest.fixture
def gateway_log() -> Iterator[io.StringIO]:
    """The in-process gateway's log lines, formatted as a deployed gateway writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fleet.gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` that is a JSON log object."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def wait_for_line(worker: WorkerProcess, request_id: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """The worker's JSON lines once one of them names ``request_id``."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = json_lines(worker.log())
        if any(request_id in line.get("request_ids", ()) for line in lines) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)


async def test_request_id_in_gateway_and_worker_json_logs(
    gateway: Gateway,
    tiny_model: ModelRecord,
    worker_factory: Any,
    redis_client: Any,
    names: Names,
    gateway_log: io.StringIO,
) -> None:
    worker = worker_factory(FLEET_LOG_FORMAT="json", FLEET_LOG_LEVEL="DEBUG")
    await wait_worker_ready(redis_client, names, worker)
    url = f"{gateway.url}/v2/models/tiny/infer"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=BODY) as response:
            assert response.status == 200, await response.text()
            request_id = response.headers["X-Request-Id"]
        async with http.post(url, json=BODY, headers={"X-Request-Id": "client-7"}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["X-Request-Id"] == "client-7"

    gateway_lines = json_lines(gateway_log.getvalue())
    assert all(line["logger"].startswith("fleet.gateway") for line in gateway_lines)
    access = [line for line in gateway_lines if line.get("request_id") == request_id]
    assert access and access[0]["msg"] == "POST /v2/models/tiny/infer 200", gateway_lines
    # A client's own X-Request-Id is logged beside the wire id that the worker sees.
    (client,) = [line for line in gateway_lines if line.get("client_request_id") == "client-7"]
    assert client["request_id"] != request_id

    worker_lines = await wait_for_line(worker, request_id)
    ran = [line for line in worker_lines if request_id in line.get("request_ids", ())]
    assert ran, worker.log()[-3000:]
    assert ran[0]["logger"] == "fleet.workers" and "ran a batch" in ran[0]["msg"]
    worker_lines = await wait_for_line(worker, client["request_id"])
    assert any(client["request_id"] in line.get("request_ids", ()) for line in worker_lines)
