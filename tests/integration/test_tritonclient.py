"""An existing OIP v2 client (NVIDIA's tritonclient.http) talks to the gateway unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import BatchingConfig

from .module_stack import ModuleStack, module_settings, module_stack

httpclient = pytest.importorskip("tritonclient.http")


def _infer(url: str, x: np.ndarray, binary: bool) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        metadata = client.get_model_metadata("tiny")
        assert client.is_model_ready("tiny")
        assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY"}]
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("tiny", [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
        return {"metadata": metadata, "y": result.as_numpy("y")}
    finally:
        client.close()


@pytest.fixture(scope="module")
async def stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModuleStack]:
    """A gateway and a worker serving ``tiny`` (as the ``tiny_model`` fixture registers it) for both encodings."""
    path = tiny_mlp(tmp_path_factory.mktemp("tritonclient") / "tiny.onnx")
    record = build_record("tiny", "1", path, batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5))
    async with module_stack(module_settings(kafka_bootstrap, redis_url, "tritonclient"), [record]) as stack:
        yield stack


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_infer(binary: bool, stack: ModuleStack) -> None:
    assert stack.gateway is not None
    gateway, tiny_model = stack.gateway, stack.records["tiny"]
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    answer = await asyncio.to_thread(_infer, gateway.url, x, binary)
    assert answer["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    expected = ort.InferenceSession(tiny_model.artifact, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(answer["y"], expected, rtol=1e-5, atol=1e-6)
