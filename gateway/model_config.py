"""Triton's model configuration and statistics extensions: ``GET /v2/models/{m}[/versions/{v}]/config`` and
``GET /v2/models[/{m}[/versions/{v}]]/stats``, in the JSON shapes ``tritonclient.http`` (and Triton's
benchmarking tools, which read the configuration at start-up) expect. The gRPC service parses the same
documents into Triton's messages (``ModelConfig``, ``ModelStatistics``): one description, both protocols.

The configuration comes from the registry: name, platform and backend, ``max_batch_size`` (0 for a model
that does not batch; otherwise dims leave out the batch dimension, as in Triton), inputs and outputs,
``dynamic_batching`` with the queue delay, and one instance group counting the workers that serve the model.

The statistics are the sums of what the live workers of the model last reported (``schemas.stats``, every
heartbeat): counters since each worker started, so a worker that stopped takes its counts with it. The
counts cover every version of the model (workers count per model): ``inference_count`` and
``inference_stats.success`` count requests run successfully, ``execution_count`` model executions (batches),
``queue`` and ``compute_infer`` their summed queue and compute times; ``fail`` counts requests answered with
an error (their durations are not measured: ns 0).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from schemas import ModelRecord, Names, TensorSpec
from schemas.apikeys import ApiKey
from schemas.stats import WorkerReport

from .auth import API_KEY
from .errors import redis_bounded
from .infer_path import InferPath

#: Platform and backend names Triton's tools know, by the registry's framework value.
PLATFORMS = {
    "onnx": ("onnxruntime_onnx", "onnxruntime"),
    "torchscript": ("pytorch_libtorch", "pytorch"),
    "torch": ("pytorch", "pytorch"),
    "torch-export": ("pytorch", "pytorch"),
}
_NS_PER_MS = 1_000_000


def data_type(datatype: str) -> str:
    """Triton's model-configuration type of an OIP datatype (``FP32`` -> ``TYPE_FP32``, BYTES -> TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {"name": spec.name, "data_type": data_type(spec.datatype), "dims": dims}


def model_config(record: ModelRecord, reports: list[WorkerReport]) -> dict[str, Any]:
    """The Triton model configuration of ``record``, served by the workers that sent ``reports``."""
    platform, backend = PLATFORMS.get(record.framework.value, (record.framework.value, record.framework.value))
    batched = record.batched
    gpu = any(r.gpu_utilization is not None for r in reports)
    config: dict[str, Any] = {
        "name": record.name,
        "platform": platform,
        "backend": backend,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": record.batching.max_batch_size if batched else 0,
        "input": [_tensor(s, batched) for s in record.inputs],
        "output": [_tensor(s, batched) for s in record.outputs],
        "instance_group": [
            {"name": record.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": len(reports)},
        ],
        "parameters": {"fleet_version": {"string_value": record.version}},
    }
    if batched:
        delay_us = round(record.batching.max_queue_delay_ms * 1000)
        config["dynamic_batching"] = {"max_queue_delay_microseconds": delay_us}
    return config


def _duration(count: int, ms: float) -> dict[str, int]:
    return {"count": count, "ns": round(ms * _NS_PER_MS)}


def model_statistics(record: ModelRecord, reports: list[WorkerReport]) -> dict[str, Any]:
    """Triton's statistics of one model: the workers' ``reports`` summed (see the module docstring)."""
    succeeded = sum(r.succeeded for r in reports)
    completed = sum(r.completed for r in reports)
    queue_ms = sum(r.queue_total_ms for r in reports)
    compute_ms = sum(r.compute_total_ms for r in reports)
    empty = _duration(0, 0.0)
    return {
        "name": record.name,
        "version": record.version,
        "last_inference": int(max((r.last_inference_ms for r in reports), default=0)),
        "inference_count": succeeded,
        "execution_count": sum(r.executions for r in reports),
        "inference_stats": {
            "success": _duration(succeeded, queue_ms + compute_ms),
            "fail": _duration(max(0, completed - succeeded), 0.0),
            "queue": _duration(succeeded, queue_ms),
            "compute_input": dict(empty),
            "compute_infer": _duration(succeeded, compute_ms),
            "compute_output": dict(empty),
            "cache_hit": dict(empty),
            "cache_miss": dict(empty),
        },
        "batch_stats": [],
    }


async def worker_reports(redis: Any, names: Names, model: str) -> list[WorkerReport]:
    """The last report of every worker that reported stats for ``model`` and whose report has not expired."""
    members = await redis.zrange(names.stats_index_key(model), 0, -1)
    if not members:
        return []
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(names.stats_key(model, worker_id))
        hashes = await pipe.execute()
    found = (WorkerReport.from_hash(worker_id, raw) for worker_id, raw in zip(ids, hashes, strict=True) if raw)
    return [r for r in found if r is not None]


class ModelDescriptions:
    """Configuration and statistics documents of registered models (both protocols use it)."""

    def __init__(self, path: InferPath, redis: Any, names: Names, timeout_s: float) -> None:
        self._path = path
        self._redis = redis
        self._names = names
        #: Longest a Redis read may take (503 / UNAVAILABLE past it).
        self.timeout_s = timeout_s

    async def config(self, model: str, version: str | None) -> dict[str, Any]:
        """The configuration of ``model`` (its default version, or ``version``); 404 errors when unknown."""
        record = await self._path.record(model, version)
        return model_config(record, await self._reports(record.name))

    async def statistics(self, model: str | None, version: str | None, key: ApiKey | None) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for one model, or for every model ``key`` may use when ``model`` is None."""
        if model:
            records = [await self._path.record(model, version)]
        else:
            registry = self._path.registry
            models = await redis_bounded(registry.models(), self.timeout_s, "registry listing")
            allowed = [m for m in models if key is None or key.allows(m)]
            records = list(await asyncio.gather(*(self._path.record(m, None) for m in allowed)))
        reports = await asyncio.gather(*(self._reports(r.name) for r in records))
        return {"model_stats": [model_statistics(r, rs) for r, rs in zip(records, reports, strict=True)]}

    async def _reports(self, model: str) -> list[WorkerReport]:
        return await redis_bounded(worker_reports(self._redis, self._names, model), self.timeout_s, "stats read")


class ModelConfigRoutes:
    """The HTTP routes of the two extensions."""

    def __init__(self, descriptions: ModelDescriptions) -> None:
        self._descriptions = descriptions

    def add_to(self, app: web.Application) -> None:
        """Register the config and stats routes."""
        app.router.add_get("/v2/models/stats", self.stats)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(prefix + "/config", self.config)
            app.router.add_get(prefix + "/stats", self.stats)

    async def config(self, request: web.Request) -> web.Response:
        """``GET .../config``: Triton's model configuration."""
        info = request.match_info
        return web.json_response(await self._descriptions.config(info["model"], info.get("version")))

    async def stats(self, request: web.Request) -> web.Response:
        """``GET .../stats``: Triton's inference statistics, summed over the model's live workers."""
        info = request.match_info
        document = await self._descriptions.statistics(info.get("model"), info.get("version"), request.get(API_KEY))
        return web.json_response(document)
