"""What makes a batch run ordered and resumable: the reorder buffer and the checkpoint file.

Results arrive in any order; the :class:`ReorderBuffer` holds them until the contiguous prefix from the
next record to write is complete, so the output is always in input order and a record is written at
most once. Its size is bounded by the runner's in-flight window (no record is sent more than ``window``
positions ahead of the next one to write).

The :class:`Checkpoint` (``OUTPUT.ckpt``, JSON) records the committed prefix: how many records are in
the output, the output's byte length at that point, and where the input continues. It is replaced
atomically (write a temporary file, fsync, rename, fsync the directory) only after the output itself is
fsynced, so after any crash the output holds at least the checkpointed prefix; a resumed run truncates
the output back to ``output_offset`` and goes on from ``records_done``: records written after the last
checkpoint are redone, never duplicated. Pure logic and small blocking file I/O, no event loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from schemas import ErrorCode, FleetError

T = TypeVar("T")
CHECKPOINT_VERSION = 1


class BatchError(FleetError):
    """A batch run that cannot start or go on (bad input file, checkpoint of another run, ...)."""

    code = ErrorCode.INVALID_REQUEST


class ReorderBuffer(Generic[T]):
    """Items keyed by record index, released in index order from ``next_index`` on."""

    def __init__(self, start: int = 0) -> None:
        self.next_index = start
        self._held: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._held)

    def put(self, index: int, item: T) -> bool:
        """Hold ``item``; False (and ignored) when ``index`` was released or is held already."""
        if index < self.next_index or index in self._held:
            return False
        self._held[index] = item
        return True

    def pop_ready(self) -> list[tuple[int, T]]:
        """Remove and return the items that continue the released prefix, in order."""
        ready: list[tuple[int, T]] = []
        while self.next_index in self._held:
            ready.append((self.next_index, self._held.pop(self.next_index)))
            self.next_index += 1
        return ready


@dataclass(frozen=True)
class Checkpoint:
    """The committed prefix of one batch run, and what identifies the run."""

    run_id: str  # request ids are f"{run_id}-{index}": a re-sent record keeps its id
    model: str
    version: str
    input_path: str
    input_size: int
    input_format: str  # jsonl | npy | parquet
    output_format: str  # jsonl | npy
    rows_per_request: int = 1
    records_done: int = 0  # records in the output (the committed prefix)
    input_offset: int = 0  # JSONL: byte offset of record ``records_done`` in the input
    output_offset: int = 0  # bytes of the output that hold the committed prefix
    failures_offset: int = 0  # bytes of the failures file at that point (npy output)
    failed: int = 0  # failed records in the committed prefix
    resend_until: int = 0  # records below this may have been sent already: look for stored results first
    complete: bool = False
    v: int = CHECKPOINT_VERSION

    @staticmethod
    def path_for(output: Path) -> Path:
        """Where the checkpoint of ``output`` lives."""
        return output.with_name(output.name + ".ckpt")

    def advance(self, **changes: Any) -> Checkpoint:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def save(self, path: Path) -> None:
        """Replace ``path`` atomically and durably with this checkpoint."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(self), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint; BatchError when it is missing fields or of an unknown version."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BatchError(f"cannot read checkpoint {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != CHECKPOINT_VERSION:
            raise BatchError(f"checkpoint {path} is not a version {CHECKPOINT_VERSION} batch checkpoint")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise BatchError(f"checkpoint {path} is incomplete: {exc}") from None

    def check_same_run(self, *, model: str, input_path: str, input_size: int, rows_per_request: int) -> None:
        """BatchError unless a resumed run reads the same input for the same model."""
        mismatches = [
            f"{what} was {old!r}, now {new!r}"
            for what, old, new in (
                ("model", self.model, model),
                ("input", self.input_path, input_path),
                ("input size", self.input_size, input_size),
                ("rows per request", self.rows_per_request, rows_per_request),
            )
            if old != new
        ]
        if mismatches:
            raise BatchError("cannot resume: " + "; ".join(mismatches) + " (start a new run without --resume)")


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
