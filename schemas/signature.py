"""Model signatures (tensor specs, batching settings) and the pure check of inputs against them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, SchemaError
from .tensors import DATATYPES, Tensor


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, datatype and shape of a model input or output; -1 marks a dynamic dimension.

    When the model batches (``max_batch_size > 1``) dimension 0 is the batch dimension and must be -1.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise SchemaError(f"spec {self.name!r}: unknown datatype {self.datatype!r}", code=ErrorCode.INVALID_REQUEST)
        if any(not isinstance(d, int) or d < -1 for d in self.shape):
            raise SchemaError(f"spec {self.name!r}: shape {list(self.shape)} must hold ints >= -1")

    def matches(self, shape: Sequence[int]) -> bool:
        """True when a concrete ``shape`` fits this spec."""
        return len(shape) == len(self.shape) and all(s == -1 or s == d for s, d in zip(self.shape, shape, strict=True))

    def to_wire(self) -> list[Any]:
        return [self.name, self.datatype, list(self.shape)]

    @classmethod
    def from_wire(cls, raw: Any) -> TensorSpec:
        if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], str) and isinstance(raw[1], str)):
            raise SchemaError("tensor spec must be [name, datatype, shape]")
        if not isinstance(raw[2], list):
            raise SchemaError("tensor spec shape must be a list")
        return cls(raw[0], raw[1], tuple(raw[2]))

    def describe(self) -> str:
        return f"{self.name}:{self.datatype}{list(self.shape)}"


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Dynamic batching of a model: rows per batch and how long the first request may wait for company."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise SchemaError("max_batch_size must be >= 1", code=ErrorCode.INVALID_REQUEST)
        if self.max_queue_delay_ms < 0:
            raise SchemaError("max_queue_delay_ms must be >= 0", code=ErrorCode.INVALID_REQUEST)


def parse_spec(text: str) -> TensorSpec:
    """Parse ``name:DATATYPE:d0,d1,...`` (as given on the command line) into a TensorSpec."""
    parts = text.split(":")
    if len(parts) != 3:
        raise SchemaError(f"tensor spec {text!r} must look like name:FP32:-1,4", code=ErrorCode.INVALID_REQUEST)
    name, datatype, dims = parts
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise SchemaError(
            f"tensor spec {text!r}: dimensions must be integers", code=ErrorCode.INVALID_REQUEST
        ) from None
    return TensorSpec(name, datatype.upper(), shape)


def check_inputs(specs: Iterable[TensorSpec], tensors: Sequence[Tensor], *, batched: bool = True) -> None:
    """Raise SchemaError(INVALID_INPUT) unless ``tensors`` are exactly the inputs ``specs`` describe.

    Every input must be present once, with the declared datatype and a shape that fits; when the
    model batches, all inputs must agree on the batch dimension.
    """
    by_name = {spec.name: spec for spec in specs}
    seen: set[str] = set()
    for tensor in tensors:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise SchemaError(
                f"unexpected input {tensor.name!r}; the model takes {sorted(by_name)}", code=ErrorCode.INVALID_INPUT
            )
        if tensor.name in seen:
            raise SchemaError(f"input {tensor.name!r} given twice", code=ErrorCode.INVALID_INPUT)
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise SchemaError(
                f"input {tensor.name!r} has datatype {tensor.datatype}, the model expects {spec.datatype}",
                code=ErrorCode.INVALID_INPUT,
            )
        if not spec.matches(tensor.shape):
            raise SchemaError(
                f"input {tensor.name!r} has shape {list(tensor.shape)}, the model expects {list(spec.shape)} "
                "(-1 = any size)",
                code=ErrorCode.INVALID_INPUT,
            )
    missing = sorted(set(by_name) - seen)
    if missing:
        raise SchemaError(f"missing input(s) {missing}", code=ErrorCode.INVALID_INPUT)
    batch_dims = {t.shape[0] for t in tensors if t.shape}
    if batched and len(batch_dims) > 1:
        raise SchemaError(
            f"inputs disagree on the batch dimension (sizes {sorted(batch_dims)})", code=ErrorCode.INVALID_INPUT
        )
