"""The public surface of the workers package."""

from __future__ import annotations

import workers


def test_all_is_pinned() -> None:
    assert sorted(workers.__all__) == [
        "BackendDownError",
        "ModelExecutionError",
        "ModelLoadError",
        "Runtime",
        "Worker",
        "WorkerError",
        "WorkerSettings",
        "load_runtime",
    ]
    for name in workers.__all__:
        assert hasattr(workers, name)
