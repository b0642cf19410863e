"""Model runtimes: ONNX Runtime and PyTorch behind one ``Runtime`` contract, and the checked loader."""

from __future__ import annotations

import logging
import os

from schemas import Framework, ModelRecord, sha256_file

from ..errors import ModelLoadError
from .base import Runtime, choose_device
from .onnx import OnnxRuntime
from .torch import TorchRuntime

__all__ = ["OnnxRuntime", "Runtime", "TorchRuntime", "choose_device", "load_runtime"]

log = logging.getLogger("fleet.workers")


def load_runtime(record: ModelRecord, device: str = "auto", threads: int = 1, *, verified: bool = False) -> Runtime:
    """Verify the artifact against the record's sha256, then load it on ``device``; raises ModelLoadError.

    ``verified``: the caller has just checked the sha256 (the worker's artifact cache does), skip it.
    Blocking (hashing and loading can take seconds): call it from a worker thread.
    """
    if not os.path.isfile(record.artifact):
        raise ModelLoadError(record.name, record.version, f"artifact {record.artifact!r} does not exist")
    try:
        digest = record.sha256 if verified else sha256_file(record.artifact)
    except OSError as exc:
        raise ModelLoadError(record.name, record.version, f"cannot read artifact: {exc}") from exc
    if digest != record.sha256:
        raise ModelLoadError(
            record.name,
            record.version,
            f"artifact {record.artifact!r} has sha256 {digest}, the registry expects {record.sha256}",
        )
    runtime: Runtime
    if record.framework is Framework.ONNX:
        runtime = OnnxRuntime(record, device, threads)
    else:
        runtime = TorchRuntime(record, device, threads)
    runtime.load()
    log.info(
        "loaded model %s:%s (%s) on %s, providers %s",
        record.name,
        record.version,
        record.framework.value,
        runtime.device,
        ",".join(runtime.providers),
    )
    return runtime
