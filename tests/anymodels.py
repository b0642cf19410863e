"""Models of every framework beyond ONNX, built in the tests from small generated data, and the Python
model classes that ``--framework python --factory tests.anymodels:Class`` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from schemas import parse_spec
from workers.runtimes.python import PermanentModelError, TransientModelError, texts

spec = parse_spec  # "name:DATATYPE:dims" -> TensorSpec

FEATURES = 4


def rows(count: int = 60, seed: int = 0) -> npt.NDArray[np.float32]:
    """``count`` rows of FEATURES float32 features."""
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def classes(x: npt.NDArray[Any], count: int = 2) -> npt.NDArray[np.int64]:
    """Labels 0..count-1 that the features decide (so that the models learn something)."""
    return (np.digitize(x[:, 0] + x[:, 1], np.linspace(-1, 1, count - 1)) if count > 2 else x[:, 0] + x[:, 1] > 0
            ).astype(np.int64)  # fmt: skip


def double(x: Any) -> Any:
    """A function no skops default trusts (a FunctionTransformer's func)."""
    return x * 2


def sklearn_model(path: Path, untrusted: bool = False) -> tuple[Path, Any]:
    """A logistic regression (behind a custom FunctionTransformer when ``untrusted``) saved with skops."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = rows()
    model = make_pipeline(FunctionTransformer(double), LogisticRegression()) if untrusted else LogisticRegression()
    model.fit(x, classes(x, 3))
    sio.dump(model, path)
    return path, model


def xgboost_model(path: Path) -> tuple[Path, Any]:
    """A binary XGBoost classifier's booster saved as ``path`` (.json or .ubj)."""
    import xgboost as xgb

    x = rows()
    model = xgb.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1).fit(x, classes(x))
    model.save_model(path)
    return path, model


def lightgbm_model(path: Path) -> tuple[Path, Any]:
    """A 3-class LightGBM classifier's booster saved as a model text file."""
    import lightgbm as lgb

    x = rows()
    model = lgb.LGBMClassifier(n_estimators=4, num_leaves=4, min_child_samples=5, n_jobs=1, verbose=-1)
    model.fit(x, classes(x, 3))
    model.booster_.save_model(str(path))
    return path, model


def affine() -> Any:
    """The factory of the safetensors model: x[-1,4] -> (x @ W + b, sum of x)."""
    from tests.workers.torchmodels import TwoHeads

    return TwoHeads()


def torch_models(directory: Path) -> tuple[Path, Path, Any]:
    """The same seeded module saved as a safetensors state dict and as a torch.export archive (dynamic batch)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = affine().eval()
    weights = directory / "affine.safetensors"
    save_file(module.state_dict(), str(weights))
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.randn(2, FEATURES),), dynamic_shapes=({0: batch},))
    exported = directory / "affine.pt2"
    torch.export.save(program, str(exported))
    return weights, exported, module


class Scale:
    """A batching Python model: y = x * k, with k (FP32) read from its artifact (a .npy file, no pickle)."""

    inputs = ("x:FP32:-1,4",)
    outputs = ("y:FP32:-1,4",)
    constructed: ClassVar[list[str]] = []
    unloaded: ClassVar[list[str]] = []

    def __init__(self, artifact: str, device: str) -> None:
        self.artifact = artifact
        self.k = np.load(artifact, allow_pickle=False)
        Scale.constructed.append(artifact)

    def predict(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        return {"y": inputs["x"] * self.k}

    def unload(self) -> None:
        Scale.unloaded.append(self.artifact)


class Shout:
    """A Python model that cannot batch: text in (BYTES), its upper case and length out."""

    batchable = False
    inputs = ("text:BYTES:-1",)
    outputs = ("upper:BYTES:-1", "length:INT64:-1")

    def __init__(self, artifact: str, device: str) -> None:
        pass

    def predict(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        words = texts(inputs["text"], "text")
        upper = np.array([w.upper().encode() for w in words.tolist()], dtype=object)
        return {"upper": upper, "length": np.array([len(w) for w in words.tolist()], dtype=np.int64)}


class Flaky:
    """y = x; raises TransientModelError on the calls its artifact's number says, PermanentModelError when x < 0."""

    inputs = ("x:FP32:-1,4",)
    outputs = ("y:FP32:-1,4",)

    def __init__(self, artifact: str, device: str) -> None:
        self.failures = int(np.load(artifact, allow_pickle=False))
        self.calls = 0

    def predict(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        x = inputs["x"]
        if (x < 0).any():
            raise PermanentModelError("negative features are not allowed")
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientModelError(f"the GPU hiccuped ({self.calls} of {self.failures})")
        return {"y": x}


def npy(path: Path, value: Any) -> Path:
    """``value`` saved as a .npy file (the artifact of a Python model)."""
    np.save(path, np.asarray(value), allow_pickle=False)
    return path
