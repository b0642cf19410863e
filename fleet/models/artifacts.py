"""Turning a model artifact (a local file or an ``http(s)://`` URL) into a registry record: hashing, size,
signature discovery and the checks that it can serve as declared (`fleet.models.checks`)."""

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
from schemas.artifact_source import artifact_suffix, download, is_remote
from schemas.errors import ErrorCode

from .checks import (
    check_declared,
    check_onnx_file,
    check_torch_archive,
    check_torch_serves,
    check_torch_specs,
    onnx_session_signature,
    refuse,
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
) -> ModelRecord:
    """A ModelRecord for an artifact; ONNX signatures are discovered when not given.

    SchemaError (one line, the fix named) for an artifact that cannot serve as declared: an ONNX file
    that does not load, keeps external data, has sequence/map types or contradicts the declared specs;
    a checkpoint given as TorchScript or the reverse; BYTES on a torch model. With ``load`` a torch model
    is also loaded and run on a dummy batch whose outputs must fit the signature (``fleet models register``).

    A local artifact is recorded by its absolute path; an ``http(s)://`` URL is downloaded once (to a
    temporary file) for its hash, size and signature and recorded as the URL, which workers download
    from (ArtifactFetchError when it cannot be fetched).
    """
    options: dict[str, Any] = dict(
        framework=framework, inputs=inputs, outputs=outputs, factory=factory, batching=batching, labels=labels,
        load=load,
    )
    if is_remote(str(artifact)):
        url = str(artifact)
        with tempfile.TemporaryDirectory(prefix="fleet-artifact-") as scratch:
            local = Path(scratch) / f"artifact{artifact_suffix(url)}"
            download(url, local)
            record = build_record(name, version, local, example=example, **options)
        return replace(record, artifact=url)
    path = Path(artifact).resolve()
    if not path.is_file():
        raise SchemaError(f"artifact {str(path)!r} does not exist", code=ErrorCode.INVALID_REQUEST)
    if framework is None:
        framework = (
            Framework.ONNX if path.suffix == ".onnx" else (Framework.TORCH if factory else Framework.TORCHSCRIPT)
        )
    batched = (batching or BatchingConfig()).max_batch_size > 1
    if framework is Framework.ONNX:
        check_onnx_file(path)
        found_in, found_out = onnx_session_signature(path)
        check_declared(inputs, found_in, "input", batched=batched)
        check_declared(outputs, found_out, "output", batched=batched)
        inputs, outputs = inputs or found_in, outputs or found_out
        fixed = [spec for spec in (*inputs, *outputs) if batched and spec.shape and spec.shape[0] != -1]
        if fixed:
            raise refuse(
                f"{path.name}: {fixed[0].describe()} has a fixed batch dimension: register with --max-batch-size 1, "
                "or export the model with a dynamic batch dimension"
            )
    else:
        check_torch_archive(path, torchscript=framework is Framework.TORCHSCRIPT)
    if not (inputs and outputs):
        raise SchemaError(
            f"{framework.value} models need --input and --output specs (name:DATATYPE:dims)",
            code=ErrorCode.INVALID_REQUEST,
        )
    record = ModelRecord(
        name=name,
        version=version,
        framework=framework,
        artifact=str(path),
        sha256=sha256_file(path),
        inputs=inputs,
        outputs=outputs,
        batching=batching or BatchingConfig(),
        factory=factory,
        labels=labels or {},
        size_bytes=path.stat().st_size,
        example=example,
    )
    if framework is not Framework.ONNX:
        check_torch_specs(record)
        if load:
            check_torch_serves(record)
    return record
