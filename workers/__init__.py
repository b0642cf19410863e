"""The worker service: consumes a model's request topic, batches, runs the model, replies via Redis.

In process: ``async with Worker(WorkerSettings(models=("m",), fleet=...)) as w: await w.wait_ready()``.
As a process: ``FLEET_WORKER_MODELS=m python -m workers``.
"""

from __future__ import annotations

from .errors import BackendDownError, ModelExecutionError, ModelLoadError, WorkerError
from .runtimes import Runtime, load_runtime
from .settings import WorkerSettings
from .worker import Worker

__all__ = [
    "BackendDownError",
    "ModelExecutionError",
    "ModelLoadError",
    "Runtime",
    "Worker",
    "WorkerError",
    "WorkerSettings",
    "load_runtime",
]
