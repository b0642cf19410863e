"""The runtime contract: load a model version, run a batch of numpy inputs, unload.

Runtimes are synchronous and not thread-safe; the worker calls them from one dedicated thread.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import NUMPY_DTYPES, ModelRecord

from ..errors import ModelExecutionError

log = logging.getLogger("fleet.workers")

Arrays = dict[str, npt.NDArray[Any]]


def choose_device(requested: str, cuda_available: bool, backend: str) -> str:
    """The device to use: ``cuda[:N]`` when asked for (or ``auto``) and available, else ``cpu``.

    Asking for CUDA explicitly on a machine without it logs a warning and falls back to the CPU;
    ``auto`` falls back silently.
    """
    if requested == "cpu":
        return "cpu"
    if cuda_available:
        return "cuda" if requested == "auto" else requested
    if requested != "auto":
        log.warning("device %r requested but %s has no CUDA support here; falling back to CPU", requested, backend)
    return "cpu"


def cast_outputs(record: ModelRecord, produced: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    """The record's outputs from ``produced``, each cast to its declared datatype."""
    result: Arrays = {}
    for spec in record.outputs:
        array = produced.get(spec.name)
        if array is None:
            raise ModelExecutionError(f"the model did not produce output {spec.name!r} (got {sorted(produced)})")
        array = np.asarray(array)
        if spec.datatype == "BYTES":
            result[spec.name] = array if array.dtype == object else array.astype(object)
        else:
            dtype = NUMPY_DTYPES[spec.datatype]
            result[spec.name] = array if array.dtype == dtype else array.astype(dtype)
    return result


def map_positionally(record: ModelRecord, values: Sequence[npt.NDArray[Any]]) -> Arrays:
    """Name unnamed outputs after the record's output specs, in order."""
    if len(values) < len(record.outputs):
        raise ModelExecutionError(
            f"the model returned {len(values)} output(s), its signature has {len(record.outputs)}"
        )
    return {spec.name: value for spec, value in zip(record.outputs, values, strict=False)}


class Runtime(ABC):
    """One loaded model version."""

    def __init__(self, record: ModelRecord, device: str = "auto", threads: int = 1) -> None:
        self.record = record
        self.requested_device = device
        self.threads = threads
        #: The device actually used after :meth:`load` ("cpu", "cuda", "cuda:N").
        self.device = "cpu"
        #: Execution providers / backends in use, most preferred first.
        self.providers: tuple[str, ...] = ()

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; raises ModelLoadError."""

    @abstractmethod
    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """Run one batch; outputs named and typed as the record declares. Raises ModelExecutionError."""

    @abstractmethod
    def unload(self) -> None:
        """Release the model (idempotent)."""
