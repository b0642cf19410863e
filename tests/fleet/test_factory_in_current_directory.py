"""A --factory module that sits in the current directory: the `fleet` console script does not search it (unlike
``python -m``), so registration names the fix (PYTHONPATH=.) instead of a bare ModuleNotFoundError, for a Python
class and for a torch factory (pure: no servers)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from fleet.models.artifacts import build_record
from schemas import Framework, SchemaError, parse_spec
from tests import anymodels


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh package in a folder made the current directory, which is not on sys.path (as for `fleet`)."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("from tests.anymodels import Scale, affine as make  # noqa: F401\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(tmp_path))])
    return name


def _refused(artifact: Path, **kwargs: object) -> str:
    with pytest.raises(SchemaError) as info:
        build_record("m", "1", artifact, load=True, **kwargs)  # type: ignore[arg-type]
    return info.value.message


@pytest.mark.parametrize("framework", [Framework.PYTHON, Framework.TORCH])
def test_a_factory_in_the_current_directory_is_refused_with_pythonpath_named(
    package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framework: Framework
) -> None:
    if framework is Framework.PYTHON:
        artifact, factory = anymodels.npy(tmp_path / "k.npy", np.float32(2)), f"{package}:Scale"
        specs: dict[str, object] = {}
    else:
        artifact, factory = anymodels.torch_models(tmp_path)[0], f"{package}:make"
        outputs = (parse_spec("y:FP32:-1,3"), parse_spec("s:FP32:-1,1"))
        specs = {"inputs": (parse_spec("x:FP32:-1,4"),), "outputs": outputs}
    message = _refused(artifact, framework=framework, factory=factory, **specs)
    assert message == (
        f"cannot import --factory {factory!r} (ModuleNotFoundError: No module named {package!r}); {package} is in "
        "the current directory, which the fleet command does not search: run it with PYTHONPATH=. (and start the "
        "workers where they can import it too)"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # what PYTHONPATH=. does
    record = build_record("m", "1", artifact, framework=framework, factory=factory, load=True, **specs)  # type: ignore[arg-type]
    assert record.framework is framework and record.factory == factory


def test_a_factory_missing_everywhere_keeps_the_general_advice(package: str, tmp_path: Path) -> None:
    artifact = anymodels.npy(tmp_path / "k.npy", np.float32(2))
    message = _refused(artifact, framework=Framework.PYTHON, factory="nowhere_to_be_found:Model")
    assert message.endswith("it must be importable where you register and on every worker")
