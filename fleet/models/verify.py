"""``fleet models verify``: send a record's example input through the whole HTTP path and check the answer.

The example is the one stored with the record, or one generated from the signature (every -1
dimension becomes 1, values by datatype). The answer must name exactly the declared outputs, with
the declared datatypes and shapes that fit the signature (-1 matches any size). For an ONNX model
whose artifact is on this machine (same sha256) the answer must also equal a local ONNX Runtime run
of the artifact on the same input (BYTES exactly, numbers within a float tolerance), so a fleet that
answers wrongly (e.g. feeds strings in the wrong form) fails verification.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.client.errors import ClientError
from fleet.client.http import FleetClient
from schemas import NUMPY_DTYPES, Framework, ModelRecord, SchemaError, TensorSpec, datatype_of, sha256_file


def example_array(spec: TensorSpec, seed: int = 0) -> npt.NDArray[Any]:
    """A deterministic array that fits ``spec`` (every -1 dimension as 1)."""
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    rng = np.random.default_rng(seed)
    if spec.datatype == "BYTES":
        return np.full(shape, b"example", dtype=object)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    dtype = NUMPY_DTYPES[spec.datatype]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)


def example_inputs(record: ModelRecord) -> dict[str, npt.NDArray[Any]]:
    """The record's stored example, or one generated from its input signature."""
    if record.example:
        return {tensor.name: tensor.to_numpy() for tensor in record.example}
    return {spec.name: example_array(spec, seed) for seed, spec in enumerate(record.inputs)}


def check_outputs(specs: tuple[TensorSpec, ...], outputs: dict[str, npt.NDArray[Any]]) -> list[str]:
    """Problems with ``outputs`` against the output signature (empty when they fit)."""
    expected = {spec.name: spec for spec in specs}
    problems = [f"missing output {name!r}" for name in expected if name not in outputs]
    problems += [f"unexpected output {name!r}" for name in outputs if name not in expected]
    for name, array in outputs.items():
        spec = expected.get(name)
        if spec is None:
            continue
        try:
            datatype = datatype_of(array)
        except SchemaError as exc:
            problems.append(f"output {name!r}: {exc}")
            continue
        if datatype != spec.datatype:
            problems.append(f"output {name!r} is {datatype}, the signature says {spec.datatype}")
        if not spec.matches(array.shape):
            problems.append(f"output {name!r} has shape {list(array.shape)}, the signature says {list(spec.shape)}")
    return problems


def reference_outputs(record: ModelRecord, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]] | None:
    """The outputs of a local ONNX Runtime run of the record's artifact on ``inputs``; None when not possible.

    Only for ONNX records whose artifact is a file here with the registered sha256 (and onnxruntime
    installed). BYTES inputs are fed as ``str`` (UTF-8), as ONNX Runtime's string tensors expect.
    Blocking: run it in a thread.
    """
    if record.framework is not Framework.ONNX or not os.path.isfile(record.artifact):
        return None
    try:
        import onnxruntime as ort

        if sha256_file(record.artifact) != record.sha256:
            return None
        session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    except (ImportError, OSError):
        return None
    feed = {name: _text(array) if array.dtype == object else array for name, array in inputs.items()}
    values = session.run(None, feed)
    return {arg.name: np.asarray(value) for arg, value in zip(session.get_outputs(), values, strict=True)}


def _text(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.reshape(-1).tolist()]
    converted = np.empty(len(items), dtype=object)
    converted[:] = items
    return converted.reshape(array.shape)


def compare_outputs(
    outputs: dict[str, npt.NDArray[Any]], expected: dict[str, npt.NDArray[Any]], specs: tuple[TensorSpec, ...]
) -> list[str]:
    """Where ``outputs`` differ from ``expected`` (a reference run): BYTES exactly, numbers within a tolerance."""
    problems: list[str] = []
    for spec in specs:
        got, want = outputs.get(spec.name), expected.get(spec.name)
        if got is None or want is None:
            continue  # a missing output is check_outputs' problem
        if got.shape != want.shape:
            problems.append(f"output {spec.name!r} has shape {list(got.shape)}, the local run {list(want.shape)}")
            continue
        if spec.datatype == "BYTES":
            got_items = [_as_bytes(x) for x in got.reshape(-1).tolist()]
            want_items = [_as_bytes(x) for x in want.reshape(-1).tolist()]
            differ = [i for i, (a, b) in enumerate(zip(got_items, want_items, strict=True)) if a != b]
            if differ:
                i = differ[0]
                problems.append(
                    f"output {spec.name!r} differs from the local run at element {i}: "
                    f"{got_items[i]!r}, expected {want_items[i]!r}"
                )
            continue
        want = want.astype(NUMPY_DTYPES[spec.datatype])
        tolerance = {"FP16": (1e-2, 1e-2), "FP32": (1e-4, 1e-5), "FP64": (1e-6, 1e-8)}.get(spec.datatype, (0, 0))
        close = np.isclose(got, want, rtol=tolerance[0], atol=tolerance[1], equal_nan=True)
        if not close.all():
            index = tuple(int(i) for i in np.argwhere(~close)[0])
            problems.append(
                f"output {spec.name!r} differs from the local run at {list(index)}: {str(got[index])}, "
                f"expected {str(want[index])}"
            )
    return problems


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of one verification."""

    model: str
    version: str
    latency_ms: float
    problems: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # name -> "FP32[1, 3]"
    #: True when the answer was compared with a local ONNX Runtime run of the artifact.
    compared: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One PASS/FAIL line for the terminal."""
        head = f"{'PASS' if self.ok else 'FAIL'} {self.model} v{self.version}"
        if self.ok:
            shapes = ", ".join(f"{name} {desc}" for name, desc in self.outputs.items())
            checked = "; matches a local ONNX Runtime run" if self.compared else ""
            return f"{head}: {shapes} in {self.latency_ms:.1f} ms{checked}"
        return f"{head} ({self.latency_ms:.1f} ms): " + "; ".join(self.problems)


async def verify(client: FleetClient, record: ModelRecord, *, timeout_s: float | None = None) -> VerifyReport:
    """Infer the example of ``record`` through the gateway and check the outputs against its signature.

    When the artifact is a local ONNX file, the outputs must also equal a local ONNX Runtime run.
    """
    inputs = example_inputs(record)
    try:
        expected = await asyncio.to_thread(reference_outputs, record, inputs)
    except Exception:  # onnxruntime raises its own unrelated types; then the answer is checked as before
        expected = None
    started = time.perf_counter()
    try:
        result = await client.infer(record.name, inputs, version=record.version, timeout_s=timeout_s)
    except (ClientError, SchemaError) as exc:
        return VerifyReport(record.name, record.version, (time.perf_counter() - started) * 1000, [str(exc)])
    latency_ms = (time.perf_counter() - started) * 1000
    problems = check_outputs(record.outputs, result.outputs)
    if expected is not None:
        problems += compare_outputs(result.outputs, expected, record.outputs)
    if result.model_version and result.model_version != record.version:
        problems.append(f"answered by version {result.model_version!r}")
    described = {
        name: f"{datatype_of(a)}{list(a.shape)}" for name, a in result.outputs.items() if a.dtype.kind in "biufO"
    }
    return VerifyReport(record.name, record.version, latency_ms, problems, described, compared=expected is not None)
