"""Table tests of the pure batch assembly."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import InferenceRequest, Tensor
from workers.batching import Batch, merge_inputs, plan_batches, request_rows, split_outputs
from workers.errors import ModelExecutionError


def _req(
    rid: str, rows: int = 1, width: int = 4, *, version: str = "1", dtype: str = "FP32", **extra: int
) -> InferenceRequest:
    np_dtype = np.float32 if dtype == "FP32" else np.int64
    inputs = [Tensor.from_numpy("x", np.full((rows, width), float(len(rid)), dtype=np_dtype))]
    for name, w in extra.items():
        inputs.append(Tensor.from_numpy(name, np.zeros((rows, w), dtype=np.float32)))
    return InferenceRequest(rid, "m", version, tuple(inputs))


PLANS = [
    pytest.param([_req("a"), _req("b"), _req("c")], 8, [(0, 1, 2)], id="all-compatible"),
    pytest.param([_req("a"), _req("b", width=5), _req("c")], 8, [(0, 2), (1,)], id="dynamic-dim-differs"),
    pytest.param([_req("a"), _req("b", version="2"), _req("c")], 8, [(0, 2), (1,)], id="version-differs"),
    pytest.param([_req("a"), _req("b", dtype="INT64"), _req("c")], 8, [(0, 2), (1,)], id="datatype-differs"),
    pytest.param([_req("a", z=2), _req("b", z=3), _req("c", z=2)], 8, [(0, 2), (1,)], id="second-input-differs"),
    pytest.param([_req(str(i)) for i in range(5)], 2, [(0, 1), (2, 3), (4,)], id="row-limit"),
    pytest.param([_req("a", 3), _req("b", 3), _req("c", 2)], 6, [(0, 1), (2,)], id="multi-row-requests"),
    pytest.param([_req("a", 3), _req("b", 4), _req("c", 1)], 6, [(0,), (1, 2)], id="does-not-overfill"),
    pytest.param([_req("a", 1), _req("big", 9), _req("c", 1)], 4, [(0, 2), (1,)], id="oversized-runs-alone"),
    pytest.param([_req("big", 9)], 4, [(0,)], id="oversized-single"),
    pytest.param([], 4, [], id="empty"),
]


@pytest.mark.parametrize(("requests", "max_batch", "expected"), PLANS)
def test_plan_batches(requests: list[InferenceRequest], max_batch: int, expected: list[tuple[int, ...]]) -> None:
    batches = plan_batches(requests, max_batch)
    assert [b.indices for b in batches] == expected
    for batch in batches:
        assert batch.rows == tuple(request_rows(requests[i]) for i in batch.indices)
        assert batch.total_rows <= max_batch or len(batch.indices) == 1


def test_requested_outputs_do_not_split_batches() -> None:
    a = _req("a")
    b = InferenceRequest("b", "m", "1", a.inputs, outputs=("y",))
    assert [b.indices for b in plan_batches([a, b], 8)] == [(0, 1)]


def test_non_batching_model_runs_one_request_at_a_time() -> None:
    requests = [_req("a", 2), _req("b", 3)]
    assert plan_batches(requests, 32, batched=False) == [Batch((0,), (2,)), Batch((1,), (3,))]


def test_merge_then_split_round_trips() -> None:
    requests = [_req("a", 1), _req("bb", 3), _req("ccc", 2)]
    merged = merge_inputs(requests)
    assert merged["x"].shape == (6, 4)
    outputs = {"y": merged["x"] * 2, "z": merged["x"][:, :1]}
    parts = split_outputs(outputs, [1, 3, 2])
    assert [p["y"].shape for p in parts] == [(1, 4), (3, 4), (2, 4)]
    for request, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], request.inputs[0].to_numpy() * 2)
        assert part["z"].shape == (request.inputs[0].shape[0], 1)


def test_merge_single_request_is_a_view() -> None:
    request = _req("a", 2)
    np.testing.assert_array_equal(merge_inputs([request])["x"], request.inputs[0].to_numpy())


def test_split_rejects_wrong_batch_dimension() -> None:
    with pytest.raises(ModelExecutionError, match="dimension 0"):
        split_outputs({"y": np.zeros((3, 2))}, [1, 1])
    with pytest.raises(ModelExecutionError):
        split_outputs({"y": np.float32(1.0)}, [1])  # type: ignore[dict-item]


def test_split_non_batching_passes_outputs_through() -> None:
    outputs = {"y": np.zeros((2, 2))}
    (part,) = split_outputs(outputs, [5], batched=False)
    assert part["y"] is outputs["y"]
    with pytest.raises(ValueError):
        split_outputs(outputs, [1, 1], batched=False)
