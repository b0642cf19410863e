"""A scikit-learn pipeline that starts from text has no ``n_features_in_``: registration names the flag that supplies
its input (it said "a sklearn model takes one input (a batch of rows), 0 declared"), and with ``--input
text:BYTES:-1`` it registers and answers as the pipeline does (pure: no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.models.artifacts import build_record
from schemas import Framework, SchemaError, parse_spec
from workers.runtimes import load_runtime

TEXTS = ["good day", "bad day", "good fleet", "bad fleet"]


def _text_pipeline(path: Path) -> Any:
    import skops.io as sio
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(TEXTS, [1, 0, 1, 0])
    sio.dump(model, path)
    return model


def test_a_text_pipeline_is_refused_naming_the_input_flag_then_serves_text(tmp_path: Path) -> None:
    path = tmp_path / "text.skops"
    model = _text_pipeline(path)
    with pytest.raises(SchemaError) as info:
        build_record("m", "1", path, load=True)
    message = info.value.message
    assert message.startswith("could not infer the input of this sklearn model (it has no n_features_in_)")
    assert "supply --input NAME:DATATYPE:DIMS" in message and "--input text:BYTES:-1" in message
    record = build_record("m", "1", path, load=True, inputs=(parse_spec("text:BYTES:-1"),))
    assert record.framework is Framework.SKLEARN
    assert [s.describe() for s in record.outputs] == ["label:INT64[-1]", "probabilities:FP64[-1, 2]"]
    runtime = load_runtime(record, "cpu")
    asked = ["a good one", "bad"]
    answer = runtime.predict({"text": np.array([t.encode() for t in asked], dtype=object)})
    assert answer["label"].tolist() == model.predict(asked).tolist()
    assert np.allclose(answer["probabilities"], model.predict_proba(asked))
