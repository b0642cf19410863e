"""OIP v2 infer responses: the gateway encodes a worker's answer, the client decodes it into numpy arrays."""

from __future__ import annotations

from typing import Any

from ..envelopes import InferenceResponse
from .body import BinaryCursor, Rendered, read_entry, render, split_body, write_entry
from .data import Array, array_from_binary, array_from_json
from .errors import OipBodyError, Side
from .request import InferBody

_SIDE = Side.RESPONSE


def encode_response(response: InferenceResponse, body: InferBody, request_id: str) -> Rendered:
    """The HTTP body for a successful response: JSON, or binary extension when any output is binary.

    Only the outputs ``body`` asks for (all when it names none); non-finite floats are spelled (strict JSON).
    """
    blobs: list[bytes] = []
    return render(response_document(response, body, request_id, blobs), blobs)


def response_document(
    response: InferenceResponse, body: InferBody, request_id: str, blobs: list[bytes] | None = None
) -> dict[str, Any]:
    """The JSON part of the response (binary outputs' bytes go to ``blobs``). Without ``blobs`` every output
    is JSON ``data`` in plain lists (a document the standard library's ``json`` writes, e.g. an async job's);
    with them, finite numeric data stays numpy arrays for :func:`~schemas.oip.body.dumps`."""
    wanted = {o.name for o in body.outputs}
    plain = blobs is None
    sink: list[bytes] = [] if blobs is None else blobs
    entries: list[dict[str, Any]] = []
    for tensor in response.outputs:
        if wanted and tensor.name not in wanted:
            continue
        binary = not plain and body.binary_for(tensor.name)
        entries.append(
            write_entry(tensor.name, tensor.datatype, tensor.shape, tensor.data, binary, sink, _SIDE, plain=plain)
        )
    return {
        "model_name": response.model,
        "model_version": response.version,
        "id": request_id,
        "parameters": {
            "batch_size": response.batch_size,
            "queue_ms": round(response.queue_ms, 3),
            "compute_ms": round(response.compute_ms, 3),
            "worker": response.worker,
        },
        "outputs": entries,
    }


def decode_response(body: bytes, header_length: str | int | None) -> tuple[dict[str, Any], dict[str, Array]]:
    """The JSON part of a response and its outputs as numpy arrays (binary or JSON data).

    Checked like a request's inputs; OipBodyError or OipTensorError (code UNDECODABLE) name what is wrong.
    """
    meta, cursor = split_body(body, header_length, _SIDE)
    entries = meta.get("outputs", [])
    if not isinstance(entries, list):
        raise OipBodyError("'outputs' must be a list", _SIDE)
    arrays = {name: array for name, array in (_output(raw, i, cursor) for i, raw in enumerate(entries))}
    if cursor is not None:
        cursor.finish()
    return meta, arrays


def decode_outputs(entries: Any) -> dict[str, Array]:
    """The outputs of a response's ``outputs`` list of JSON tensors (an async job's result) as numpy arrays."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise OipBodyError("'outputs' must be a list", _SIDE)
    return {name: array for name, array in (_output(raw, i, None) for i, raw in enumerate(entries))}


def _output(raw: Any, index: int, cursor: BinaryCursor | None) -> tuple[str, Array]:
    entry = read_entry(raw, index, cursor, _SIDE)
    if entry.blob is not None:
        return entry.name, array_from_binary(entry.name, entry.datatype, entry.shape, entry.blob)
    return entry.name, array_from_json(entry.name, entry.datatype, entry.shape, entry.data)
