"""A request of zero rows fits any signature whose batch dimension is -1: every runtime answers it with zero rows
of each declared output (ONNX and torch did; scikit-learn, multiclass boosters and transformers failed the batch
with MODEL_ERROR from inside the library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.models.artifacts import build_record
from schemas import NUMPY_DTYPES, ModelRecord
from tests import anymodels
from workers import load_runtime


def _answers_zero_rows(record: ModelRecord, empty: np.ndarray[Any, Any]) -> None:
    runtime = load_runtime(record, "cpu")
    try:
        produced = runtime.predict({record.inputs[0].name: empty})
    finally:
        runtime.unload()
    assert sorted(produced) == sorted(spec.name for spec in record.outputs)
    for spec in record.outputs:
        array = produced[spec.name]
        assert array.shape[0] == 0 and spec.matches(array.shape), (spec.describe(), array.shape)
        assert array.dtype == (object if spec.datatype == "BYTES" else NUMPY_DTYPES[spec.datatype])


def _xgboost_3_classes(path: Path) -> Path:
    import xgboost as xgb

    x = anymodels.rows()
    xgb.XGBClassifier(n_estimators=2, max_depth=2, n_jobs=1).fit(x, anymodels.classes(x, 3)).save_model(path)
    return path


@pytest.mark.parametrize(
    "build",
    [
        lambda d: anymodels.sklearn_model(d / "m.skops")[0],
        lambda d: _xgboost_3_classes(d / "m.json"),
        lambda d: anymodels.lightgbm_model(d / "m.txt")[0],
    ],
    ids=["sklearn", "xgboost-multiclass", "lightgbm-multiclass"],
)
def test_tabular_models_answer_a_request_of_zero_rows(tmp_path: Path, build: Any) -> None:
    record = build_record("m", "1", build(tmp_path))
    _answers_zero_rows(record, np.zeros((0, anymodels.FEATURES), dtype=np.float32))


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction", "token-classification"])
def test_transformers_models_answer_a_request_of_no_text(tmp_path: Path, task: str) -> None:
    pytest.importorskip("transformers")
    from tests import textmodels

    directory, _, _ = textmodels.bert(tmp_path / "bert", task)
    _answers_zero_rows(build_record("t", "1", directory), np.empty((0,), dtype=object))
