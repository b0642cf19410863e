"""Registration of the frameworks beyond ONNX: the framework inferred from the artifact, signatures read
from the model where it says them (a tabular model's feature count and classes, a torch.export program's
placeholders, a Python class's declared specs), skops' trusted types, and the one-line refusals that name
the flag supplying what could not be inferred. Blocking (models are loaded): call from a thread.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas import Framework, SchemaError, TensorSpec, parse_spec, text_models
from schemas import artifact_formats as formats

from .checks import refuse

Specs = tuple[TensorSpec, ...]

#: What each sniffed kind of file is served by (a checkpoint and safetensors need --factory: torch).
_BY_KIND = {
    formats.ONNX: Framework.ONNX,
    formats.TORCH_EXPORT: Framework.TORCH_EXPORT,
    formats.TORCHSCRIPT: Framework.TORCHSCRIPT,
    formats.CHECKPOINT: Framework.TORCH,
    formats.SAFETENSORS: Framework.TORCH,
    formats.SKOPS: Framework.SKLEARN,
    formats.XGBOOST: Framework.XGBOOST,
    formats.LIGHTGBM: Framework.LIGHTGBM,
}
_TABULAR = (Framework.SKLEARN, Framework.XGBOOST, Framework.LIGHTGBM)
_EXTRAS = {Framework.SKLEARN: "sklearn", Framework.XGBOOST: "xgboost", Framework.LIGHTGBM: "lightgbm"}
_LIBRARIES = {Framework.SKLEARN: "skops.io", Framework.XGBOOST: "xgboost", Framework.LIGHTGBM: "lightgbm"}


#: The frameworks whose artifact may be a directory (or an archive, or a store prefix).
DIRECTORY_FRAMEWORKS = (Framework.ONNX, Framework.TRANSFORMERS, Framework.PYTHON)


def infer_framework(path: Path, factory: str | None) -> Framework:
    """The framework of the artifact at ``path``, from its suffix and first bytes (a directory: from its files);
    refuses naming --framework.

    A file that is not recognised is the state dict of a torch factory when ``factory`` is given.
    """
    if path.is_dir():
        by_files = {formats.TRANSFORMERS: Framework.TRANSFORMERS, formats.ONNX: Framework.ONNX}
        found = by_files.get(formats.sniff_directory(path) or "")
        if found is None:
            raise refuse(
                f"could not infer the framework of the directory {path.name} (neither a Hugging Face model with "
                "config.json and *.safetensors weights, nor one holding model.onnx): supply --framework (python "
                "for a class of your own, with --factory)"
            )
        return found
    kind = formats.sniff(path)
    framework = _BY_KIND.get(kind or "")
    if factory and (framework is None or framework is Framework.TORCHSCRIPT):
        framework = Framework.TORCH  # what --factory means without --framework (a TorchScript file is refused then)
    if framework is None:
        raise refuse(
            f"could not infer the framework of {path.name} (not ONNX, torch.export, TorchScript, a torch checkpoint, "
            "safetensors, skops, an XGBoost JSON/UBJ booster or a LightGBM model file): supply --framework"
        )
    if framework is Framework.TORCH and not factory:
        what = "a safetensors state dict" if kind == formats.SAFETENSORS else "a torch checkpoint (torch.save)"
        raise refuse(
            f"{path.name} is {what}: supply --framework torch --factory module:function (a function that builds "
            "the nn.Module to load it into)"
        )
    return framework


def cannot_infer_signature(framework: Framework, why: str) -> SchemaError:
    """The one-line refusal of a registration whose inputs or outputs could not be read from the model."""
    return refuse(
        f"could not infer the inputs and outputs of this {framework.value} model ({why}): "
        "supply --input and --output NAME:DATATYPE:DIMS"
    )


def cannot_infer_tabular_input(framework: Framework, why: str) -> SchemaError:
    """The one-line refusal of a tabular model whose outputs were read but whose input was not (a text pipeline)."""
    return refuse(
        f"could not infer the input of this {framework.value} model ({why}): supply --input NAME:DATATYPE:DIMS, "
        "e.g. --input features:FP32:-1,N for N numeric features or --input text:BYTES:-1 for a pipeline that "
        "starts from text"
    )


def check_trusted(framework: Framework, path: Path, trusted: tuple[str, ...]) -> tuple[str, ...]:
    """The skops types to trust when loading ``path`` (those it holds beyond skops' defaults).

    Refuses, listing them, a file holding types that ``trusted`` (``--trust``) does not name.
    """
    if framework is not Framework.SKLEARN:
        if trusted:
            raise refuse("--trust applies to scikit-learn (skops) models only")
        return ()
    sio = _library(framework)
    try:
        untrusted = [str(name) for name in sio.get_untrusted_types(file=str(path))]
    except Exception as exc:  # skops raises zip and schema errors of its own
        raise refuse(f"{path.name} is not a skops file ({type(exc).__name__}: {exc})") from None
    missing = [name for name in untrusted if name not in trusted]
    if missing:
        flags = " ".join(f"--trust {name}" for name in missing)
        raise refuse(
            f"{path.name} holds types skops does not trust by default: {missing}; loading them runs their code: "
            f"if you trust them, register with {flags}"
        )
    return tuple(sorted(untrusted))


def _library(framework: Framework) -> Any:
    try:
        return importlib.import_module(_LIBRARIES[framework])
    except ImportError:
        module = _LIBRARIES[framework].partition(".")[0]
        raise refuse(
            f"{module} is not installed here; registration reads the model (pip install "
            f"inference-fleet[{_EXTRAS[framework]}])"
        ) from None


@dataclass(frozen=True, slots=True)
class Found:
    """What a model says of its signature; ``why`` names what it could not say (when a side is empty)."""

    inputs: Specs = ()
    outputs: Specs = ()
    why: str = ""
    has_proba: bool = True


def _label_datatype(classes: Any) -> str:
    kind = np.asarray(classes).dtype.kind
    return {"i": "INT64", "u": "INT64", "f": "FP64", "b": "BOOL"}.get(kind, "BYTES")


def _classifier_outputs(label: str, classes: int, proba: str) -> Specs:
    return (TensorSpec("label", label, (-1,)), TensorSpec("probabilities", proba, (-1, classes)))


def tabular_signature(framework: Framework, path: Path, trusted: tuple[str, ...]) -> Found:
    """Inputs and outputs read from a scikit-learn, XGBoost or LightGBM model (one ``features`` input)."""
    library = _library(framework)
    try:
        if framework is Framework.SKLEARN:
            return _sklearn_signature(library.load(str(path), trusted=list(trusted)))
        if framework is Framework.XGBOOST:
            return _xgboost_signature(library.Booster(model_file=str(path)))
        return _lightgbm_signature(library.Booster(model_file=str(path)), path)
    except SchemaError:
        raise
    except Exception as exc:  # the libraries raise their own error types for files they cannot read
        raise refuse(f"{framework.value} cannot load {path.name}: {type(exc).__name__}: {exc}") from None


def _features(count: Any) -> Specs:
    return (TensorSpec("features", "FP32", (-1, int(count))),) if isinstance(count, int | np.integer) else ()


def _sklearn_signature(model: Any) -> Found:
    inputs = _features(getattr(model, "n_features_in_", None))
    classes = getattr(model, "classes_", None)
    if classes is not None and hasattr(model, "predict_proba"):
        outputs = _classifier_outputs(_label_datatype(classes), len(classes), "FP64")
        return Found(inputs, outputs, "" if inputs else "it has no n_features_in_")
    outputs = (TensorSpec("prediction", "FP64", (-1,)),)
    return Found(inputs, outputs, "" if inputs else "it has no n_features_in_", has_proba=False)


def _xgboost_signature(booster: Any) -> Found:
    from workers.runtimes import booster_kind, xgboost_objective

    kind = booster_kind(xgboost_objective(booster))
    inputs = _features(booster.num_features())
    if kind == "binary":
        return Found(inputs, _classifier_outputs("INT64", 2, "FP32"))
    if kind == "multiclass":
        classes = int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])
        return Found(inputs, _classifier_outputs("INT64", classes, "FP32"))
    return Found(inputs, (TensorSpec("prediction", "FP32", (-1,)),), has_proba=False)


def _lightgbm_signature(booster: Any, path: Path) -> Found:
    from workers.runtimes import booster_kind, lightgbm_objective

    kind = booster_kind(lightgbm_objective(str(path)))
    inputs = _features(booster.num_feature())
    if kind == "binary":
        return Found(inputs, _classifier_outputs("INT64", 2, "FP64"))
    if kind == "multiclass":
        return Found(inputs, _classifier_outputs("INT64", booster.num_model_per_iteration(), "FP64"))
    return Found(inputs, (TensorSpec("prediction", "FP64", (-1,)),), has_proba=False)


def check_tabular_specs(framework: Framework, inputs: Specs, outputs: Specs, has_proba: bool) -> None:
    """Refuse specs a tabular model cannot serve: one input, outputs named after what they answer."""
    from workers.runtimes import output_problem

    if len(inputs) != 1:
        raise refuse(f"a {framework.value} model takes one input (a batch of rows), {len(inputs)} declared")
    if inputs[0].datatype == "BYTES" and framework is not Framework.SKLEARN:
        raise refuse(f"--input {inputs[0].describe()}: {framework.value} models take numeric features")
    for spec in outputs:
        problem = output_problem(spec.name, has_proba)
        if problem is not None:
            raise refuse(problem)


_TORCH_TYPES = {
    "torch.float32": "FP32",
    "torch.float64": "FP64",
    "torch.float16": "FP16",
    "torch.int64": "INT64",
    "torch.int32": "INT32",
    "torch.int16": "INT16",
    "torch.int8": "INT8",
    "torch.uint8": "UINT8",
    "torch.bool": "BOOL",
}


def torch_export_signature(path: Path) -> Found:
    """The user inputs and outputs of a torch.export archive (symbolic sizes as -1; outputs ``output_N``)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return Found(why="torch is not installed here")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many unrelated types for bad archives
        raise refuse(f"torch.export cannot load {path.name}: {type(exc).__name__}: {exc}") from None
    user_inputs = set(program.graph_signature.user_inputs)
    inputs: list[TensorSpec] = []
    outputs: list[Any] = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            inputs.append(_spec(node.name, node.meta.get("val")))
        elif node.op == "output":
            outputs = list(node.args[0]) if isinstance(node.args[0], tuple | list) else [node.args[0]]
    values = [getattr(arg, "meta", {}).get("val") for arg in outputs]
    names = ["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))]
    found_out = tuple(_spec(name, value) for name, value in zip(names, values, strict=True))
    if any(spec is None for spec in (*inputs, *found_out)):
        return Found(why="an input or output is not a tensor")
    return Found(tuple(inputs), found_out)


def _spec(name: str, value: Any) -> Any:
    """A TensorSpec from a fake tensor (None when ``value`` is not a tensor of an OIP datatype)."""
    datatype = _TORCH_TYPES.get(str(getattr(value, "dtype", "")))
    if datatype is None:
        return None
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, datatype, shape)


def import_factory_here(factory: str | None) -> Any:
    """What ``--factory module:name`` names, imported here as every worker will import it.

    Refused in one line; a module that sits in the current directory, which the ``fleet`` command (a console
    script, unlike ``python -m``) does not search, is named with the fix.
    """
    from workers.runtimes import import_factory

    try:
        return import_factory(factory)
    except (ImportError, AttributeError, ValueError) as exc:
        top = (exc.name or "").partition(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
        here = top and (Path(top, "__init__.py").is_file() or Path(f"{top}.py").is_file())
        fix = (
            f"{top} is in the current directory, which the fleet command does not search: run it with "
            "PYTHONPATH=. (and start the workers where they can import it too)"
            if here
            else "it must be importable where you register and on every worker"
        )
        raise refuse(f"cannot import --factory {factory!r} ({type(exc).__name__}: {exc}); {fix}") from None


def python_class_signature(factory: str | None) -> tuple[Found, bool]:
    """The ``inputs``/``outputs`` spec strings a Python model class declares, and whether it batches.

    Refuses a factory that cannot be imported here (registration loads the class as a worker would).
    """
    from workers.runtimes import batchable

    cls = import_factory_here(factory)
    try:
        inputs = tuple(parse_spec(text) for text in getattr(cls, "inputs", ()) or ())
        outputs = tuple(parse_spec(text) for text in getattr(cls, "outputs", ()) or ())
    except SchemaError as exc:
        raise refuse(f"{factory}: {exc.message}") from None
    return Found(inputs, outputs, "the class declares no inputs/outputs"), batchable(cls)


def framework_signature(framework: Framework, path: Path, trusted: tuple[str, ...]) -> Found:
    """What the model of ``framework`` at ``path`` says of its signature (nothing for TorchScript or torch)."""
    if framework in _TABULAR:
        return tabular_signature(framework, path, trusted)
    if framework is Framework.TORCH_EXPORT:
        return torch_export_signature(path)
    return Found(why="the artifact does not record its tensors")


def is_tabular(framework: Framework) -> bool:
    """True for scikit-learn, XGBoost and LightGBM."""
    return framework in _TABULAR


def check_directory_framework(framework: Framework, path: Path) -> None:
    """Refuse a directory artifact for a framework that loads one file, and a file for transformers."""
    if path.is_dir() and framework not in DIRECTORY_FRAMEWORKS:
        allowed = ", ".join(f.value for f in DIRECTORY_FRAMEWORKS)
        raise refuse(f"a {framework.value} artifact is one file, not a directory (directories serve {allowed})")
    if framework is Framework.TRANSFORMERS and not path.is_dir():
        raise refuse(
            f"{path.name}: a transformers model is a directory (config.json, tokenizer files, *.safetensors weights, "
            "as save_pretrained writes them), an archive of one (.tar.gz, .zip) or an object-store prefix"
        )


def transformers_signature(
    path: Path, task: str | None, options: dict[str, str]
) -> tuple[str, Found]:
    """The task (``task``, else from the config's architectures) and signature of a Hugging Face model directory.

    Refuses a directory without safetensors weights (a pytorch_model.bin pickle is never loaded), a task
    that is not served or cannot be inferred, and options the task does not take.
    """
    config = formats.hf_config(path)
    if config is None:
        raise refuse(f"{path.name} has no readable config.json: save the model with save_pretrained(directory)")
    if not any(path.glob("*.safetensors")):
        raise refuse(
            f"{path.name} has no *.safetensors weights (a pytorch_model.bin pickle is never loaded): save them with "
            "model.save_pretrained(directory, safe_serialization=True)"
        )
    task = task or text_models.task_from_config(config)
    if task is None:
        raise refuse(
            f"could not infer the task of {path.name} from its config's architectures: supply --task "
            f"({' | '.join(text_models.TASKS)})"
        )
    try:
        checked = text_models.text_options(task, options, config)
    except SchemaError as exc:
        raise refuse(exc.message) from None
    inputs, outputs = text_models.text_signature(checked, config)
    return task, Found(inputs, outputs)


def check_text_specs(task: str, inputs: Specs, outputs: Specs) -> None:
    """Refuse specs a transformers model cannot serve: one BYTES input, outputs its task produces."""
    if len(inputs) != 1 or inputs[0].datatype != "BYTES":
        declared = [spec.describe() for spec in inputs]
        raise refuse(f"a transformers model takes one BYTES input (the texts), declared {declared}")
    known = text_models.TASK_OUTPUTS[task]
    for spec in outputs:
        if spec.name not in known:
            raise refuse(f"--output {spec.name!r}: a {task} model produces {list(known)}")
