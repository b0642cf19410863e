"""Batch request envelopes and reply lists: what travels, what an older reader makes of it, bad members."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from schemas import ErrorCode, InferenceRequest, InferenceResponse, ReplyAddress, ReplyKind, SchemaError, Tensor
from schemas.codec import pack
from schemas.constants import HEADER_BATCH, HEADER_REQUEST_ID
from schemas.envelopes import BadMember, InferenceRequestBatch, pack_responses, unpack_responses
from workers.handler import decode, letter_record

REPLY = ReplyAddress(ReplyKind.STREAM, "gw-stream")


def _request(rid: str, **extra: object) -> InferenceRequest:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    return InferenceRequest(rid, "m", "1", (Tensor.from_numpy("x", x),), REPLY, **extra)  # type: ignore[arg-type]


@dataclass
class _Record:
    """The fields of an aiokafka ConsumerRecord the worker reads."""

    value: bytes
    headers: list[tuple[str, bytes]]
    topic: str = "t"
    partition: int = 0
    offset: int = 5
    key: bytes | None = b"a"


def test_a_batch_keeps_each_members_own_fields() -> None:
    members = (
        _request("a", deadline_ms=10.0, created_ms=1.0),
        _request("b", outputs=("y",), parameters={"k": 1}, created_ms=2.0, attempt=2, not_before_ms=3.0),
    )
    data = InferenceRequestBatch("m", "1", REPLY, members).to_bytes(reply_lists=True)
    decoded = InferenceRequestBatch.members_from_bytes(data)
    assert decoded == list(members)
    assert all(isinstance(m, InferenceRequest) and m.reply.lists for m in decoded)


def test_an_older_single_request_reader_refuses_a_batch_by_name() -> None:
    data = InferenceRequestBatch("m", "1", REPLY, (_request("a"),)).to_bytes()
    with pytest.raises(SchemaError, match="batch envelope"):
        InferenceRequest.from_bytes(data)


def test_a_single_envelope_says_when_its_reader_takes_lists() -> None:
    assert not InferenceRequest.from_bytes(_request("a").to_bytes()).reply.lists
    marked = InferenceRequest.from_bytes(_request("a").to_bytes(reply_lists=True))
    assert marked.reply.lists and marked == _request("a", created_ms=marked.created_ms)


def test_a_batch_names_one_model_version_and_reply() -> None:
    other = InferenceRequest("b", "m", "2", (), REPLY)
    with pytest.raises(SchemaError, match="request b"):
        InferenceRequestBatch("m", "1", REPLY, (_request("a"), other))


def test_a_bad_member_is_told_apart_with_its_id() -> None:
    good = _request("a").member_wire()
    broken = {**_request("b").member_wire(), "inputs": [["x", "FP32", [1, 4], b"short"]]}
    data = pack({"v": 1, "kind": "batch", "model": "m", "version": "1", "reply": REPLY.to_wire(), "rl": True,
                 "requests": [good, broken, 7]})  # fmt: skip
    first, second, third = InferenceRequestBatch.members_from_bytes(data)
    assert isinstance(first, InferenceRequest) and first.id == "a"
    assert isinstance(second, BadMember) and second.stub is not None and second.stub.id == "b"
    assert second.error.code is ErrorCode.INVALID_INPUT and second.stub.reply.lists
    assert isinstance(third, BadMember) and third.stub is None


def test_the_worker_expands_a_batch_record_and_commits_past_it_with_the_last_member() -> None:
    batch = InferenceRequestBatch("m", "1", REPLY, (_request("a"), _request("b"), _request("c")))
    headers = [(HEADER_REQUEST_ID, b"a"), (HEADER_BATCH, b"3")]
    items = decode(_Record(batch.to_bytes(), headers))
    assert [i.request.id for i in items if i.request] == ["a", "b", "c"]
    assert [i.next_offset for i in items] == [5, 5, 6]
    # A member's dead letter keeps that member alone, as a single request without the batch header.
    letter = letter_record(items[1])
    assert InferenceRequest.from_bytes(letter.value).id == "b" and letter.key == b"b"
    assert dict(letter.headers) == {HEADER_REQUEST_ID: b"b"} and letter.offset == 5
    # A plain record is one item, committed past at once; a batch that does not decode is one undecodable item.
    (single,) = decode(_Record(_request("s").to_bytes(), [(HEADER_REQUEST_ID, b"s")]))
    assert single.request is not None and single.next_offset == 6 and letter_record(single).value
    (bad,) = decode(_Record(b"\xc1", headers))
    assert bad.request is None and bad.error is not None and bad.next_offset == 6


def test_a_reply_list_carries_each_response() -> None:
    ok = InferenceResponse("a", "m", "1", outputs=(Tensor.from_numpy("y", np.ones(2, np.float32)),), batch_size=2)
    failed = InferenceResponse("b", "m", "1", worker="w")
    responses, errors = unpack_responses(pack_responses([ok, failed]))
    assert responses == [ok, failed] and errors == []
    mangled = pack({"v": 1, "responses": [ok.to_wire(), {"v": 1, "id": 3}, {"v": 99}]})
    responses, errors = unpack_responses(mangled)
    assert responses == [ok] and len(errors) == 2
