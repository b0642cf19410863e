"""Model runtimes: ONNX Runtime, PyTorch, Hugging Face transformers, Python classes, scikit-learn, XGBoost and
LightGBM behind one ``Runtime`` contract, and the checked loader."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from schemas import Framework, ModelRecord, SchemaError, Tensor, sha256_file
from schemas.artifact_tree import manifest_sha256
from schemas.registry import DIRECTORY
from schemas.tensors import decode_bytes_elements, decode_text, element_count
from schemas.text_models import TEXT_GENERATION

from ..errors import ModelLoadError
from .base import Runtime, choose_device
from .generative import GenerationBackend, GenerativeRuntime
from .onnx import OnnxRuntime
from .python import PermanentModelError, PythonRuntime, TransientModelError, batchable, import_factory, texts
from .tabular import (
    LightGBMRuntime,
    SklearnRuntime,
    XGBoostRuntime,
    booster_kind,
    lightgbm_objective,
    output_problem,
    xgboost_objective,
)
from .torch import TorchRuntime
from .transformers import TransformersRuntime

__all__ = [
    "GenerationBackend",
    "GenerativeRuntime",
    "LightGBMRuntime",
    "OnnxRuntime",
    "PermanentModelError",
    "PythonRuntime",
    "Runtime",
    "SklearnRuntime",
    "TorchRuntime",
    "TransformersRuntime",
    "TransientModelError",
    "XGBoostRuntime",
    "batchable",
    "booster_kind",
    "bytes_input_problems",
    "choose_device",
    "import_factory",
    "lightgbm_objective",
    "load_runtime",
    "output_problem",
    "runtime_class",
    "texts",
    "xgboost_objective",
]

log = logging.getLogger("fleet.workers")


_RUNTIMES: dict[Framework, type[Runtime]] = {
    Framework.ONNX: OnnxRuntime,
    Framework.TORCHSCRIPT: TorchRuntime,
    Framework.TORCH: TorchRuntime,
    Framework.TORCH_EXPORT: TorchRuntime,
    Framework.PYTHON: PythonRuntime,
    Framework.SKLEARN: SklearnRuntime,
    Framework.XGBOOST: XGBoostRuntime,
    Framework.LIGHTGBM: LightGBMRuntime,
    Framework.TRANSFORMERS: TransformersRuntime,
}


def runtime_class(framework: Framework) -> type[Runtime]:
    """The Runtime class that serves ``framework``."""
    return _RUNTIMES[framework]


def bytes_input_problems(record: ModelRecord, requests: Sequence[Sequence[Tensor]]) -> list[str | None]:
    """Per request (its input tensors): why its BYTES inputs cannot reach ``record``'s runtime, or None.

    Every BYTES input must split into its elements; for a runtime that takes text each element must
    also be UTF-8. Checked per request before batching, so one bad request is refused alone
    (INVALID_INPUT) instead of failing the batch it would have joined. Blocking: run it off the loop.
    """
    text = runtime_class(record.framework).takes_text
    problems: list[str | None] = []
    for tensors in requests:
        problem = None
        for tensor in tensors:
            if tensor.datatype == "BYTES":
                problem = _bytes_problem(tensor, text)
                if problem is not None:
                    break
        problems.append(problem)
    return problems


def _bytes_problem(tensor: Tensor, text: bool) -> str | None:
    try:
        items = decode_bytes_elements(tensor.data, element_count(tensor.shape))
    except SchemaError as exc:
        return f"input {tensor.name!r}: {exc.message}"
    try:
        if text:
            decode_text(items, tensor.name)
    except SchemaError as exc:
        return exc.message
    return None


def load_runtime(record: ModelRecord, device: str = "auto", threads: int = 1, *, verified: bool = False) -> Runtime:
    """Verify the artifact against the record's sha256 (a DIRECTORY's manifest), then load it on ``device``;
    raises ModelLoadError. ``record.artifact`` is the local file or directory.

    ``verified``: the caller has just checked the sha256 (the worker's artifact cache does), skip it.
    Blocking (hashing and loading can take seconds): call it from a worker thread.
    """
    tree = record.layout == DIRECTORY
    if not (os.path.isdir(record.artifact) if tree else os.path.isfile(record.artifact)):
        what = "directory" if tree else "artifact"
        raise ModelLoadError(record.name, record.version, f"{what} {record.artifact!r} does not exist")
    try:
        if verified:
            digest = record.sha256
        else:
            digest = manifest_sha256(record.artifact) if tree else sha256_file(record.artifact)
    except OSError as exc:
        raise ModelLoadError(record.name, record.version, f"cannot read artifact: {exc}") from exc
    if digest != record.sha256:
        raise ModelLoadError(
            record.name,
            record.version,
            f"artifact {record.artifact!r} has sha256 {digest}, the registry expects {record.sha256}",
        )
    generative = record.framework is Framework.TRANSFORMERS and record.task == TEXT_GENERATION
    runtime = (GenerativeRuntime if generative else runtime_class(record.framework))(record, device, threads)
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
