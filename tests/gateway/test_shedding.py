"""Deadline-aware shedding: a sync request that would wait past its timeout is refused at once (503 OVERLOADED)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway import Gateway
from gateway.errors import OverloadedError
from gateway.shedding import ModelQueues
from schemas import InferenceRequest, ModelRecord, Names

from .conftest import deliver, mlp_response


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answered(queues: ModelQueues, model: str, count: int) -> None:
    for _ in range(count):
        queues.admit(model, 60.0)
        queues.done(model, answered=True)


def test_nothing_is_shed_before_the_rate_is_known() -> None:
    queues = ModelQueues(window_s=5.0, min_answers=20, clock=Clock())
    answered(queues, "m", 19)
    for _ in range(1000):
        queues.admit("m", 0.001)  # thousands waiting, but 19 answers say nothing yet
    assert queues.expected_wait_s("m") is None


@pytest.mark.parametrize(
    ("waiting", "timeout_s", "shed"),
    [
        (0, 1.0, False),
        (10, 1.0, False),  # 20 answers/s: 10 waiting -> 0.5 s, not more than half the timeout
        (11, 1.0, True),  # 11 / 20 = 0.55 s > 0.5 s
        (30, 3.0, False),
        (200, 9.0, True),  # 10 s > 4.5 s
    ],
)
def test_a_request_is_shed_when_its_expected_wait_exceeds_half_its_timeout(
    waiting: int, timeout_s: float, shed: bool
) -> None:
    clock = Clock()
    queues = ModelQueues(window_s=5.0, min_answers=20, clock=clock)
    for _ in range(10):  # 100 answers over the 5 s window: 20/s
        answered(queues, "m", 10)
        clock.now += 0.5
    clock.now -= 0.5
    for _ in range(waiting):
        queues.admit("m", 60.0)
    if shed:
        with pytest.raises(OverloadedError) as info:
            queues.admit("m", timeout_s)
        assert info.value.headers["Retry-After"].isdigit()
        assert "too long for its" in info.value.message
    else:
        queues.admit("m", timeout_s)


def test_models_are_judged_apart_and_old_answers_expire() -> None:
    clock = Clock()
    queues = ModelQueues(window_s=5.0, min_answers=2, clock=clock)
    answered(queues, "slow", 2)  # 4/s: 2 answers in one 0.5 s bucket
    answered(queues, "fast", 50)  # 100/s
    for _ in range(100):
        queues.admit("fast", 60.0)
    queues.admit("fast", 2.5)  # 100 waiting at 100/s: 1 s, within half of 2.5 s
    with pytest.raises(OverloadedError):
        for _ in range(100):
            queues.admit("slow", 2.0)
    clock.now += 6.0  # the window moved past every answer: the rate is unknown again
    assert queues.rate("slow") is None
    queues.admit("slow", 0.01)


def test_a_request_that_timed_out_does_not_count_as_an_answer() -> None:
    queues = ModelQueues(window_s=5.0, min_answers=1, clock=Clock())
    queues.admit("m", 1.0)
    queues.done("m", answered=False)
    assert queues.rate("m") is None
    assert queues.expected_wait_s("m") is None


async def _slow_worker(consumer: Any, redis: Any, names: Names, per_request_s: float) -> None:
    """Answers one request at a time, ``per_request_s`` each: a model at its capacity."""
    while True:
        message = await consumer.getone()
        request = InferenceRequest.from_bytes(message.value)
        await asyncio.sleep(per_request_s)
        await deliver(redis, names, request, mlp_response(request))


async def _infer(http: aiohttp.ClientSession, gateway: Gateway, timeout_ms: int) -> tuple[int, str]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    async with http.post(
        f"{gateway.url}/v2/models/tiny/infer", json=body, headers={"X-Fleet-Timeout-Ms": str(timeout_ms)}
    ) as response:
        doc = await response.json()
        if response.status == 503:
            assert response.headers["Retry-After"].isdigit()
        return response.status, str(doc.get("code", ""))


async def test_past_capacity_late_requests_get_503_at_once_instead_of_504(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    requests_topic: Any,
    redis_client: Any,
    names: Names,
    registered: ModelRecord,
) -> None:
    worker = asyncio.create_task(_slow_worker(requests_topic, redis_client, names, per_request_s=0.01))
    try:
        for _ in range(30):  # the gateway learns the model's rate from these answers
            assert await _infer(http, gateway, 5_000) == (200, "")
        # A burst of 10x what the model answers within the timeout.
        outcomes = Counter(await asyncio.gather(*(_infer(http, gateway, 1_000) for _ in range(600))))
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    statuses = Counter(status for status, _ in outcomes.elements())
    assert set(statuses) <= {200, 503, 504}, outcomes
    assert outcomes[(503, "OVERLOADED")] >= 300, outcomes  # the excess is refused at the door
    assert statuses[200] >= 10, outcomes  # the model keeps answering (about its rate x the timeout)
    # Without shedding most of the burst waits out its timeout and gets 504.
    assert statuses[504] <= 60, outcomes
