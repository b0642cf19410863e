"""Call the ``classify`` pipeline (examples/pipeline.yaml): synchronously, then as an async job; check the answer
against the three models run here one after another.

    python examples/pipeline_infer.py [DIR]    DIR holds pipe-pre.onnx, tiny.onnx and pipe-post.onnx (default .)
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fleet import FleetClient
from fleet.client.connection import resolve


def in_process(directory: Path, x: np.ndarray) -> np.ndarray:
    """The three steps run here: each model's ``y`` is the next one's ``x``."""
    for name in ("pipe-pre", "tiny", "pipe-post"):
        session = ort.InferenceSession(str(directory / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        (x,) = session.run(None, {"x": x})
    return x


async def run(url: str, directory: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    expected = in_process(directory, x)
    async with FleetClient(url) as client:
        result = await client.infer("classify", {"features": x}, pipeline=True)  # POST /v2/pipelines/classify/infer
        print(f"sync: classify v{result.model_version} -> probs{list(result['probs'].shape)}")
        print(result["probs"].round(3))
        same = np.allclose(result["probs"], expected, rtol=1e-5, atol=1e-6)
        print(f"matches the steps run one after another: {same}")

        job_id = await client.submit("classify", {"features": x}, pipeline=True)  # ?async=true: 202 + a job
        done = await client.wait(job_id, timeout_s=60)
        print(f"async job {job_id}: {(await client.job(job_id)).status.value}, logits{list(done['logits'].shape)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=".", type=Path)
    args = parser.parse_args()
    asyncio.run(run(resolve(os.environ).url, args.dir))


if __name__ == "__main__":
    main()
