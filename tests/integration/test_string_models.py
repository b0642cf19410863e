"""String-in/string-out ONNX models through the whole path: text reaches ONNX Runtime as text, a
non-UTF-8 element is that request's 400 INVALID_INPUT, and ``fleet models verify`` compares answers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.client import FleetClient
from fleet.client.errors import FleetHTTPError
from fleet.models.artifacts import build_record
from fleet.models.verify import verify
from gateway import Gateway
from schemas import BatchingConfig, ModelRecord, Tensor, sha256_file
from tests.onnxgraphs import string_model, words
from workers import Worker

from .module_stack import ModuleStack, module_settings, module_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModuleStack]:
    """One gateway and one worker serving the string model ``words`` (version 1, example input "abc") for the
    module: its tests only send requests."""
    example = (Tensor.from_numpy("s", words(b"abc")),)
    record = build_record(
        "words",
        "1",
        string_model(tmp_path_factory.mktemp("strings") / "words.onnx"),
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=20),
        example=example,
    )
    async with module_stack(module_settings(kafka_bootstrap, redis_url, "strings"), [record]) as stack:
        yield stack


@pytest.fixture
def gateway(stack: ModuleStack) -> Gateway:
    assert stack.gateway is not None
    return stack.gateway


@pytest.fixture
def words_model(stack: ModuleStack) -> ModelRecord:
    return stack.records["words"]


@pytest.fixture
def words_worker(stack: ModuleStack) -> Worker:
    return stack.worker


async def test_json_strings_reach_the_model_as_text(gateway: Gateway, words_worker: Worker) -> None:
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3, 1], "data": ["abc", "x", "é"]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.url}/v2/models/words/infer", json=body) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
    outputs = {out["name"]: out for out in answer["outputs"]}
    assert outputs["eq"]["datatype"] == "BOOL" and outputs["eq"]["data"] == [True, False, False]
    assert outputs["echo"]["datatype"] == "BYTES" and outputs["echo"]["data"] == ["abc", "x", "é"]


async def test_a_non_utf8_element_is_invalid_input_for_its_request_only(gateway: Gateway, words_worker: Worker) -> None:
    async with FleetClient(gateway.url, timeout_s=20) as client:

        async def ask(*items: bytes) -> Any:
            try:
                return await client.infer("words", {"s": words(*items)})
            except FleetHTTPError as exc:
                return exc

        # Sent together so that they can share a batch: the bad one must not fail the good ones.
        good, bad, other = await asyncio.gather(ask(b"abc"), ask(b"abc", b"\xffabc"), ask(b"x"))
    assert isinstance(bad, FleetHTTPError), bad
    assert bad.status == 400 and bad.code.value == "INVALID_INPUT"
    assert "input 's': element 1 is not UTF-8 text" in bad.message
    assert good.outputs["eq"].tolist() == [[True]] and good.outputs["echo"].tolist() == [[b"abc"]]
    assert other.outputs["eq"].tolist() == [[False]] and other.outputs["echo"].tolist() == [[b"x"]]


async def test_verify_passes_when_the_answer_matches_a_local_onnx_runtime_run(
    gateway: Gateway, words_worker: Worker, words_model: ModelRecord
) -> None:
    async with FleetClient(gateway.url, timeout_s=20) as client:
        report = await verify(client, words_model)
    assert report.ok, report.line()
    assert "matches a local ONNX Runtime run" in report.line()


async def test_verify_fails_when_the_answer_differs_from_the_artifact(
    gateway: Gateway, words_worker: Worker, words_model: ModelRecord, tmp_path: Path
) -> None:
    # The fleet serves the "abc" model; the local artifact of this record answers for "xyz".
    other = string_model(tmp_path / "other.onnx", word="xyz")
    record = dataclasses.replace(words_model, artifact=str(other), sha256=sha256_file(other))
    async with FleetClient(gateway.url, timeout_s=20) as client:
        report = await verify(client, record)
    line = report.line()
    assert not report.ok and line.startswith("FAIL words v1")
    assert "output 'eq' differs from the local run at [0, 0]: True, expected False" in line
