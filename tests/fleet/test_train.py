"""The demo's data generator and numpy trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from fleet.demo.train import accuracy, make_blobs, predict_numpy, train_model, train_numpy


def test_blobs_are_deterministic_and_split() -> None:
    a, b = make_blobs(seed=3), make_blobs(seed=3)
    assert np.array_equal(a.x_train, b.x_train)
    assert a.x_train.shape == (600, 8) and a.x_test.shape == (300, 8)
    assert a.classes == 3
    assert set(np.unique(a.y_test)) == {0, 1, 2}


def test_numpy_trainer_learns_the_blobs() -> None:
    data = make_blobs()
    layers = train_numpy(data, 150)
    assert accuracy(predict_numpy(layers, data.x_test), data.y_test) > 0.9
    assert accuracy(predict_numpy(train_numpy(data, 1), data.x_test), data.y_test) < 0.9  # v1 is visibly worse


def test_numpy_model_written_as_onnx_predicts_the_same(tmp_path: Path) -> None:
    data = make_blobs()
    model = train_model(data, tmp_path, "full", 150, trainer="numpy")
    assert model.trainer == "numpy" and model.checkpoint is None
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"x": data.x_test})
    assert probs.shape == (300, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert abs(accuracy(probs, data.y_test) - model.accuracy) < 1e-9
