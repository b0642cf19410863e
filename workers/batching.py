"""Pure batch assembly: which requests may share a model run, merging their inputs, splitting outputs.

Requests may share a run when their inputs can be concatenated along dimension 0: same model version,
and for every input the same name, datatype and non-batch dimensions (a model with dynamic dims would
otherwise see ragged rows). Requested outputs do not matter: every output is computed and each request
picks its own afterwards. A batch holds at most ``max_batch_size`` rows; a single request with more
rows than that runs alone. A model that does not batch runs one request at a time, as sent.

Nothing here does I/O or touches the event loop, so it is tested with plain tables.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import InferenceRequest

from .errors import ModelExecutionError

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests that run together: positions in the planned sequence and the rows each contributes."""

    indices: tuple[int, ...]
    rows: tuple[int, ...]

    @property
    def total_rows(self) -> int:
        """Rows the model sees along dimension 0."""
        return sum(self.rows)


def request_rows(request: InferenceRequest) -> int:
    """Rows a (validated) request contributes to a batch: dimension 0 of its inputs."""
    for tensor in request.inputs:
        if tensor.shape:
            return tensor.shape[0]
    return 1


def compatibility_key(request: InferenceRequest) -> Hashable:
    """Requests with equal keys can be concatenated along dimension 0."""
    inputs = tuple(sorted((t.name, t.datatype, t.shape[1:]) for t in request.inputs))
    return (request.model, request.version, inputs)


def plan_batches(requests: Sequence[InferenceRequest], max_batch_size: int, *, batched: bool = True) -> list[Batch]:
    """Group ``requests`` into batches, keeping arrival order inside each group.

    Groups appear in the order of their first request. With ``batched`` False every request is its
    own batch (the model gets its inputs exactly as sent).
    """
    if not batched:
        return [Batch((i,), (request_rows(r),)) for i, r in enumerate(requests)]
    limit = max(1, max_batch_size)
    open_batches: dict[Hashable, tuple[list[int], list[int]]] = {}
    done: list[tuple[int, Batch]] = []  # (index of first request, batch) to restore arrival order

    def close(key: Hashable) -> None:
        indices, rows = open_batches.pop(key)
        done.append((indices[0], Batch(tuple(indices), tuple(rows))))

    for i, request in enumerate(requests):
        key = compatibility_key(request)
        rows = request_rows(request)
        if rows > limit:  # too big to share: runs alone, the open batch stays open for the others
            done.append((i, Batch((i,), (rows,))))
            continue
        current = open_batches.get(key)
        if current is not None and sum(current[1]) + rows > limit:
            close(key)
            current = None
        if current is None:
            current = open_batches[key] = ([], [])
        current[0].append(i)
        current[1].append(rows)
        if sum(current[1]) >= limit:
            close(key)
    for key in list(open_batches):
        close(key)
    done.sort(key=lambda item: item[0])
    return [batch for _, batch in done]


def merge_inputs(requests: Sequence[InferenceRequest]) -> Arrays:
    """Input arrays of a batch: each input concatenated along dimension 0 (no copy for one request)."""
    if len(requests) == 1:
        return {t.name: t.to_numpy() for t in requests[0].inputs}
    names = [t.name for t in requests[0].inputs]
    parts: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in names}
    for request in requests:
        for tensor in request.inputs:
            parts[tensor.name].append(tensor.to_numpy())
    return {name: np.concatenate(arrays, axis=0) for name, arrays in parts.items()}


def split_outputs(
    outputs: Mapping[str, npt.NDArray[Any]], rows: Sequence[int], *, batched: bool = True
) -> list[Arrays]:
    """Per-request outputs of a batch, cut along dimension 0 by each request's row count.

    Raises ModelExecutionError when a batching model returns an output whose dimension 0 is not the
    batch's row count (the rows could not be attributed to requests).
    """
    if not batched:
        if len(rows) != 1:
            raise ValueError("a model that does not batch runs one request at a time")
        return [dict(outputs)]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ModelExecutionError(
                f"output {name!r} has shape {list(array.shape)}; a batch of {total} rows needs dimension 0 = {total}"
            )
    if len(rows) == 1:
        return [dict(outputs)]
    bounds = np.cumsum(rows)[:-1]
    pieces = {name: np.split(array, bounds, axis=0) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(rows))]
