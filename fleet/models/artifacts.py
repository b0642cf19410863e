"""Turning a model artifact (a local file, directory or archive, or a URL: http(s), s3, gs, az, file) into a
registry record: hashing (a directory over its manifest), size, signature discovery and the checks that it
can serve as declared (`fleet.models.checks`)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from schemas import (
    BatchingConfig,
    Framework,
    ModelRecord,
    SchemaError,
    Tensor,
    TensorSpec,
    sha256_file,
)
from schemas.artifact_formats import is_safetensors, onnx_model_file
from schemas.artifact_source import artifact_suffix, expiring_reason, fetch_to, is_remote
from schemas.artifact_tree import extract_archive, is_archive, manifest_sha256, tree_bytes
from schemas.errors import ErrorCode
from schemas.registry import DIRECTORY, FILE

from .checks import (
    check_declared,
    check_onnx_file,
    check_serves,
    check_torch_archive,
    check_torch_specs,
    onnx_session_signature,
    refuse,
)
from .checks_frameworks import (
    Found,
    cannot_infer_signature,
    cannot_infer_tabular_input,
    check_directory_framework,
    check_tabular_specs,
    check_text_specs,
    check_trusted,
    framework_signature,
    import_factory_here,
    infer_framework,
    is_tabular,
    python_class_signature,
    transformers_signature,
)


def build_record(
    name: str,
    version: str,
    artifact: str | Path,
    *,
    framework: Framework | None = None,
    inputs: tuple[TensorSpec, ...] = (),
    outputs: tuple[TensorSpec, ...] = (),
    factory: str | None = None,
    batching: BatchingConfig | None = None,
    labels: dict[str, str] | None = None,
    example: tuple[Tensor, ...] = (),
    load: bool = False,
    trusted_types: tuple[str, ...] = (),
    task: str | None = None,
    options: dict[str, str] | None = None,
) -> ModelRecord:
    """A ModelRecord for an artifact; the framework and signature are inferred where the artifact says them.

    SchemaError (one line, the fix named) for an artifact that cannot serve as declared: an ONNX file
    that does not load, keeps external data, has sequence/map types or contradicts the declared specs;
    a checkpoint given as TorchScript or the reverse; BYTES on a torch model; a skops file holding types
    not in ``trusted_types``; a framework or signature that can be neither inferred nor is given (the
    flag to supply named). With ``load`` every model but ONNX is also loaded and run on a dummy batch
    whose outputs must fit the signature (``fleet models register``); a Python class that declares
    ``batchable = False`` is then registered with a batch size of 1.

    A local artifact is recorded by its absolute path. A directory, an archive (.tar, .tar.gz, .tgz, .zip:
    extracted safely to a temporary directory) or an object-store prefix is recorded with layout DIRECTORY
    and the sha256 of its files' manifest. A URL is fetched once (to a temporary place) for its hash, size
    and signature and recorded as the URL, which workers fetch from with their own credentials
    (ArtifactFetchError when it cannot be fetched); a pre-signed URL is refused (it expires).
    """
    kwargs: dict[str, Any] = dict(
        framework=framework, inputs=inputs, outputs=outputs, factory=factory, batching=batching, labels=labels,
        load=load, trusted_types=trusted_types, task=task, options=options,
    )
    if is_remote(str(artifact)):
        url = str(artifact)
        reason = expiring_reason(url)
        if reason is not None:
            raise refuse(reason)
        with tempfile.TemporaryDirectory(prefix="fleet-artifact-") as scratch:
            local = Path(scratch) / f"artifact{artifact_suffix(url)}"
            fetch_to(url, local)
            record = build_record(name, version, local, example=example, **kwargs)
        return replace(record, artifact=url)
    path = Path(artifact).resolve()
    if not path.exists():
        raise SchemaError(f"artifact {str(path)!r} does not exist", code=ErrorCode.INVALID_REQUEST)
    if path.is_file() and is_archive(path.name):
        with tempfile.TemporaryDirectory(prefix="fleet-artifact-") as scratch:
            root = extract_archive(path, Path(scratch) / "tree")
            record = build_record(name, version, root, example=example, **kwargs)
        return replace(record, artifact=str(path))
    if framework is None:
        framework = infer_framework(path, factory)
    check_directory_framework(framework, path)
    if (task or options) and framework is not Framework.TRANSFORMERS:
        raise refuse("--task and --option apply to transformers models only")
    tree = path.is_dir()
    batching = batching or BatchingConfig()
    batched = batching.max_batch_size > 1
    trusted_types = check_trusted(framework, path, trusted_types)
    why = ""  # what the artifact could not say of its signature
    if framework is Framework.ONNX:
        model_file = onnx_model_file(path) if tree else path
        if model_file is None:
            raise refuse(f"the directory {path.name} holds no model.onnx (nor exactly one *.onnx file)")
        check_onnx_file(model_file, path if tree else None)
        found_in, found_out = onnx_session_signature(model_file)
        check_declared(inputs, found_in, "input", batched=batched)
        check_declared(outputs, found_out, "output", batched=batched)
        inputs, outputs = inputs or found_in, outputs or found_out
    elif framework is Framework.PYTHON:
        if not factory:
            raise refuse("a python model needs --factory package.module:Class (the class that serves it)")
        found, can_batch = python_class_signature(factory) if load else (Found(why="the class is not loaded"), True)
        inputs, outputs, why = inputs or found.inputs, outputs or found.outputs, found.why
        if not can_batch and batched:
            batching, batched = BatchingConfig(1, batching.max_queue_delay_ms), False
    elif framework is Framework.TRANSFORMERS:
        task, found = transformers_signature(path, task, options or {})
        inputs, outputs = inputs or found.inputs, outputs or found.outputs
        check_text_specs(task, inputs, outputs)
    else:
        if framework in (Framework.TORCH, Framework.TORCHSCRIPT) and not is_safetensors(path):
            check_torch_archive(path, torchscript=framework is Framework.TORCHSCRIPT)
        if framework is Framework.TORCH and factory and load:
            import_factory_here(factory)  # its own one-line refusal, before the model is built from it
        found = framework_signature(framework, path, trusted_types)
        inputs, outputs, why = inputs or found.inputs, outputs or found.outputs, found.why
        if is_tabular(framework):
            if not inputs:
                raise cannot_infer_tabular_input(framework, why or "the model does not record its features")
            check_tabular_specs(framework, inputs, outputs, found.has_proba)
    if not (inputs and outputs):
        raise cannot_infer_signature(framework, why or "the artifact does not record its tensors")
    fixed = [spec for spec in (*inputs, *outputs) if batched and spec.shape and spec.shape[0] != -1]
    if fixed and framework in (Framework.ONNX, Framework.TORCH_EXPORT):
        raise refuse(
            f"{path.name}: {fixed[0].describe()} has a fixed batch dimension: register with --max-batch-size 1, "
            "or export the model with a dynamic batch dimension"
        )
    record = ModelRecord(
        name=name,
        version=version,
        framework=framework,
        artifact=str(path),
        sha256=manifest_sha256(path) if tree else sha256_file(path),
        inputs=inputs,
        outputs=outputs,
        batching=batching,
        factory=factory,
        labels=labels or {},
        size_bytes=tree_bytes(path) if tree else path.stat().st_size,
        example=example,
        trusted_types=trusted_types,
        layout=DIRECTORY if tree else FILE,
        task=task,
        options=dict(options or {}),
    )
    if framework is not Framework.ONNX:
        if framework in (Framework.TORCH, Framework.TORCHSCRIPT, Framework.TORCH_EXPORT):
            check_torch_specs(record)
        if load:
            check_serves(record)
    return record
