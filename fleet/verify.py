"""``fleet models verify``: send a record's example input through the whole HTTP path and check the answer.

The example is the one stored with the record, or one generated from the signature (every -1
dimension becomes 1, values by datatype). The answer must name exactly the declared outputs, with
the declared datatypes and shapes that fit the signature (-1 matches any size).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import NUMPY_DTYPES, ModelRecord, SchemaError, TensorSpec, datatype_of

from .client import FleetClient
from .errors import ClientError


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


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of one verification."""

    model: str
    version: str
    latency_ms: float
    problems: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # name -> "FP32[1, 3]"

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One PASS/FAIL line for the terminal."""
        head = f"{'PASS' if self.ok else 'FAIL'} {self.model} v{self.version}"
        if self.ok:
            shapes = ", ".join(f"{name} {desc}" for name, desc in self.outputs.items())
            return f"{head}: {shapes} in {self.latency_ms:.1f} ms"
        return f"{head} ({self.latency_ms:.1f} ms): " + "; ".join(self.problems)


async def verify(client: FleetClient, record: ModelRecord, *, timeout_s: float | None = None) -> VerifyReport:
    """Infer the example of ``record`` through the gateway and check the outputs against its signature."""
    inputs = example_inputs(record)
    started = time.perf_counter()
    try:
        result = await client.infer(record.name, inputs, version=record.version, timeout_s=timeout_s)
    except (ClientError, SchemaError) as exc:
        return VerifyReport(record.name, record.version, (time.perf_counter() - started) * 1000, [str(exc)])
    latency_ms = (time.perf_counter() - started) * 1000
    problems = check_outputs(record.outputs, result.outputs)
    if result.model_version and result.model_version != record.version:
        problems.append(f"answered by version {result.model_version!r}")
    described = {
        name: f"{datatype_of(a)}{list(a.shape)}" for name, a in result.outputs.items() if a.dtype.kind in "biufO"
    }
    return VerifyReport(record.name, record.version, latency_ms, problems, described)
