"""The ``fleet demo`` session: train a small classifier on generated data, register two versions, serve,
verify, predict and send traffic, then report. The command (where the stack comes from) is :mod:`fleet.cli.demo`.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fleet.client.connection import open_registry
from fleet.client.http import FleetClient
from fleet.models.artifacts import build_record
from fleet.models.verify import verify
from fleet.models.versions import next_version
from schemas import FleetSettings, Names, Tensor
from schemas.topics import ensure_model_topics

from .train import INPUT, OUTPUT, Blobs, TrainedModel, train_model

DEMO_MODEL = "demo-blobs"
QUICK_EPOCHS, FULL_EPOCHS = 2, 150


def train_versions(data: Blobs, work: Path, trainer: str) -> tuple[TrainedModel, TrainedModel]:
    """v1 barely trained, v2 trained to convergence."""
    return (
        train_model(data, work, "quick", QUICK_EPOCHS, trainer=trainer),
        train_model(data, work, "full", FULL_EPOCHS, trainer=trainer),
    )


async def register_versions(
    settings: FleetSettings, home: Path, data: Blobs, trained: tuple[TrainedModel, TrainedModel]
) -> tuple[str, str]:
    """Register both versions (the next free integers); the second becomes the default."""
    names = Names(settings.namespace)
    await ensure_model_topics(settings.kafka, names, DEMO_MODEL)
    versions: list[str] = []
    async with open_registry(settings) as registry:
        for i, model in enumerate(trained):
            version = await next_version(registry, DEMO_MODEL)
            artifact = home / "demo" / f"{DEMO_MODEL}-v{version}.onnx"
            shutil.copyfile(model.onnx_path, artifact)
            labels = {"trainer": model.trainer, "epochs": str(model.epochs), "test_accuracy": f"{model.accuracy:.4f}"}
            record = build_record(
                DEMO_MODEL,
                version,
                artifact,
                labels=labels,
                example=(Tensor.from_numpy(INPUT, data.x_test[:2]),),
            )
            await registry.register(record, make_default=i == 1)
            versions.append(version)
    return versions[0], versions[1]


@dataclass
class Traffic:
    """Latencies and predictions of one traffic run."""

    latencies_ms: list[float]
    predictions: npt.NDArray[np.int64]
    elapsed_s: float


async def send_rows(client: FleetClient, version: str, x: npt.NDArray[np.float32], concurrency: int) -> Traffic:
    """One request per row, ``concurrency`` in flight."""
    latencies: list[float] = []
    predictions = np.full(len(x), -1, dtype=np.int64)
    rows = iter(range(len(x)))  # shared by the lanes; next() never yields to the loop

    async def lane() -> None:
        for i in rows:
            started = time.perf_counter()
            result = await client.infer(DEMO_MODEL, {INPUT: x[i : i + 1]}, version=version)
            latencies.append((time.perf_counter() - started) * 1000)
            predictions[i] = int(np.argmax(result[OUTPUT][0]))

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Traffic(latencies, predictions, time.perf_counter() - started)


async def demo_session(
    url: str, settings: FleetSettings, home: Path, data: Blobs, trained: tuple[TrainedModel, TrainedModel],
    serve: Callable[[str], Awaitable[object]], concurrency: int,
) -> bool:  # fmt: skip
    """Register, serve, verify, predict and load-test; True when every check passed."""
    v1, v2 = await register_versions(settings, home, data, trained)
    print(f"registered {DEMO_MODEL} v{v1} ({trained[0].epochs} epochs) and v{v2} ({trained[1].epochs} epochs, default)")
    started = time.perf_counter()
    await serve(DEMO_MODEL)
    print(f"workers serve {DEMO_MODEL} ({time.perf_counter() - started:.1f}s)")
    async with open_registry(settings) as registry:
        records = [await registry.get(DEMO_MODEL, v) for v in (v1, v2)]
    async with FleetClient(url, timeout_s=30.0) as client:
        reports = [await verify(client, record) for record in records]
        for report in reports:
            print(report.line())
        sample = data.x_test[:8]
        result = await client.infer(DEMO_MODEL, {INPUT: sample}, binary=False)  # default version, JSON, 8 rows
        print(f"\npredictions of the default version (v{result.model_version}), one JSON request of 8 rows:")
        for row, probs, label in zip(sample, result[OUTPUT], data.y_test[:8], strict=True):
            mark = "ok" if int(np.argmax(probs)) == label else "WRONG"
            point = " ".join(f"{v:+.1f}" for v in row[:3])
            print(f"  x=[{point} ...]  true {label}  predicted {int(np.argmax(probs))}  p={probs.max():.2f}  {mark}")
        runs = {v: await send_rows(client, v, data.x_test, concurrency) for v in (v1, v2)}
    print(f"\ntraffic: {len(data.x_test)} rows per version, one row per request, {concurrency} in flight")
    for version, run, model in zip((v1, v2), runs.values(), trained, strict=True):
        acc = float(np.mean(run.predictions == data.y_test))
        print(f"  v{version}: accuracy {acc:.1%} over HTTP (trained {model.epochs} epochs; local {model.accuracy:.1%})")
    latencies = np.array([ms for run in runs.values() for ms in run.latencies_ms])
    elapsed = sum(run.elapsed_s for run in runs.values())
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(
        f"  latency p50 {p50:.1f} ms  p90 {p90:.1f} ms  p99 {p99:.1f} ms  over {latencies.size} requests; "
        f"{latencies.size / elapsed:.0f} req/s"
    )
    return all(report.ok for report in reports)


def print_trained(trained: tuple[TrainedModel, TrainedModel]) -> None:
    """One line per trained version: epochs, local test accuracy, trainer and exporter."""
    for tag, model in zip(("v1", "v2"), trained, strict=True):
        how = f"{model.trainer}, exported with {model.exporter}"
        saved = f", checkpoint {model.checkpoint}" if model.checkpoint else ""
        print(f"  {tag}: {model.epochs:>3} epochs, local test accuracy {model.accuracy:.1%} ({how}{saved})")
