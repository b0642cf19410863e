"""The runtime contract: load a model version, run a batch of numpy inputs, unload.

Runtimes are synchronous and not thread-safe; the worker calls them from one dedicated thread.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

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
    """The record's outputs from ``produced``, each cast to its declared datatype and checked against its shape.

    Raises ModelExecutionError naming the output when one is missing, holds strings where numbers are
    declared (or numbers where BYTES are), or has a shape that does not fit its spec: a model that
    does not answer as registered fails its batch rather than answering something else.
    """
    result: Arrays = {}
    for spec in record.outputs:
        array = produced.get(spec.name)
        if array is None:
            raise ModelExecutionError(f"the model did not produce output {spec.name!r} (got {sorted(produced)})")
        array = np.asarray(array)
        textual = array.dtype.kind in "OSU"
        if spec.datatype == "BYTES":
            if not textual:
                raise ModelExecutionError(
                    f"output {spec.name!r} holds {array.dtype} numbers, the signature declares BYTES"
                )
            result[spec.name] = array if array.dtype == object else array.astype(object)
        else:
            if textual:
                raise ModelExecutionError(
                    f"output {spec.name!r} holds strings or objects, the signature declares {spec.datatype}"
                )
            dtype = NUMPY_DTYPES[spec.datatype]
            result[spec.name] = array if array.dtype == dtype else array.astype(dtype)
        if not spec.matches(array.shape):
            raise ModelExecutionError(
                f"output {spec.name!r} has shape {list(array.shape)}, the signature declares {list(spec.shape)} "
                "(-1 = any size)"
            )
    return result


def empty_outputs(record: ModelRecord) -> Arrays:
    """The record's outputs for a batch of no rows: each declared shape with its -1 dimensions 0.

    For libraries that refuse an empty batch (scikit-learn, a booster's class probabilities, a tokenizer):
    a request of zero rows fits the signature, so it is answered with zero rows like ONNX and torch models do.
    """
    result: Arrays = {}
    for spec in record.outputs:
        shape = tuple(0 if size == -1 else size for size in spec.shape) or (0,)
        result[spec.name] = np.empty(shape, dtype=object if spec.datatype == "BYTES" else NUMPY_DTYPES[spec.datatype])
    return result


def as_text(array: npt.NDArray[Any], name: str) -> npt.NDArray[Any]:
    """An object array of BYTES elements as ``str`` (UTF-8), for runtimes whose string tensors take text.

    Raises ModelExecutionError naming the input (the handler refuses such requests before they are batched).
    """
    flat = array.reshape(-1).tolist()
    if all(isinstance(item, str) for item in flat):
        return array
    try:
        texts = [item if isinstance(item, str) else bytes(item).decode("utf-8") for item in flat]
    except (UnicodeDecodeError, TypeError) as exc:
        raise ModelExecutionError(f"input {name!r} is not UTF-8 text: {exc}") from exc
    converted = np.empty(len(texts), dtype=object)
    converted[:] = texts
    return converted.reshape(array.shape)


def map_positionally(record: ModelRecord, values: Sequence[npt.NDArray[Any]]) -> Arrays:
    """Name unnamed outputs after the record's output specs, in order; their number must be the signature's."""
    if len(values) != len(record.outputs):
        names = [spec.name for spec in record.outputs]
        raise ModelExecutionError(
            f"the model returned {len(values)} output(s), its signature declares {len(names)} {names}"
        )
    return {spec.name: value for spec, value in zip(record.outputs, values, strict=True)}


class Runtime(ABC):
    """One loaded model version."""

    #: True when the backend's string tensors take ``str``: BYTES inputs are decoded as UTF-8 for it,
    #: and a request with an element that is not UTF-8 is refused (INVALID_INPUT). False: raw ``bytes``.
    takes_text: ClassVar[bool] = False

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
