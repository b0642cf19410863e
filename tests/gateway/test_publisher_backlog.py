"""A publish that waits for the gateway's own backed-up Kafka producer is overload (503 OVERLOADED), not an
unreachable broker: the cluster is asked, and answers."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from gateway.errors import OverloadedError
from gateway.publisher import RequestPublisher
from schemas import ErrorCode, FleetSettings, InferenceRequest, Names, ReplyAddress, ReplyKind, Tensor, now_ms

pytestmark = pytest.mark.integration


async def test_a_hand_over_that_waits_on_a_backed_up_producer_is_overload(
    fleet_settings: FleetSettings, names: Names
) -> None:
    publisher = RequestPublisher(fleet_settings.kafka, timeout_s=0.3)
    await publisher.start()
    try:
        async with asyncio.timeout(30):
            for _ in iter(lambda: publisher.connected, True):
                await asyncio.sleep(0.05)
        producer: Any = publisher._producer  # the seam: its buffer is full, so send() waits for room

        async def backed_up(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(3600)

        producer.send = backed_up
        request = InferenceRequest(
            id="r1",
            model="tiny",
            version="1",
            inputs=(Tensor.from_numpy("x", np.zeros((1, 4), np.float32)),),
            reply=ReplyAddress(ReplyKind.RESULT, ""),
            deadline_ms=now_ms() + 10_000,
            created_ms=now_ms(),
        )
        with pytest.raises(OverloadedError) as info:
            await publisher.publish(names.request_topic("tiny"), request)
        assert info.value.code is ErrorCode.OVERLOADED
        assert "waited over 0.3 s for the Kafka producer" in info.value.message
        assert info.value.headers["Retry-After"] == "1"
        assert await publisher.check() is None  # and the breaker did not trip: other models publish as usual
    finally:
        await publisher.stop()
