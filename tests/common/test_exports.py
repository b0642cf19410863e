"""The public surface of the ``common`` package is deliberate, and ``schemas`` stays below it."""

from __future__ import annotations

import subprocess
import sys

import common


def test_all_is_pinned_and_resolves() -> None:
    assert common.__all__ == ["Backoff", "BackoffPolicy", "ReplyStream", "ReplyWaiters", "pause", "supervise", "text"]
    for name in common.__all__:
        assert getattr(common, name).__name__ == name


def test_schemas_does_not_import_common() -> None:
    code = "import sys, schemas, schemas.registry, schemas.traffic; print('common' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
