"""Directory artifacts through the whole path (gateway, Kafka, worker, Redis), answers compared with the same model
run in-process: a tiny Hugging Face BERT (tokenizer trained in code) for text-classification (a directory),
feature-extraction (a .tar.gz, normalized mean pooling) and token-classification (a directory); an ONNX model
whose weights are an external data file, as a directory and as a .tar.gz; the same ONNX directory from an S3
prefix and an S3 archive (a local moto server) with the credentials from the environment, served again by a
fresh worker after the credentials are rotated.

One stack (gateway + one worker serving every local model) for the module: the models are tiny, the stack is not.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.client import FleetClient
from fleet.client.errors import FleetHTTPError
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, Framework, ModelRecord, ModelRegistry, Names
from schemas.registry import DIRECTORY
from schemas.topics import ensure_model_topics
from tests import textmodels
from tests.integration.test_any_models import _settings
from workers import Worker, WorkerSettings

pytest.importorskip("transformers")
pytestmark = pytest.mark.integration

TEXTS = np.array([text.encode() for text in textmodels.TEXTS], dtype=object)
X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)


@dataclass
class Stack:
    """The module's gateway URL, its models' records and the in-process BERTs (model, tokenizer) by task."""

    url: str
    records: dict[str, ModelRecord]
    local: dict[str, tuple[Any, Any]]
    w: np.ndarray[Any, Any]
    directory: Path


def _records(directory: Path) -> tuple[dict[str, ModelRecord], dict[str, tuple[Any, Any]], np.ndarray[Any, Any]]:
    """Each model saved and registered as `fleet models register` would (framework, task and signature inferred)."""
    local: dict[str, tuple[Any, Any]] = {}
    paths: dict[str, Path] = {}
    for task in ("text-classification", "feature-extraction", "token-classification"):
        path, model, tokenizer = textmodels.bert(directory / task, task)
        paths[task], local[task] = path, (model, tokenizer)
    fe_archive = textmodels.tar_gz(paths["feature-extraction"], directory / "fe.tar.gz", top="bert")
    onnx_dir, w = textmodels.onnx_with_external_data(directory / "onnx-ext")
    built = {
        "tc": build_record("tc", "1", paths["text-classification"], load=True),
        "fe": build_record("fe", "1", fe_archive, load=True, options={"normalize": "true"}),
        "tok": build_record("tok", "1", paths["token-classification"], load=True),
        "ox": build_record("ox", "1", onnx_dir, load=True),
        "oxt": build_record("oxt", "1", textmodels.tar_gz(onnx_dir, directory / "onnx.tgz"), load=True),
    }
    return built, local, w


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    names = Names(f"t-textmodels-{uuid.uuid4().hex[:8]}")
    settings = _settings(kafka_bootstrap, redis_url, names)
    directory = tmp_path_factory.mktemp("textmodels")
    records, local, w = await asyncio.to_thread(_records, directory)
    redis = settings.redis.client()
    registry = ModelRegistry(redis, names)
    for record in records.values():
        await registry.register(record)
        await ensure_model_topics(settings.kafka, names, record.name)
    worker_settings = WorkerSettings(models=tuple(records), fleet=settings, cache_dir=str(directory / "cache"))
    try:
        async with Gateway(GatewaySettings(fleet=settings, port=0, default_timeout_s=30.0)) as gateway:
            await gateway.wait_ready()
            async with Worker(worker_settings) as worker:
                await worker.wait_ready(90)
                yield Stack(gateway.url, records, local, w, directory)
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()


async def _infer(url: str, model: str, inputs: dict[str, Any], rows_per_request: int = 1) -> dict[str, Any]:
    """``inputs`` sent as concurrent requests of ``rows_per_request`` rows (so that they batch), answers joined."""
    async with FleetClient(url, timeout_s=30) as client:
        count = len(next(iter(inputs.values())))
        parts = [
            {name: array[start : start + rows_per_request] for name, array in inputs.items()}
            for start in range(0, count, rows_per_request)
        ]
        answers = await asyncio.gather(*(client.infer(model, part) for part in parts))
    return {name: np.concatenate([a.outputs[name] for a in answers]) for name in answers[0].outputs}


def _in_process(stack: Stack, task: str) -> tuple[Any, Any]:
    """The in-process model's output on all TEXTS at once (padded to the longest of them) and the encoding."""
    import torch

    model, tokenizer = stack.local[task]
    encoded = tokenizer([t.decode() for t in TEXTS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**encoded), encoded


async def test_text_classification_answers_logits_and_labels_as_the_model_does(stack: Stack) -> None:
    record = stack.records["tc"]
    assert (record.framework, record.task, record.layout) == (Framework.TRANSFORMERS, "text-classification", DIRECTORY)
    assert [s.describe() for s in record.outputs] == ["logits:FP32[-1, 3]", "label:BYTES[-1]"]
    answer = await _infer(stack.url, "tc", {"text": TEXTS})
    output, _ = _in_process(stack, "text-classification")
    logits = output.logits.numpy()
    assert np.allclose(answer["logits"], logits, atol=1e-5)
    assert answer["label"].tolist() == [textmodels.LABELS[i].encode() for i in logits.argmax(-1)]


async def test_feature_extraction_from_an_archive_pools_and_normalizes(stack: Stack) -> None:
    assert stack.records["fe"].artifact.endswith("fe.tar.gz") and stack.records["fe"].layout == DIRECTORY
    answer = await _infer(stack.url, "fe", {"text": TEXTS}, rows_per_request=2)
    output, encoded = _in_process(stack, "feature-extraction")
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    pooled = ((output.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy()
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert answer["embedding"].shape == (len(TEXTS), 32)
    assert np.allclose(answer["embedding"], expected, atol=1e-5)


async def test_token_classification_labels_each_token_padded_to_max_length(stack: Stack) -> None:
    assert [s.describe() for s in stack.records["tok"].outputs] == ["tokens:BYTES[-1, 64]", "labels:BYTES[-1, 64]"]
    answer = await _infer(stack.url, "tok", {"text": TEXTS})
    output, encoded = _in_process(stack, "token-classification")
    _, tokenizer = stack.local["token-classification"]
    predicted = output.logits.argmax(-1)
    for row, text in enumerate(TEXTS):
        words = tokenizer.tokenize(text.decode())
        count = len(words)
        labels = [textmodels.ENTITIES[int(i)].encode() for i in predicted[row, 1 : 1 + count]]  # after [CLS]
        assert answer["tokens"][row].tolist() == [w.encode() for w in words] + [b""] * (64 - count)
        assert answer["labels"][row].tolist() == labels + [b""] * (64 - count)


async def test_text_that_is_not_utf8_is_refused_alone(stack: Stack) -> None:
    async with FleetClient(stack.url, timeout_s=30) as client:
        with pytest.raises(FleetHTTPError) as refused:
            await client.infer("tc", {"text": np.array([b"\xff\xfe"], dtype=object)})
    assert refused.value.status == 400 and "UTF-8" in refused.value.message


async def test_onnx_with_external_data_serves_from_a_directory_and_an_archive(stack: Stack) -> None:
    for model in ("ox", "oxt"):
        assert stack.records[model].layout == DIRECTORY
        answer = await _infer(stack.url, model, {"x": X}, rows_per_request=2)
        assert np.allclose(answer["y"], X @ stack.w, atol=1e-6), model
    assert stack.records["ox"].sha256 == stack.records["oxt"].sha256  # the same files, hashed over the manifest


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3 server (moto); the endpoint and a first set of credentials in the environment."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFIRSTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _upload(directory: Path, archive: Path) -> None:
    """``directory``'s files under the prefix ext/; then, with a file more (so that its manifest differs from the
    prefix's and a worker fetches both), as archives/ext.tar.gz."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "models", f"ext/{path.relative_to(directory).as_posix()}")
    (directory / "NOTES").write_text("packed\n")
    client.upload_file(str(textmodels.tar_gz(directory, archive)), "models", "archives/ext.tar.gz")


async def test_an_s3_prefix_and_archive_serve_with_the_environments_credentials_before_and_after_rotation(
    s3: str, fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    onnx_dir, w = textmodels.onnx_with_external_data(tmp_path / "onnx-ext")
    await asyncio.to_thread(_upload, onnx_dir, tmp_path / "ext.tar.gz")
    registry = ModelRegistry(redis_client, names)
    urls = {"sp": "s3://models/ext/", "sa": "s3://models/archives/ext.tar.gz"}
    for name, url in urls.items():
        record = await asyncio.to_thread(build_record, name, "1", url, load=True)
        assert (record.artifact, record.layout) == (url, DIRECTORY)
        wire = record.to_bytes()
        assert b"AKIAFIRSTKEY" not in wire and b"first-secret" not in wire and s3.encode() not in wire
        await registry.register(record)
        await ensure_model_topics(fleet_settings.kafka, names, name)
    x = X[:2]
    for round_, key in enumerate(("AKIAFIRSTKEY", "AKIASECONDKEY")):
        if round_:  # rotated: the old key is gone from the environment, a new worker reads the new one
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "second-secret")
        assert os.environ["AWS_ACCESS_KEY_ID"] == key
        cache = tmp_path / f"cache-{round_}"  # a fresh worker cache: everything is fetched again
        settings = WorkerSettings(models=tuple(urls), fleet=fleet_settings, cache_dir=str(cache))
        async with Worker(settings) as worker, FleetClient(gateway.url, timeout_s=30) as client:
            await worker.wait_ready(60)
            for name in urls:
                answer = await client.infer(name, {"x": x})
                assert np.allclose(answer.outputs["y"], x @ w, atol=1e-6), (round_, name)
        cached = sorted(p.name for p in cache.rglob("*") if p.is_file())
        assert cached == ["NOTES", "model.onnx", "model.onnx", "weights.bin", "weights.bin"]  # both, fetched now
