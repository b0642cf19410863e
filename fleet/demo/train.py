"""The demo's model: Gaussian blobs generated here, a small MLP trained on them, written as ONNX.

With PyTorch installed the MLP is an ``nn.Module`` trained with Adam, checkpointed with ``torch.save``
and exported with ``torch.onnx.export``; without it (or when the export needs packages that are not
installed) the same architecture is trained in numpy and written with :func:`fleet.demo.modelgen.mlp_onnx`.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .modelgen import mlp_onnx

log = logging.getLogger("fleet.train")

F32 = npt.NDArray[np.float32]
Layers = list[tuple[F32, F32]]
INPUT, OUTPUT = "x", "probs"


@dataclass(frozen=True)
class Blobs:
    """A classification data set: train and test splits of points and integer labels."""

    x_train: F32
    y_train: npt.NDArray[np.int64]
    x_test: F32
    y_test: npt.NDArray[np.int64]

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1


def make_blobs(features: int = 8, classes: int = 3, per_class: int = 300, seed: int = 7) -> Blobs:
    """Isotropic unit-variance Gaussian blobs around random centres; 2/3 train, 1/3 test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(classes, features))
    y = np.repeat(np.arange(classes), per_class)
    x = (centres[y] + rng.normal(size=(y.size, features))).astype(np.float32)
    order = rng.permutation(y.size)
    x, y = x[order], y[order].astype(np.int64)
    cut = y.size * 2 // 3
    return Blobs(x[:cut], y[:cut], x[cut:], y[cut:])


def accuracy(probs: npt.NDArray[Any], labels: npt.NDArray[np.int64]) -> float:
    """Share of rows whose arg-max matches the label."""
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def predict_numpy(layers: Layers, x: F32) -> F32:
    """Forward pass of the MLP (ReLU between layers, softmax at the end)."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    e = np.exp(h - h.max(axis=1, keepdims=True))
    probs: F32 = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def train_numpy(data: Blobs, epochs: int, *, hidden: int = 16, lr: float = 0.3, seed: int = 0) -> Layers:
    """Full-batch gradient descent on softmax cross-entropy for a one-hidden-layer MLP."""
    rng = np.random.default_rng(seed)
    n_in, n_out = data.x_train.shape[1], data.classes
    w1 = (rng.normal(size=(n_in, hidden)) / np.sqrt(n_in)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = (rng.normal(size=(hidden, n_out)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(n_out, np.float32)
    x, onehot = data.x_train, np.eye(n_out, dtype=np.float32)[data.y_train]
    for _ in range(epochs):
        z1 = x @ w1 + b1
        a1 = np.maximum(z1, 0.0)
        probs = predict_numpy([(w1, b1), (w2, b2)], x)
        g2 = (probs - onehot) / len(x)  # d loss / d logits
        ga1 = (g2 @ w2.T) * (z1 > 0)
        w2 -= lr * (a1.T @ g2)
        b2 -= lr * g2.sum(axis=0)
        w1 -= lr * (x.T @ ga1)
        b1 -= lr * ga1.sum(axis=0)
    return [(w1, b1), (w2, b2)]


@dataclass(frozen=True)
class TrainedModel:
    """One trained version: its ONNX file, local test accuracy and how it was made."""

    onnx_path: Path
    accuracy: float
    epochs: int
    trainer: str  # "torch" or "numpy"
    checkpoint: Path | None = None  # torch state_dict, when trained with torch
    exporter: str = "modelgen"  # "torch.onnx" or "modelgen"


def torch_available() -> bool:
    """True when PyTorch can be imported."""
    return importlib.util.find_spec("torch") is not None


def train_model(data: Blobs, out_dir: Path, tag: str, epochs: int, *, trainer: str = "auto") -> TrainedModel:
    """Train one version (``trainer`` auto|torch|numpy) and write ``out_dir/{tag}.onnx``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if trainer == "torch" or (trainer == "auto" and torch_available()):
        return _train_torch(data, out_dir, tag, epochs)
    layers = train_numpy(data, epochs)
    path = mlp_onnx(out_dir / f"{tag}.onnx", layers, input_name=INPUT, output_name=OUTPUT, softmax=True)
    return TrainedModel(path, accuracy(predict_numpy(layers, data.x_test), data.y_test), epochs, "numpy")


def _train_torch(data: Blobs, out_dir: Path, tag: str, epochs: int) -> TrainedModel:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(data.x_train.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, data.classes)
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
        optimiser.step()
    net.eval()
    checkpoint = out_dir / f"{tag}.pt"
    torch.save(net.state_dict(), checkpoint)
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
    with torch.no_grad():
        probs = model(torch.from_numpy(data.x_test)).numpy()
    path = out_dir / f"{tag}.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(
                model,
                (torch.zeros(1, data.x_train.shape[1]),),
                str(path),
                dynamo=False,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=17,
            )
        exporter = "torch.onnx"
    except Exception as exc:  # any exporter failure (missing onnxscript, removed API) has the same fallback
        log.info("torch.onnx.export failed (%s); writing the trained weights with modelgen", exc)
        layers = [
            (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
            for m in net
            if isinstance(m, torch.nn.Linear)
        ]
        mlp_onnx(path, layers, input_name=INPUT, output_name=OUTPUT, softmax=True)
        exporter = "modelgen"
    return TrainedModel(path, accuracy(probs, data.y_test), epochs, "torch", checkpoint, exporter)
