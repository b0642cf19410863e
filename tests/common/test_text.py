"""common.text: what Redis hands back (bytes or str) as str."""

from __future__ import annotations

import pytest

from common import text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1-0", "1-0"),
        ("1-0", "1-0"),
        (bytearray(b"ab"), "ab"),
        (memoryview(b"ab"), "ab"),
        ("é".encode(), "é"),
        (7, "7"),
        (None, "None"),
    ],
)
def test_text(value: object, expected: str) -> None:
    assert text(value) == expected


def test_undecodable_bytes_raise_unless_replaced() -> None:
    with pytest.raises(UnicodeDecodeError):
        text(b"\xff")
    assert text(b"a\xff", errors="replace") == "a\ufffd"
