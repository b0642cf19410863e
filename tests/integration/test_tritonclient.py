"""An existing OIP v2 client (NVIDIA's tritonclient.http) talks to the gateway unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from gateway import Gateway
from schemas import FleetSettings, ModelRecord
from workers import Worker, WorkerSettings

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


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_infer(
    binary: bool, gateway: Gateway, fleet_settings: FleetSettings, tiny_model: ModelRecord
) -> None:
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker:
        await worker.wait_ready(30)
        answer = await asyncio.to_thread(_infer, gateway.url, x, binary)
    assert answer["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    expected = ort.InferenceSession(tiny_model.artifact, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(answer["y"], expected, rtol=1e-5, atol=1e-6)
