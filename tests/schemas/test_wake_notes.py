"""The wake note's text: what a publisher writes, a receiver reads back; anything else is ignored (None)."""

from __future__ import annotations

import pytest

from schemas.wake_notes import read_wake_note, wake_note


def test_a_note_names_its_topic_and_partition() -> None:
    note = wake_note("fleet.requests.a:b", 3)  # a topic may not hold ':', but the partition is read from the end
    assert read_wake_note(note.encode()) == ("fleet.requests.a:b", 3)
    assert read_wake_note(wake_note("t", 0)) == ("t", 0)


@pytest.mark.parametrize("raw", [b"", b"topic", b"topic:", b":1", b"topic:-1", b"topic:x", b"\xff:1x"])
def test_anything_else_is_ignored(raw: bytes) -> None:
    assert read_wake_note(raw) is None
