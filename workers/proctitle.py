"""The worker's process title, so that ``ps`` shows what each worker process serves.

``fleet-worker pool-3f2a pool: 37 models, 5 resident`` (pool mode: models assigned, models loaded now) or
``fleet-worker tiny-9c1e model=tiny`` (one consumer per model). Set once the worker is ready, then checked
every heartbeat interval and rewritten only when the text changed (one ``prctl``/argv write, no I/O).
Only ``python -m workers`` sets it (``Worker(process_title=True)``): a worker embedded in another process
leaves that process's title alone.
Without the ``setproctitle`` package the title stays ``python -m workers``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("fleet.workers")

#: First word of every worker's title (``pgrep -f fleet-worker`` finds them all).
TITLE_PREFIX = "fleet-worker"
#: Longest title written (the model list of a many-model worker is cut, with its count kept).
MAX_TITLE = 200


def _setter() -> Callable[[str], None] | None:
    try:
        from setproctitle import setproctitle
    except ImportError:  # optional at run time: the title is a convenience
        return None
    return setproctitle


def title(worker_id: str, mode: str, models: Iterable[str], resident: int) -> str:
    """The title of a worker (pure)."""
    served = sorted(models)
    if mode == "pool":
        return f"{TITLE_PREFIX} {worker_id} pool: {len(served)} models, {resident} resident"
    text = f"{TITLE_PREFIX} {worker_id} model={','.join(served) or '-'}"
    if len(text) > MAX_TITLE:
        text = f"{text[: MAX_TITLE - 20].rsplit(',', 1)[0]},... ({len(served)} models)"
    return text


def describe(worker: Any) -> str:
    """The title of a running `workers.worker.Worker` (its public views: consumers, pool, residency)."""
    pool = worker.pool
    models = list(pool.models) if pool is not None else [c.model for c in worker.consumers]
    return title(worker.id, worker.settings.mode, models, len(worker.residency.state().models))


async def keep_title(worker: Any, interval_s: float) -> None:
    """Keep the process title current until cancelled; never raises (a title is not worth a worker)."""
    setter = _setter()
    if setter is None:
        return
    shown = ""
    while True:
        try:
            text = describe(worker)
            if text != shown:
                setter(text)
                shown = text
        except Exception:  # the views changed shape under a concurrent stop: try again next interval
            log.debug("process title not updated", exc_info=True)
        await asyncio.sleep(interval_s)
