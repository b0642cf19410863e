"""``stack.json``: what a running ``fleet up`` wrote about its processes, read by the other commands."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STACK_FILE = "stack.json"
HOME_DIR = ".fleet"


def fleet_home(env: Mapping[str, str], override: str | None = None, cwd: Path | None = None) -> Path:
    """The state directory (absolute): ``override``, else ``$FLEET_HOME``, else the nearest ``.fleet``
    directory in ``cwd`` (default: the current directory) or one of its parents, the way git finds its
    repository, else ``cwd/.fleet`` (where ``fleet up`` creates it)."""
    if override or env.get("FLEET_HOME"):
        return Path(override or env["FLEET_HOME"]).resolve()
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / HOME_DIR).is_dir():
            return folder / HOME_DIR
    return start / HOME_DIR


def home_searched(env: Mapping[str, str], override: str | None = None, cwd: Path | None = None) -> str:
    """Where :func:`fleet_home` looked, in words (for "no local stack found" messages)."""
    if override:
        return f"--home {Path(override).resolve()}"
    if env.get("FLEET_HOME"):
        return f"FLEET_HOME={Path(env['FLEET_HOME']).resolve()}"
    return f"{HOME_DIR} in {(cwd or Path.cwd()).resolve()} and its parents"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie that nobody reaped yet counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal probe
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_cmdline(pid: int) -> str:
    """Command line of ``pid`` (empty when unknown), to tell our children from a reused pid."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class ProcessInfo:
    """One child of the stack."""

    name: str
    role: str  # gateway | autoscaler | worker | broker | redis
    pid: int
    log: str
    models: list[str] = field(default_factory=list)


@dataclass
class StackInfo:
    """Contents of ``stack.json``; ``pid`` is the process that owns the stack (``fleet up``)."""

    pid: int
    namespace: str
    gateway_url: str
    kafka_bootstrap: str
    redis_url: str
    home: str
    started_ms: float
    generation: int = 0  # bumped each time the workers are restarted
    models: list[str] = field(default_factory=list)
    autoscale: bool = False  # True: an autoscaler runs the workers and finds registered models by itself
    processes: list[ProcessInfo] = field(default_factory=list)

    def owner_alive(self) -> bool:
        """True while the owning ``fleet up`` process runs."""
        return pid_alive(self.pid)

    def write(self, home: Path) -> None:
        """Replace ``home/stack.json`` atomically."""
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".{STACK_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(home / STACK_FILE)

    @classmethod
    def read(cls, home: Path) -> StackInfo | None:
        """The stack file in ``home``, or None when there is none (or it is unreadable)."""
        try:
            raw: dict[str, Any] = json.loads((home / STACK_FILE).read_text())
            processes = [ProcessInfo(**p) for p in raw.pop("processes", [])]
            return cls(**raw, processes=processes)
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def remove(home: Path) -> None:
        """Delete ``home/stack.json`` if present."""
        (home / STACK_FILE).unlink(missing_ok=True)
