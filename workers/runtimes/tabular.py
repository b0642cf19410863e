"""Tabular runtimes: scikit-learn (skops files), XGBoost boosters (JSON/UBJ) and LightGBM model text files.

Each takes one input (a batch of rows) and answers the outputs its signature declares, by name:
``label`` (or ``predict``/``prediction``) is the model's prediction, ``probabilities`` (or
``predict_proba``) the class probabilities. scikit-learn artifacts are loaded by ``skops.io.load``
with the types trusted at registration and nothing else (never pickle). Boosters are run as a
classifier by their objective: binary -> probabilities of [class 0, class 1] and label p > 0.5,
multiclass -> label argmax; regression and ranking objectives answer ``label`` only. CPU only.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelExecutionError, ModelLoadError
from .base import Arrays, Runtime, as_text, cast_outputs, empty_outputs

#: Output names -> what they answer.
LABEL_NAMES = frozenset({"label", "predict", "prediction"})
PROBA_NAMES = frozenset({"probabilities", "predict_proba"})


def output_problem(name: str, has_proba: bool) -> str | None:
    """Why a tabular model cannot answer an output called ``name``, or None."""
    if name in LABEL_NAMES:
        return None
    if name in PROBA_NAMES:
        return None if has_proba else f"output {name!r}: the model has no class probabilities (not a classifier)"
    return (
        f"output {name!r}: a tabular model answers {sorted(LABEL_NAMES)} (its prediction) "
        f"and {sorted(PROBA_NAMES)} (class probabilities)"
    )


def _import(module: str, extra: str, record: Any) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(
            record.name, record.version, f"{module} is not installed (pip install inference-fleet[{extra}])"
        ) from exc


def binary_probabilities(positive: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """P(class 1) per row -> [[P(0), P(1)], ...] as scikit-learn's predict_proba answers."""
    positive = positive.reshape(-1)
    return np.stack([1.0 - positive, positive], axis=1)


class _TabularRuntime(Runtime):
    """One input, outputs by name; ``_predict``/``_proba`` implemented per library."""

    _model: Any = None

    def predict(self, inputs: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        if self._model is None:
            raise ModelExecutionError(f"model {self.record.name}:{self.record.version} is not loaded")
        spec = self.record.inputs[0]
        rows = inputs[spec.name]
        if rows.shape[:1] == (0,):
            return empty_outputs(self.record)
        if rows.dtype == object:
            rows = as_text(rows, spec.name)
        answers: dict[bool, npt.NDArray[Any]] = {}  # by "is a probabilities output": each method runs once
        produced: Arrays = {}
        try:
            for out in self.record.outputs:
                proba = out.name in PROBA_NAMES
                if proba not in answers:
                    answers[proba] = np.asarray(self._proba(rows) if proba else self._label(rows))
                produced[out.name] = answers[proba]
        except ModelExecutionError:
            raise
        except Exception as exc:  # whatever the library raises
            raise ModelExecutionError(f"{type(self).__name__} failed: {type(exc).__name__}: {exc}") from exc
        return cast_outputs(self.record, produced)

    def _label(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raise NotImplementedError

    def _proba(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raise NotImplementedError

    def unload(self) -> None:
        self._model = None


class SklearnRuntime(_TabularRuntime):
    """A scikit-learn estimator or pipeline from a skops file; BYTES inputs reach it as ``str`` (text pipelines)."""

    takes_text = True

    def load(self) -> None:
        sio = _import("skops.io", "sklearn", self.record)
        try:
            model = sio.load(self.record.artifact, trusted=list(self.record.trusted_types))
        except Exception as exc:  # skops raises UntrustedTypesFoundException, zip and schema errors
            raise ModelLoadError(self.record.name, self.record.version, f"{type(exc).__name__}: {exc}") from exc
        self._model = model
        self.providers = ("sklearn",)

    def _label(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.asarray(self._model.predict(rows))

    def _proba(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.asarray(self._model.predict_proba(rows))


def booster_kind(objective: str) -> str:
    """``binary``, ``multiclass`` or ``regression`` (anything else) from an XGBoost or LightGBM objective."""
    objective = objective.split()[0] if objective else ""
    if objective in ("binary:logistic", "binary") or objective in ("xentropy", "cross_entropy"):
        return "binary"
    if objective in ("multi:softprob", "multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"):
        return "multiclass"
    return "regression"


def xgboost_objective(booster: Any) -> str:
    """The objective name stored in an XGBoost booster."""
    return str(json.loads(booster.save_config())["learner"]["objective"]["name"])


class _BoosterRuntime(_TabularRuntime):
    _kind = "regression"

    def _raw(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raise NotImplementedError

    def _proba(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raw = self._raw(rows)
        return binary_probabilities(raw) if self._kind == "binary" else raw

    def _label(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        raw = self._raw(rows)
        if self._kind == "binary":
            return (raw.reshape(-1) > 0.5).astype(np.int64)
        if self._kind == "multiclass":
            return np.asarray(np.argmax(raw, axis=1), dtype=np.int64)
        return raw


class XGBoostRuntime(_BoosterRuntime):
    """An XGBoost booster saved with ``save_model`` as ``.json`` or ``.ubj``."""

    _xgb: Any = None

    def load(self) -> None:
        xgb = _import("xgboost", "xgboost", self.record)
        try:
            booster = xgb.Booster(model_file=self.record.artifact)
            booster.set_param({"nthread": self.threads})
            self._kind = booster_kind(xgboost_objective(booster))
        except Exception as exc:  # xgboost raises XGBoostError for bad files
            raise ModelLoadError(self.record.name, self.record.version, f"{type(exc).__name__}: {exc}") from exc
        self._xgb, self._model = xgb, booster
        self.providers = ("xgboost-cpu",)

    def _raw(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.asarray(self._model.predict(self._xgb.DMatrix(rows, nthread=self.threads)))


def lightgbm_objective(path: str) -> str:
    """The ``objective=`` line of a LightGBM model text file ("" when absent)."""
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            if line.startswith("objective="):
                return line.partition("=")[2].strip()
            if line.startswith("Tree="):
                break
    return ""


class LightGBMRuntime(_BoosterRuntime):
    """A LightGBM booster saved with ``save_model`` (its model text file)."""

    def load(self) -> None:
        lgb = _import("lightgbm", "lightgbm", self.record)
        try:
            booster = lgb.Booster(model_file=self.record.artifact)
            self._kind = booster_kind(lightgbm_objective(self.record.artifact))
        except Exception as exc:  # lightgbm raises LightGBMError for bad files
            raise ModelLoadError(self.record.name, self.record.version, f"{type(exc).__name__}: {exc}") from exc
        self._model = booster
        self.providers = ("lightgbm-cpu",)

    def _raw(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.asarray(self._model.predict(rows, num_threads=self.threads))
