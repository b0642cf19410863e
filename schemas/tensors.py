"""Tensors on the wire: name, OIP datatype, shape and raw little-endian row-major bytes.

``BYTES`` tensors hold each element as a 4-byte little-endian length followed by its bytes, exactly
like the Open Inference Protocol binary extension, so HTTP binary bodies pass through unchanged.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .constants import MAX_TENSOR_ELEMENTS, MAX_TENSOR_RANK
from .errors import ErrorCode, SchemaError

#: OIP datatype -> little-endian numpy dtype (BYTES is handled separately).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES: frozenset[str] = frozenset([*NUMPY_DTYPES, "BYTES"])


def datatype_of(array: npt.NDArray[Any]) -> str:
    """OIP datatype name of a numpy array (object/bytes/str arrays map to BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            return name
    raise SchemaError(f"numpy dtype {array.dtype} has no OIP datatype", code=ErrorCode.INVALID_INPUT)


def element_count(shape: tuple[int, ...]) -> int:
    """Number of elements of a concrete shape."""
    return math.prod(shape)


def check_shape(shape: tuple[int, ...]) -> None:
    """Raise SchemaError unless ``shape`` is a concrete, bounded tensor shape."""
    if len(shape) > MAX_TENSOR_RANK:
        raise SchemaError(f"tensor rank {len(shape)} exceeds {MAX_TENSOR_RANK}", code=ErrorCode.INVALID_INPUT)
    if any((not isinstance(d, int)) or isinstance(d, bool) or d < 0 for d in shape):
        raise SchemaError(f"shape {list(shape)} must hold non-negative integers", code=ErrorCode.INVALID_INPUT)
    if element_count(shape) > MAX_TENSOR_ELEMENTS:
        raise SchemaError(
            f"tensor of shape {list(shape)} exceeds {MAX_TENSOR_ELEMENTS} elements",
            code=ErrorCode.PAYLOAD_TOO_LARGE,
        )


def encode_bytes_elements(items: list[bytes]) -> bytes:
    """Length-prefixed concatenation of BYTES elements."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_bytes_elements(data: bytes, count: int) -> list[bytes]:
    """Split length-prefixed BYTES data into exactly ``count`` elements."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(data)
    for _ in range(count):
        if offset + 4 > len(data):
            raise SchemaError("BYTES tensor data ends inside a length prefix", code=ErrorCode.INVALID_INPUT)
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise SchemaError("BYTES tensor element runs past the data", code=ErrorCode.INVALID_INPUT)
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if offset != len(data):
        raise SchemaError("BYTES tensor data has trailing bytes", code=ErrorCode.INVALID_INPUT)
    return items


def decode_text(items: list[bytes], name: str) -> list[str]:
    """BYTES elements as UTF-8 text; SchemaError(INVALID_INPUT) naming input ``name`` and the first bad element."""
    texts: list[str] = []
    for index, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SchemaError(
                f"input {name!r}: element {index} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "this model takes strings",
                code=ErrorCode.INVALID_INPUT,
            ) from None
    return texts


@dataclass(frozen=True, slots=True)
class Tensor:
    """One named tensor in wire form."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise SchemaError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}", code=ErrorCode.INVALID_INPUT)
        check_shape(self.shape)
        dtype = NUMPY_DTYPES.get(self.datatype)
        if dtype is not None:
            expected = element_count(self.shape) * dtype.itemsize
            if len(self.data) != expected:
                raise SchemaError(
                    f"tensor {self.name!r}: {len(self.data)} data bytes, shape {list(self.shape)} of "
                    f"{self.datatype} needs {expected}",
                    code=ErrorCode.INVALID_INPUT,
                )

    @classmethod
    def from_numpy(cls, name: str, array: npt.NDArray[Any]) -> Tensor:
        """Wire tensor from a numpy array (converted to little-endian, C order)."""
        datatype = datatype_of(array)
        shape = tuple(int(d) for d in array.shape)
        if datatype == "BYTES":
            items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1).tolist()]
            return cls(name, datatype, shape, encode_bytes_elements(items))
        data = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
        return cls(name, datatype, shape, data)

    def to_numpy(self) -> npt.NDArray[Any]:
        """numpy view of the tensor (BYTES tensors become object arrays of ``bytes``)."""
        if self.datatype == "BYTES":
            items = decode_bytes_elements(self.data, element_count(self.shape))
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return array.reshape(self.shape)
        return np.frombuffer(self.data, dtype=NUMPY_DTYPES[self.datatype]).reshape(self.shape)

    def to_wire(self) -> list[Any]:
        """Compact msgpack form: ``[name, datatype, shape, data]``."""
        return [self.name, self.datatype, list(self.shape), self.data]

    @classmethod
    def from_wire(cls, raw: Any) -> Tensor:
        """Inverse of :meth:`to_wire`; raises SchemaError on anything malformed."""
        if not (isinstance(raw, list) and len(raw) == 4):
            raise SchemaError("tensor must be [name, datatype, shape, data]")
        name, datatype, shape, data = raw
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise SchemaError("tensor name and datatype must be strings")
        if not isinstance(shape, list) or not isinstance(data, bytes):
            raise SchemaError("tensor shape must be a list and data must be bytes")
        return cls(name, datatype, tuple(shape), data)
