"""Large bodies are decoded off the event loop: while one is decoded, small requests keep being answered."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway import Gateway, GatewaySettings
from gateway.errors import OverloadedError
from gateway.limits import LargeBodies
from schemas import ErrorCode, ModelRecord, Names

from .conftest import wait_ready

INFER = "/v2/models/tiny/infer"


def _empty_bytes_elements(count: int) -> bytes:
    """An FP32 model's input sent as ``count`` empty BYTES elements: a 400, after a long decode."""
    data = b",".join([b'""'] * count)
    return b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[%d],"data":[%s]}]}' % (count, data)


async def test_small_requests_are_answered_while_a_large_bad_body_is_decoded(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    big = _empty_bytes_elements(5_000_000)  # ~15 MiB: seconds of decoding
    async with Gateway(gateway_settings, names=names) as gw:
        await wait_ready(http, gw)
        large = asyncio.create_task(http.post(gw.url + INFER, data=big, headers={"Content-Type": "application/json"}))
        answered_meanwhile = 0
        async with asyncio.timeout(60):
            while not large.done():
                async with http.get(gw.url + "/v2/models/tiny") as resp:
                    assert resp.status == 200
                if not large.done():
                    answered_meanwhile += 1
        async with await large as resp:
            answer = await resp.json()
        assert resp.status == 400 and answer["code"] == "INVALID_INPUT"
        # The loop answered small requests all along (on the loop, the decode stalled them for its whole length).
        assert answered_meanwhile >= 100, answered_meanwhile
        async with http.get(gw.url + "/v2/health/ready") as resp:
            assert resp.status == 200  # and never concluded that its backends were down


async def test_large_bodies_take_turns_and_one_that_waits_too_long_is_overloaded() -> None:
    bodies = LargeBodies(slots=1, inline_bytes=1000, wait_s=0.05)
    async with bodies.turn(5000):
        async with bodies.turn(10):  # small bodies never wait
            pass
        async with bodies.turn(None):  # nor chunked ones (not known to be large)
            pass
        with pytest.raises(OverloadedError) as info:
            async with bodies.turn(5000):
                pass
        assert info.value.code is ErrorCode.OVERLOADED
        assert "1 large body is being read and decoded" in info.value.message
    async with bodies.turn(5000):  # the turn was given back
        pass
