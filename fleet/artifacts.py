"""Turning a model artifact (a local file or an ``http(s)://`` URL) into a registry record: hashing, size
and signature discovery."""

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

#: ONNX Runtime type strings -> OIP datatypes.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def onnx_signature(path: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs read from an ONNX file (symbolic or unknown dims become -1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def spec(arg: Any) -> TensorSpec:
        datatype = _ORT_TYPES.get(arg.type)
        if datatype is None:
            raise SchemaError(
                f"ONNX tensor {arg.name!r} has unsupported type {arg.type}", code=ErrorCode.INVALID_REQUEST
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        return TensorSpec(arg.name, datatype, shape)

    return tuple(spec(a) for a in session.get_inputs()), tuple(spec(a) for a in session.get_outputs())


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
) -> ModelRecord:
    """A ModelRecord for an artifact; ONNX signatures are discovered when not given.

    A local artifact is recorded by its absolute path; an ``http(s)://`` URL is downloaded once (to a
    temporary file) for its hash, size and signature and recorded as the URL, which workers download
    from (ArtifactFetchError when it cannot be fetched).
    """
    options: dict[str, Any] = dict(
        framework=framework, inputs=inputs, outputs=outputs, factory=factory, batching=batching, labels=labels
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
    if framework is Framework.ONNX and not (inputs and outputs):
        found_in, found_out = onnx_signature(path)
        inputs, outputs = inputs or found_in, outputs or found_out
    if not (inputs and outputs):
        raise SchemaError(
            f"{framework.value} models need --input and --output specs (name:DATATYPE:dims)",
            code=ErrorCode.INVALID_REQUEST,
        )
    return ModelRecord(
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
