"""Process supervision of the local stack: restart what died, with backoff, and give up on a process that
keeps dying soon after each start."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.client.errors import StackError

from .procs import Backoff, RestartPolicy

log = logging.getLogger("fleet.stack")

#: Failures of a restart that count as one more quick failure (the next round tries again).
RESTART_ERRORS = (StackError, OSError, RuntimeError, TimeoutError)


@dataclass(frozen=True)
class Unit:
    """One supervised process as the supervisor sees it in a round."""

    name: str
    running: bool
    log_path: Path
    status: int | None  # exit status once it exited


@dataclass
class _Watch:
    """When a process (re)started, its backoff, and when to restart it."""

    backoff: Backoff
    started: float
    restart_at: float | None = None


class Supervisor:
    """One :meth:`heal` per round: a unit found dead is restarted after its backoff delay; one that died
    ``policy.max_failures + 1`` times in a row, each within ``policy.stable_s`` of its start, sets
    :attr:`failure` instead."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.failure: str | None = None
        self._clock = clock
        self._watch: dict[str, _Watch] = {}

    async def heal(self, units: Sequence[Unit], restart: Callable[[str], Awaitable[None]]) -> list[str]:
        """Restart the dead units whose delay is over (``restart(name)`` starts one and waits until it is
        ready); the names restarted. Stops at the first unit given up on (:attr:`failure` says why)."""
        restarted: list[str] = []
        now = self._clock()
        for unit in units:
            watch = self._watch.setdefault(unit.name, _Watch(Backoff(self.policy), now))
            if unit.running:
                continue
            if watch.restart_at is None:
                ran_s = now - watch.started
                delay = watch.backoff.next_delay(ran_s)
                if delay is None:
                    self.failure = (
                        f"the {unit.name} died {self.policy.max_failures + 1} times in a row, each within "
                        f"{self.policy.stable_s:.0f}s of its start (last exit status {unit.status}); giving up; "
                        f"log {unit.log_path}"
                    )
                    log.error("%s", self.failure)
                    return restarted
                watch.restart_at = now + delay
                log.warning(
                    "the %s exited (status %s) after %.1fs; restarting it in %.1fs (quick failure %d of %d); log %s",
                    unit.name, unit.status, ran_s, delay, watch.backoff.failures, self.policy.max_failures,
                    unit.log_path,
                )  # fmt: skip
            if now < watch.restart_at:
                continue
            watch.restart_at, watch.started = None, self._clock()
            try:
                await restart(unit.name)
            except RESTART_ERRORS as exc:
                log.warning("restarting the %s failed: %s", unit.name, exc)  # the next round counts it as a failure
                continue
            log.warning("restarted the %s", unit.name)
            restarted.append(unit.name)
        return restarted
