"""Output files of ``fleet batch run``, written strictly in input order and truncatable to a checkpoint.

* **JSONL** — line *i* answers record *i*: ``{"index": i, "outputs": {"y": [...]}}`` or, for a failed
  record, ``{"index": i, "error": {"code": "INVALID_INPUT", "message": "..."}}``.
* **.npy** (for ``.npy`` inputs) — one output of the model (``output_name``), rows in input order, shape
  ``(input rows, *output dims)``; the header is written first, rows are appended. The rows of a failed
  request are filled with NaN (0 for integer outputs) and the failure is recorded as one JSON line in
  ``OUTPUT.failures.jsonl``: ``{"index": i, "rows": [start, stop], "code": ..., "message": ...}``.
  A run that stopped early leaves a file shorter than its header says: ``np.load`` refuses it until the
  run is resumed to the end.

``positions()`` are the byte lengths written so far; ``sync()`` (called off the event loop while writes
may go on) makes at least those bytes durable, and the checkpoint records them. Opening a writer with
those offsets truncates whatever a crashed run wrote after them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from common import text
from schemas import NUMPY_DTYPES, ErrorCode, ModelRecord, TensorSpec

from .state import BatchError

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one record produced: its outputs, or an error code and message."""

    outputs: dict[str, Array] | None
    code: str = ""
    message: str = ""
    squeeze: bool = False  # the record was given without its batch dimension

    @property
    def ok(self) -> bool:
        return self.outputs is not None

    @classmethod
    def failure(cls, code: str, message: str) -> Outcome:
        return cls(None, code, message)


class OutputWriter(Protocol):
    """Appends one outcome per record, in order."""

    def write(self, index: int, outcome: Outcome) -> None:
        """Append the outcome of record ``index`` (the next one)."""
        ...

    def positions(self) -> tuple[int, int]:
        """Bytes written so far to the output and to the failures file (durable after ``sync``)."""
        ...

    def sync(self) -> None:
        """Flush and fsync both files (blocking: call it off the event loop)."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...


def output_format(path: Path) -> str:
    """``jsonl`` or ``npy`` from the file name."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".npy":
        return "npy"
    raise BatchError(f"cannot write {path}: use .jsonl or .npy")


def failures_path(output: Path) -> Path:
    """Where the failures of an .npy output are listed."""
    return output.with_name(output.name + ".failures.jsonl")


def _open_at(path: Path, offset: int | None) -> IO[bytes]:
    """``path`` for appending: new and empty when ``offset`` is None, else cut back to ``offset`` bytes."""
    if offset is None:
        return open(path, "wb", buffering=1 << 20)
    try:
        fh = open(path, "r+b", buffering=1 << 20)
    except FileNotFoundError:
        raise BatchError(f"cannot resume: {path} is missing") from None
    size = os.fstat(fh.fileno()).st_size
    if size < offset:
        fh.close()
        raise BatchError(f"cannot resume: {path} has {size} bytes, the checkpoint says {offset}")
    fh.truncate(offset)
    fh.seek(offset)
    return fh


def _sync(fh: IO[bytes]) -> None:
    # BufferedWriter serialises flush() with the event loop's write() calls (it holds a lock).
    fh.flush()
    os.fsync(fh.fileno())


def _jsonable(array: Array, squeeze: bool) -> Any:
    if squeeze and array.ndim > 0 and array.shape[0] == 1:
        array = array[0]
    if array.dtype == object:
        return [text(x, errors="replace") for x in array.reshape(-1)]
    return array.tolist()


class JsonlWriter:
    """One JSON line per record."""

    def __init__(self, path: Path, *, offset: int | None = None) -> None:
        self._file = _open_at(path, offset)
        self._position = offset or 0

    def write(self, index: int, outcome: Outcome) -> None:
        if outcome.outputs is None:
            line: dict[str, Any] = {"index": index, "error": {"code": outcome.code, "message": outcome.message}}
        else:
            outputs = {name: _jsonable(array, outcome.squeeze) for name, array in outcome.outputs.items()}
            line = {"index": index, "outputs": outputs}
        data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        self._file.write(data)
        self._position += len(data)

    def positions(self) -> tuple[int, int]:
        return self._position, 0

    def sync(self) -> None:
        _sync(self._file)

    def close(self) -> None:
        self._file.close()


def output_spec(model: ModelRecord, name: str | None) -> TensorSpec:
    """The output an .npy file holds: ``name``, or the model's only output."""
    if name is None:
        if len(model.outputs) != 1:
            names = [s.name for s in model.outputs]
            raise BatchError(f"model {model.name!r} has outputs {names}: pick one with --output-name")
        return model.outputs[0]
    for spec in model.outputs:
        if spec.name == name:
            return spec
    raise BatchError(f"model {model.name!r} has no output {name!r}")


class NpyWriter:
    """Rows of one output appended to an .npy file whose header states the final shape."""

    def __init__(
        self,
        path: Path,
        spec: TensorSpec,
        rows: int,
        rows_per_request: int,
        *,
        offset: int | None = None,
        failures_offset: int | None = None,
    ) -> None:
        dims = spec.shape[1:]
        if any(d < 0 for d in dims) or spec.datatype not in NUMPY_DTYPES:
            raise BatchError(f"output {spec.describe()} has no fixed row shape: write a .jsonl output instead")
        self._spec = spec
        self._dtype = NUMPY_DTYPES[spec.datatype]
        self._dims = tuple(dims)
        self._rows = rows
        self._per_request = rows_per_request
        self._filler = np.nan if self._dtype.kind == "f" else 0
        self._file = _open_at(path, offset)
        self._failures = _open_at(failures_path(path), failures_offset)
        if offset is None:
            header = {"descr": self._dtype.str, "fortran_order": False, "shape": (rows, *self._dims)}
            np.lib.format.write_array_header_1_0(self._file, header)
        self._position = self._file.tell()
        self._failures_position = failures_offset or 0

    def write(self, index: int, outcome: Outcome) -> None:
        start = index * self._per_request
        rows = min(self._per_request, self._rows - start)
        shape = (rows, *self._dims)
        array = None if outcome.outputs is None else outcome.outputs.get(self._spec.name)
        code, message = outcome.code, outcome.message
        if array is not None and tuple(array.shape) != shape:
            code = ErrorCode.MODEL_ERROR.value
            message = f"output {self._spec.name!r} has shape {list(array.shape)}, expected {list(shape)}"
            array = None
        elif array is None and outcome.outputs is not None:
            code, message = ErrorCode.MODEL_ERROR.value, f"no output {self._spec.name!r} in the answer"
        if array is None:
            array = np.full(shape, self._filler, dtype=self._dtype)
            failure = {"index": index, "rows": [start, start + rows], "code": code, "message": message}
            line = json.dumps(failure, separators=(",", ":")).encode() + b"\n"
            self._failures.write(line)
            self._failures_position += len(line)
        data = np.ascontiguousarray(array, dtype=self._dtype).tobytes()
        self._file.write(data)
        self._position += len(data)

    def positions(self) -> tuple[int, int]:
        return self._position, self._failures_position

    def sync(self) -> None:
        _sync(self._file)
        _sync(self._failures)

    def close(self) -> None:
        self._file.close()
        self._failures.close()
