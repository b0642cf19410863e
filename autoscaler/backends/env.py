"""The pure half of the local backend: a worker's command line and environment, and its GPU."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from schemas import FleetSettings

#: Set in the launcher's environment: the pid of the process that spawned it.
PARENT_PID_ENV = "FLEET_LAUNCHER_PARENT_PID"


def settings_env(settings: Any, prefix: str = "") -> dict[str, str]:
    """``settings`` (a settings dataclass) as the environment variables `schemas.load` reads back (pure)."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            env.update(settings_env(value, f.metadata.get("prefix", f"{prefix}{f.name.upper()}_")))
            continue
        var = f.metadata.get("env", f"{prefix}{f.name.upper()}")
        if isinstance(value, bool):
            env[var] = "true" if value else "false"
        elif isinstance(value, tuple):
            env[var] = ",".join(map(str, value))
        elif value is not None:
            env[var] = str(value)
    return env


def worker_env(
    fleet: FleetSettings,
    model: str,
    worker_id: str,
    *,
    gpu: int | None = None,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one worker process (pure).

    ``base`` (normally the parent's environment) minus every ``FLEET_*`` variable, then ``extra``
    (e.g. ``FLEET_WORKER_DEVICE``), then every fleet setting (namespace, Kafka, Redis), then the model,
    the worker id and, when ``gpu`` is given, ``CUDA_VISIBLE_DEVICES``, which no earlier layer overrides.
    An empty ``model`` is a pool worker: it follows its assignment in pool mode (``POOL_WORKER_ENV``).
    """
    env = {k: v for k, v in (base or {}).items() if not k.startswith("FLEET_")}
    env.update(extra or {})
    env.update(settings_env(fleet))
    if model:
        env["FLEET_WORKER_MODELS"] = model
    else:
        env.update(POOL_WORKER_ENV)
    env["FLEET_WORKER_ID"] = worker_id
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


#: What makes a worker a pool worker: one multiplexed consumer serving whatever the placement assigns it.
POOL_WORKER_ENV = {"FLEET_WORKER_MODE": "pool", "FLEET_WORKER_FOLLOW_ASSIGNMENT": "true", "FLEET_WORKER_MODELS": ""}


#: Run as ``python -c``: on Linux the worker asks the kernel for SIGTERM when the autoscaler dies (even by
#: SIGKILL), so it drains instead of living on as an orphan; then it runs ``python -m workers``.
_LAUNCHER = """\
import ctypes, os, runpy, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ.pop("FLEET_LAUNCHER_PARENT_PID", os.getppid())):
    sys.exit(0)  # the autoscaler died before the request above took effect
sys.argv[0] = "workers"
runpy.run_module("workers", run_name="__main__", alter_sys=True)
"""


def worker_argv(python: str) -> list[str]:
    """The command line of a worker: ``python -m workers``, behind the parent-death launcher on Linux."""
    if sys.platform.startswith("linux"):
        return [python, "-c", _LAUNCHER]
    return [python, "-m", "workers"]


def pick_gpu(assigned: Iterable[int | None], gpu_count: int) -> int | None:
    """The GPU for the next worker: the one with the fewest workers, lowest index on ties (pure).

    While no worker stops this is round-robin (0, 1, ..., n-1, 0, ...); after a stop it refills the gap.
    None when there is no GPU.
    """
    if gpu_count <= 0:
        return None
    load = [0] * gpu_count
    for gpu in assigned:
        if gpu is not None and 0 <= gpu < gpu_count:
            load[gpu] += 1
    return min(range(gpu_count), key=lambda i: (load[i], i))
