"""A service subprocess (gateway or worker) with its own log file, environment and graceful stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import backoff as common_backoff

LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class RestartPolicy:
    """How a supervisor restarts a process that died: exponential backoff, and when to give up."""

    initial_s: float = 0.5  # wait before the first restart
    max_s: float = 30.0  # longest wait between restarts
    factor: float = 2.0
    stable_s: float = 30.0  # a process that ran this long before it died starts the count over
    max_failures: int = 5  # quick failures in a row after which the supervisor gives up

    def backoff_policy(self) -> common_backoff.BackoffPolicy:
        """The pauses between restarts, as the common backoff schedule."""
        return common_backoff.BackoffPolicy(self.initial_s, self.max_s, self.factor, stable_s=self.stable_s)


class RestartBackoff:
    """Restart bookkeeping of one supervised process (pure logic: the caller passes how long it ran):
    the common :class:`~common.backoff.Backoff` plus giving up after ``max_failures`` quick failures."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._backoff = common_backoff.Backoff(policy.backoff_policy())

    @property
    def failures(self) -> int:
        """Quick failures in a row."""
        return self._backoff.failures

    def next_delay(self, ran_s: float) -> float | None:
        """Record that the process died after ``ran_s`` seconds; the wait before restarting it, or None
        when it failed ``max_failures`` times in a row, each within ``stable_s`` of its start."""
        delay = self._backoff.next(ran_s)
        return None if self.failures > self.policy.max_failures else delay


#: The name ``fleet.local.stack`` and its tests import.
Backoff = RestartBackoff


class ServiceProcess:
    """``argv`` run in a new session (the terminal's Ctrl-C reaches only ``fleet``, which drives the stop)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return -1 if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def fresh(self) -> ServiceProcess:
        """A new, unstarted process with the same command, environment and log (to restart this one)."""
        return ServiceProcess(self.name, self.argv, self.env, self.log_path)

    def start(self) -> None:
        """Spawn the process; its stdout and stderr go to ``log_path``."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the process to exit; True when it did."""
        deadline = time.monotonic() + timeout_s
        while self.running:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout_s`` (the service drains), then SIGKILL; idempotent."""
        if not self.running:
            return
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        if not await self.wait(timeout_s):
            self._process.kill()
            await self.wait(5.0)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])
