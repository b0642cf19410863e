"""Input files of ``fleet batch run``, read as a stream of records (never loaded whole).

* **JSONL** — one record per line, either ``{"inputs": {"x": [...]}}`` or the plain ``{"x": [...]}``.
  Each input is a (nested) list; a value with one dimension fewer than the model's input (a single row
  without its batch dimension) is sent as one row, and its outputs come back without the batch dimension
  too. Every line is one record, so output line *i* answers input line *i*; a line that is not valid
  JSON or lacks an input becomes a failed record (``INVALID_INPUT``), the run goes on.
* **.npy** — rows along axis 0 (memory-mapped); each request carries ``rows_per_request`` rows of the
  model's single input (the last request may carry fewer).
* **Parquet** (when ``pyarrow`` is installed) — one column per input, one row per record, each cell a
  (nested) list or a scalar, read in row groups.

Readers are blocking and are called off the event loop (``asyncio.to_thread``) a chunk at a time.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from schemas import NUMPY_DTYPES, ModelRecord, TensorSpec

from .state import BatchError

Array = npt.NDArray[Any]
FORMATS = ("jsonl", "npy", "parquet")


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of the input: its arrays, or why it could not be read."""

    index: int
    inputs: dict[str, Array] | None
    error: str | None = None
    squeeze: bool = False  # given without the batch dimension: outputs are unwrapped the same way
    end_offset: int = 0  # JSONL: byte offset just past this record


class RecordSource(Protocol):
    """A readable input: ``total`` records, read ``count`` at a time from a start index."""

    total: int

    def read(self, count: int) -> list[InputRecord]:
        """The next ``count`` records (fewer at the end; empty when exhausted)."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...


def input_format(path: Path) -> str:
    """``jsonl``, ``npy`` or ``parquet`` from the file name; BatchError for anything else."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".npy":
        return "npy"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise BatchError(f"cannot read {path}: use .jsonl, .npy or .parquet")


def _array(value: Any, spec: TensorSpec, batched: bool) -> tuple[Array, bool]:
    if spec.datatype == "BYTES":
        array = np.asarray(value, dtype=object)
    else:
        array = np.asarray(value, dtype=NUMPY_DTYPES[spec.datatype])
    if batched and array.ndim == len(spec.shape) - 1:
        return array[np.newaxis, ...], True
    return array, False


def record_from_mapping(index: int, obj: Any, model: ModelRecord, end_offset: int = 0) -> InputRecord:
    """An InputRecord from a decoded JSON object (``{"inputs": {...}}`` or plain ``{name: value}``)."""
    if isinstance(obj, dict) and isinstance(obj.get("inputs"), dict):
        obj = obj["inputs"]
    if not isinstance(obj, dict):
        return InputRecord(index, None, "a record must be a JSON object of inputs", end_offset=end_offset)
    arrays: dict[str, Array] = {}
    squeezed = set()
    for spec in model.inputs:
        if spec.name not in obj:
            return InputRecord(index, None, f"missing input {spec.name!r}", end_offset=end_offset)
        try:
            arrays[spec.name], squeeze = _array(obj[spec.name], spec, model.batched)
        except (ValueError, TypeError) as exc:
            return InputRecord(index, None, f"input {spec.name!r}: {exc}", end_offset=end_offset)
        squeezed.add(squeeze)
    return InputRecord(index, arrays, squeeze=squeezed == {True}, end_offset=end_offset)


class JsonlSource:
    """Lines of a JSONL file from byte ``offset`` (record ``start``) on."""

    def __init__(self, path: Path, model: ModelRecord, *, start: int = 0, offset: int = 0) -> None:
        self._model = model
        self.total = _count_lines(path)
        self._file = open(path, "rb")  # closed by close()
        self._file.seek(offset)
        self._offset = offset
        self._index = start

    def read(self, count: int) -> list[InputRecord]:
        records: list[InputRecord] = []
        for _ in range(count):
            line = self._file.readline()
            if not line:
                break
            self._offset += len(line)
            try:
                obj = json.loads(line)
            except ValueError as exc:
                records.append(InputRecord(self._index, None, f"not valid JSON: {exc}", end_offset=self._offset))
            else:
                records.append(record_from_mapping(self._index, obj, self._model, self._offset))
            self._index += 1
        return records

    def close(self) -> None:
        self._file.close()


def _count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (0 if last == b"\n" else 1)


def single_input(model: ModelRecord) -> TensorSpec:
    """The model's only input (.npy files hold one array); BatchError when it has several."""
    if len(model.inputs) != 1:
        names = [s.name for s in model.inputs]
        raise BatchError(f"model {model.name!r} takes {len(names)} inputs {names}: use a JSONL or Parquet input")
    return model.inputs[0]


class NpySource:
    """Requests of ``rows_per_request`` rows from a memory-mapped ``.npy`` file, from request ``start`` on."""

    def __init__(self, path: Path, model: ModelRecord, *, rows_per_request: int = 1, start: int = 0) -> None:
        self._spec = single_input(model)
        try:
            self._array: Array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BatchError(f"cannot read {path} as .npy: {exc}") from None
        if self._array.ndim != len(self._spec.shape):
            raise BatchError(
                f"{path}: array of shape {list(self._array.shape)} does not hold rows of input "
                f"{self._spec.describe()} (rows along axis 0)"
            )
        self._dtype = NUMPY_DTYPES.get(self._spec.datatype)
        if self._dtype is None:
            raise BatchError(f"input {self._spec.describe()} cannot come from a .npy file")
        self.rows = int(self._array.shape[0])
        self.rows_per_request = rows_per_request
        self.total = -(-self.rows // rows_per_request)
        self._index = start
        self._row_bytes = int(np.prod(self._array.shape[1:], dtype=np.int64)) * self._array.dtype.itemsize
        self._released = 0

    def read(self, count: int) -> list[InputRecord]:
        stop = min(self.total, self._index + count)
        records = []
        r = self.rows_per_request
        for index in range(self._index, stop):
            rows = np.array(self._array[index * r : (index + 1) * r], dtype=self._dtype)
            records.append(InputRecord(index, {self._spec.name: rows}))
        self._index = stop
        self._release(min(self.rows, stop * r))
        return records

    def _release(self, rows_read: int) -> None:
        """Drop the mapped pages already read from this process's RSS (the file is read once, forwards)."""
        mapped = getattr(self._array, "_mmap", None)
        end = int(getattr(self._array, "offset", 0)) + rows_read * self._row_bytes
        end -= end % mmap.PAGESIZE
        if mapped is not None and end - self._released >= 1 << 22 and hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_DONTNEED, 0, end)
            self._released = end

    def close(self) -> None:
        mapped = getattr(self._array, "_mmap", None)
        del self._array
        if mapped is not None:
            mapped.close()


class ParquetSource:
    """Rows of a Parquet file (one column per input) from record ``start`` on; needs ``pyarrow``."""

    def __init__(self, path: Path, model: ModelRecord, *, start: int = 0) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BatchError("Parquet input needs pyarrow: pip install 'inference-fleet[parquet]'") from None
        self._model = model
        self._file = pq.ParquetFile(path)
        self.total = int(self._file.metadata.num_rows)
        names = [s.name for s in model.inputs]
        missing = sorted(set(names) - set(self._file.schema_arrow.names))
        if missing:
            raise BatchError(f"{path} has no column(s) {missing} for the inputs of {model.name!r}")
        self._rows = self._iter_rows(names, start)
        self._index = start

    def _iter_rows(self, names: list[str], start: int) -> Iterator[dict[str, Any]]:
        skip = start
        for batch in self._file.iter_batches(batch_size=4096, columns=names):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            columns = {name: batch.column(name).to_pylist()[skip:] for name in names}
            skip = 0
            for i in range(len(columns[names[0]])):
                yield {name: values[i] for name, values in columns.items()}

    def read(self, count: int) -> list[InputRecord]:
        records = []
        for obj in self._rows:
            records.append(record_from_mapping(self._index, obj, self._model))
            self._index += 1
            if len(records) >= count:
                break
        return records

    def close(self) -> None:
        self._file.close()


def open_source(
    path: Path, fmt: str, model: ModelRecord, *, start: int = 0, offset: int = 0, rows_per_request: int = 1
) -> RecordSource:
    """The reader of ``path`` positioned at record ``start`` (byte ``offset`` for JSONL)."""
    if fmt == "jsonl":
        return JsonlSource(path, model, start=start, offset=offset)
    if fmt == "npy":
        return NpySource(path, model, rows_per_request=rows_per_request, start=start)
    if fmt == "parquet":
        return ParquetSource(path, model, start=start)
    raise BatchError(f"unknown input format {fmt!r}; use one of {FORMATS}")
