"""Parsing the gateway's job documents into fleet.client.jobs.Job (pure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fleet.client.jobs import parse_job
from schemas import ErrorCode, JobStatus, SchemaError


def _doc(**extra: Any) -> dict[str, Any]:
    doc = {"job_id": "j1", "model": "m", "version": "1", "status": "pending", "created_ms": 5.0, "started_ms": None}
    doc.update(extra)
    return doc


def test_done_job_has_numpy_outputs() -> None:
    result = {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    job = parse_job(_doc(status="done", started_ms=6, result=result))
    assert job.status is JobStatus.DONE and job.finished and job.started_ms == 6.0
    assert job.outputs is not None
    np.testing.assert_array_equal(job.outputs["y"], np.array([[1, 2], [3, 4]], dtype=np.float32))
    assert job.outputs["y"].dtype == np.float32


@pytest.mark.parametrize(
    ("status", "code"), [("failed", ErrorCode.MODEL_ERROR), ("cancelled", ErrorCode.CANCELLED), ("expired", None)]
)
def test_finished_without_outputs(status: str, code: ErrorCode | None) -> None:
    error = {"code": code.value if code else "SOMETHING_NEW", "message": "why"}
    job = parse_job(_doc(status=status, error=error))
    assert job.finished and job.outputs is None and job.error == "why" and job.error_code is code


def test_pending_is_not_finished() -> None:
    job = parse_job(_doc())
    assert not job.finished and job.error_code is None and job.created_ms == 5.0


@pytest.mark.parametrize(
    "doc",
    [[], _doc(status="weird"), {"status": "done"}, _doc(status="done", result={"outputs": [{"name": "y"}]})],
)
def test_malformed_documents(doc: Any) -> None:
    with pytest.raises(SchemaError):
        parse_job(doc)
