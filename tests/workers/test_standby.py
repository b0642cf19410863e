"""``python -m workers --standby``'s wait for its activation line (in process, on real pipes)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from workers.__main__ import wait_for_activation


async def _wait_on_pipe(write: bytes | None) -> bool:
    """`wait_for_activation` on a pipe that gets ``write`` (None: nothing) and is then closed."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        waiting = asyncio.create_task(wait_for_activation(stream))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing came yet
        if write is not None:
            os.write(write_fd, write)
        os.close(write_fd)
        return await asyncio.wait_for(waiting, 10)


async def test_a_line_activates() -> None:
    assert await _wait_on_pipe(b"activate\n") is True


async def test_the_end_of_input_stands_down() -> None:
    assert await _wait_on_pipe(None) is False
    assert await _wait_on_pipe(b"partial") is False  # the parent died mid-line


async def test_a_regular_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stdin"
    path.write_bytes(b"activate\n")
    with path.open("rb") as stream, pytest.raises(ValueError, match="not a pipe"):
        await wait_for_activation(stream)
