"""A body that arrived whole with its head is taken without waiting (the common case); the same limits and the
same answer as for a body that arrives in pieces."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np

from gateway import Gateway, GatewaySettings
from schemas import ModelRecord, Names

from .conftest import serve_one, wait_ready
from .test_intake import _answer, _head, _open

X = np.arange(32, dtype=np.float32).reshape(2, 16)
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": X.ravel().tolist()}]})


def _chunked(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"


async def test_a_whole_body_and_one_in_pieces_are_read_alike_and_the_limit_holds_for_both(
    gateway_settings: GatewaySettings,
    names: Names,
    registered: ModelRecord,
    http: aiohttp.ClientSession,
    requests_topic: Any,
    redis_client: Any,
) -> None:
    payload = BODY.encode()
    settings = replace(gateway_settings, max_body_bytes=1024)  # over the body, and over its queued envelope
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)
        for pieces in ([payload], [payload[:40], payload[40:]]):  # whole with the head; then in two writes
            reader, writer = await _open(gw)
            writer.write(_head(len(payload)) + pieces[0])
            await writer.drain()
            answered = asyncio.create_task(_answer(reader))
            for piece in pieces[1:]:
                await asyncio.sleep(0.05)  # the handler has started and waits for the rest
                writer.write(piece)
                await writer.drain()
            _, request = await serve_one(requests_topic, redis_client, names)
            async with asyncio.timeout(10):
                status, _, body = await answered
            writer.close()
            assert status == 200, body
            np.testing.assert_array_equal(request.inputs[0].to_numpy(), X)
        # A chunked body (no Content-Length to refuse it by) over the limit, arrived whole: 413 all the same.
        reader, writer = await _open(gw)
        writer.write(_head(None) + _chunked(payload + b" " * 1024))
        await writer.drain()
        async with asyncio.timeout(10):
            status, _, body = await _answer(reader)
        writer.close()
        assert (status, body["code"]) == (413, "PAYLOAD_TOO_LARGE"), body
