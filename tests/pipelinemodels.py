"""Python model classes the pipeline tests and the pipeline example register (``--factory tests.pipelinemodels:X``):
a preprocessing step, a postprocessing step, a two-input join and a step that always fails."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.runtimes.python import PermanentModelError

Arrays = dict[str, npt.NDArray[Any]]


class Standardize:
    """Preprocess: ``features`` (FP32 [-1,16]) -> ``x`` = (features - 1) / 2."""

    def __init__(self, artifact: str, device: str) -> None:
        self.device = "cpu"

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        return {"x": ((inputs["features"] - 1.0) / 2.0).astype(np.float32)}


class Softmax:
    """Postprocess: ``logits`` (FP32 [-1,4]) -> ``probs`` (softmax per row) and ``label`` (INT64 [-1])."""

    def __init__(self, artifact: str, device: str) -> None:
        self.device = "cpu"

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        logits = inputs["logits"].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return {"probs": probs, "label": probs.argmax(axis=1).astype(np.int64)}


class Add:
    """A join: ``a`` + ``b`` (FP32 [-1,4]) -> ``sum``."""

    def __init__(self, artifact: str, device: str) -> None:
        self.device = "cpu"

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        return {"sum": (inputs["a"] + inputs["b"]).astype(np.float32)}


class Broken:
    """A step that always fails permanently: ``x`` (FP32 [-1,4]) -> ``y``."""

    def __init__(self, artifact: str, device: str) -> None:
        self.device = "cpu"

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        raise PermanentModelError("broken on purpose")
