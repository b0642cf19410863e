"""The benchmarks' server-sent event reader (pure logic, no servers)."""

from __future__ import annotations

from bench.loadgen import SSEDecoder


def _decode(lines: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    events = [data for line in lines if (data := decoder.feed(line)) is not None]
    last = decoder.close()
    return events + ([last] if last is not None else [])


def test_events_end_at_a_blank_line_and_join_their_data_lines() -> None:
    lines = [b'data: {"a": 1}\n', b"\n", b"data: first\r\n", b"data:second\r\n", b"\r\n", b"data: [DONE]\n", b"\n"]
    assert _decode(lines) == ['{"a": 1}', "first\nsecond", "[DONE]"]


def test_comments_other_fields_and_empty_blocks_give_no_event() -> None:
    lines = [b": keep-alive\n", b"\n", b"event: message\n", b"id: 7\n", b"\n", b"\n", b"data: x\n", b"\n"]
    assert _decode(lines) == ["x"]


def test_an_event_the_stream_ends_without_a_blank_line_after_is_kept() -> None:
    assert _decode([b"data: tail"]) == ["tail"]
    assert _decode([]) == []
