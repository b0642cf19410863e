"""A worker starts without importing any model framework: ONNX Runtime, PyTorch, transformers, scikit-learn,
XGBoost and LightGBM load with the first model of their framework (`workers.runtimes`), so a pool worker added
under load is ready sooner."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("onnxruntime", "torch", "transformers", "sklearn", "xgboost", "lightgbm", "scipy")


def test_the_worker_entry_point_imports_no_model_framework() -> None:
    code = f"import sys, workers.__main__; print(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
