"""What every benchmark records beside its figures (commit, machine) and how it writes them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def git_commit() -> str:
    """Short hash of the checked-out commit ("unknown" outside a git checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine() -> str:
    """Architecture, core count and Python version of this machine."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_report(path: str | Path, report: Mapping[str, Any], *, indent: int = 2, quiet: bool = False) -> Path:
    """Write ``report`` as JSON to ``path`` (creating its folder) and say where."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=indent) + "\n")
    if not quiet:
        print(f"figures written to {target}")
    return target
