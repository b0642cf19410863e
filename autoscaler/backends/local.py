"""Local process backend: each worker is a ``python -m workers`` subprocess on this machine.

Scale-up spawns workers (one model each, a unique ``FLEET_WORKER_ID``, the fleet settings in the
environment, a GPU through ``CUDA_VISIBLE_DEVICES`` when the machine has any, assigned to the least-loaded
GPU, which is round-robin while nothing stops). Scale-down SIGTERMs the newest workers: a worker then
drains (stops fetching, finishes its batch, replies, commits, leaves the group) and exits. The backend never
waits for that inside `scale`: a drain task per worker waits for the exit, SIGKILLs the process group after
``drain_timeout_s`` (logged) and reaps it. Workers run in their own session, so a Ctrl-C in the terminal
reaches only the parent, which drives the shutdown; `stop()` drains every worker and reaps it.

With ``pool=True`` and ``standby=N`` the backend keeps N pool workers started ahead (``python -m workers
--standby``: interpreter started, imports done, not a member of the fleet: no heartbeat, nothing placed on it),
so a scale-up activates one (a line on its stdin) instead of paying a process start; a new standby is started
once no worker is starting (after the activated one is ready), so it does not compete with it for CPU. A
standby exits when its stdin closes or on SIGTERM, so it goes with the parent as the workers do; `stop()`
stops it with them.

Spawn (or activation) -> ready latency (until the heartbeat hash says ``state=ready``) is measured for every
worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from common.backoff import Backoff, BackoffPolicy
from schemas import FleetSettings, Names
from schemas.eventloop import AsyncService

from ..errors import BackendError
from ..inventory import detect_gpu_count
from .env import PARENT_PID_ENV, pick_gpu, worker_argv, worker_env

log = logging.getLogger("fleet.autoscaler")

#: How often readiness and exits are polled.
_POLL_S = 0.05
#: Respawn backoff after a worker of a model exits on its own: 1 s, doubling per crash, up to 60 s.
CRASH_BACKOFF = BackoffPolicy(first_s=1.0, max_s=60.0)


class WorkerPhase(enum.StrEnum):
    """Where a local worker process is in its life, as the backend sees it."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass(frozen=True)
class LocalWorker:
    """A snapshot of one live worker process."""

    worker_id: str
    model: str
    pid: int
    gpu: int | None
    phase: WorkerPhase
    log_path: Path
    #: Seconds from spawn (a standby: its activation) to the heartbeat saying ready; None while not ready.
    ready_latency_s: float | None
    #: Port of its Prometheus /metrics (None: no metrics port range configured).
    metrics_port: int | None = None


@dataclass(frozen=True)
class WorkerExit:
    """How a worker process ended."""

    worker_id: str
    model: str
    returncode: int
    #: True when the backend had asked it to stop (scale-down or `stop()`).
    requested: bool
    #: True when it had to be SIGKILLed after the drain timeout.
    killed: bool
    #: Seconds from SIGTERM to exit (0 when it was not asked to stop).
    drain_s: float


@dataclass(eq=False)
class _Proc:
    worker_id: str
    model: str
    gpu: int | None
    process: asyncio.subprocess.Process
    log_path: Path
    spawned_at: float
    ready_latency_s: float | None = None
    metrics_port: int | None = None
    stop_requested_at: float | None = None
    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: A standby not activated yet (its model is ``STANDBY_MODEL`` until then).
    standby: bool = False
    #: Started as a standby (activated since when ``standby`` is False).
    was_standby: bool = False
    activated: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @property
    def phase(self) -> WorkerPhase:
        if self.stop_requested_at is not None:
            return WorkerPhase.DRAINING
        return WorkerPhase.STARTING if self.ready_latency_s is None else WorkerPhase.READY

    def snapshot(self) -> LocalWorker:
        return LocalWorker(
            self.worker_id,
            self.model,
            self.process.pid,
            self.gpu,
            self.phase,
            self.log_path,
            self.ready_latency_s,
            self.metrics_port,
        )


#: The model key of a standby until a scale-up activates it (its exits are recorded under it).
STANDBY_MODEL = ""


class _State(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class LocalProcessBackend(AsyncService):
    """`Backend` that runs workers as local processes (the one ``fleet up`` embeds)."""

    def __init__(
        self,
        fleet_settings: FleetSettings,
        *,
        log_dir: str | Path | None = None,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
        gpu_count: int | None = None,
        base_env: Mapping[str, str] | None = None,
        drain_timeout_s: float = 60.0,
        ready_timeout_s: float = 120.0,
        metrics_ports: range | None = None,
        pool: bool = False,
        standby: int = 0,
    ) -> None:
        self.fleet_settings = fleet_settings
        #: Spawn pool workers (multi-model, following their assignment) whatever the model key says.
        self.pool = pool
        if standby < 0:
            raise ValueError("standby must be >= 0")
        #: Pool workers kept started ahead for scale-ups to activate (pool mode only; 0 = none).
        self.standby = standby if pool else 0
        #: Ports handed to workers for their /metrics, one each (None: workers serve none).
        self.metrics_ports = metrics_ports
        self.names = Names(fleet_settings.namespace)
        self.log_dir = Path(log_dir or Path(tempfile.gettempdir()) / f"fleet-{fleet_settings.namespace}" / "workers")
        self.python = python
        self.extra_env = dict(extra_env or {})
        #: GPUs handed out round-robin; counted with NVML when not given (0 without NVML).
        self.gpu_count = detect_gpu_count() if gpu_count is None else gpu_count
        self._base_env = base_env
        self.drain_timeout_s = drain_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._state = _State.RUNNING
        self._stopping = asyncio.Event()
        self._procs: dict[str, _Proc] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis: Any = None
        #: Spawn -> ready seconds of every worker that became ready (newest last).
        self.ready_latencies: deque[float] = deque(maxlen=10_000)
        #: How workers ended (newest last).
        self.exits: deque[WorkerExit] = deque(maxlen=10_000)
        self._crashes: dict[str, Backoff] = {}  # by model, while its workers keep exiting on their own
        self._respawn_at: dict[str, float] = {}

    # Backend protocol -------------------------------------------------------
    async def replicas(self, model: str) -> int:
        """Live workers of ``model`` that are starting or ready (draining ones are not counted)."""
        return len(self._serving(model))

    async def scale(self, model: str, replicas: int) -> None:
        """Spawn or drain workers so ``model`` has ``replicas``; returns at once (drains finish later)."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if self._state is not _State.RUNNING:
            raise BackendError(f"the local backend is {self._state.value}: cannot scale {model!r}")
        serving = self._serving(model)
        missing = replicas - len(serving)
        wait_s = self._respawn_at.get(model, 0.0) - time.monotonic()
        crashes = self._crashes.get(model)
        if missing > 0 and wait_s > 0 and crashes is not None:
            # Workers of this model keep exiting on their own (bad artifact, no broker): do not fork-bomb.
            log.warning(
                "not spawning %d worker(s) of %s for another %.1fs: %d crash(es) in a row",
                missing,
                model,
                wait_s,
                crashes.failures,
            )
            missing = 0
        for _ in range(missing):
            if not await self._activate_standby(model):
                await self._spawn(model)
        # Newest first: they are the likeliest to be still starting, and the old ones keep their partitions.
        for proc in serving[replicas:][::-1]:
            self._request_stop(proc, "scale-down")
        await self._replenish()

    # lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to connect: the backend works from construction (kept for the start/stop pairing)."""
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"LocalProcessBackend cannot start from state {self._state.value}")

    async def stop(self) -> None:
        """Drain every worker (SIGTERM, SIGKILL after the drain timeout), reap them; idempotent."""
        if self._state is _State.RUNNING:
            self._state = _State.STOPPING
            self._stopping.set()
            for proc in list(self._procs.values()):
                self._request_stop(proc, "backend stop")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._state = _State.STOPPED
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()

    # views ------------------------------------------------------------------
    def workers(self, model: str | None = None) -> list[LocalWorker]:
        """Snapshots of the live workers (draining ones included, standbys not), oldest first."""
        procs = sorted(self._procs.values(), key=lambda p: p.spawned_at)
        return [p.snapshot() for p in procs if p.alive and not p.standby and (model is None or p.model == model)]

    def standbys(self) -> list[LocalWorker]:
        """Snapshots of the live standbys not activated yet (stopping ones included), oldest first."""
        procs = sorted(self._procs.values(), key=lambda p: p.spawned_at)
        return [p.snapshot() for p in procs if p.alive and p.standby]

    def gpu_allocation(self) -> dict[int, list[str]]:
        """GPU index -> ids of the live workers assigned to it (draining ones still hold their GPU)."""
        allocation: dict[int, list[str]] = {}
        for proc in self._procs.values():
            if proc.gpu is not None and proc.alive:
                allocation.setdefault(proc.gpu, []).append(proc.worker_id)
        return allocation

    async def wait_ready(self, model: str, count: int, timeout_s: float = 60.0) -> list[LocalWorker]:
        """Wait until ``count`` workers of ``model`` are ready; raises BackendError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            ready = [w for w in self.workers(model) if w.phase is WorkerPhase.READY]
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise BackendError(f"{len(ready)} of {count} workers of {model!r} ready after {timeout_s}s")
            await asyncio.sleep(_POLL_S)

    # internals ---------------------------------------------------------------
    def _serving(self, model: str) -> list[_Proc]:
        procs = (
            p
            for p in self._procs.values()
            if p.model == model and p.alive and p.stop_requested_at is None and not p.standby
        )
        return sorted(procs, key=lambda p: p.spawned_at)

    async def _activate_standby(self, model: str) -> bool:
        """Make the oldest live standby a worker of ``model`` (a line on its stdin); False when there is none."""
        for proc in sorted(self._procs.values(), key=lambda p: p.spawned_at):
            if not (proc.standby and proc.alive and proc.stop_requested_at is None):
                continue
            stdin = proc.process.stdin
            try:
                assert stdin is not None  # spawned with stdin=PIPE
                stdin.write(b"activate\n")
                await stdin.drain()
                stdin.close()
            except (OSError, RuntimeError) as exc:  # it died meanwhile (its lifetime routine reaps it)
                log.info("standby %s could not be activated: %s", proc.worker_id, exc)
                self._request_stop(proc, "activation failed")
                continue
            proc.standby, proc.was_standby, proc.model, proc.spawned_at = False, True, model, time.monotonic()
            proc.activated.set()
            log.info("activated standby %s as a worker of %s (pid %d)", proc.worker_id, model, proc.process.pid)
            return True
        return False

    async def _replenish(self) -> None:
        """Start standbys up to ``standby`` while no worker is starting (so they do not compete with it)."""
        if not self.standby or self._state is not _State.RUNNING:
            return
        live = [p for p in self._procs.values() if p.alive and p.stop_requested_at is None]
        if any(p.phase is WorkerPhase.STARTING and not p.standby for p in live):
            return  # called again when it is ready
        if self._respawn_at.get(STANDBY_MODEL, 0.0) > time.monotonic():
            return  # standbys keep exiting on their own: the crash backoff's timer calls again
        for _ in range(self.standby - sum(p.standby for p in live)):
            await self._spawn(STANDBY_MODEL, standby=True)

    async def _spawn(self, model: str, *, standby: bool = False) -> None:
        worker_id = f"{'pool' if self.pool else model}-{secrets.token_hex(4)}"
        gpu = pick_gpu((p.gpu for p in self._procs.values() if p.alive), self.gpu_count)
        base = os.environ if self._base_env is None else self._base_env
        metrics_port = self._free_metrics_port()
        extra = self.extra_env
        if metrics_port is not None:
            extra = {**extra, "FLEET_WORKER_METRICS_PORT": str(metrics_port)}
        env = worker_env(self.fleet_settings, "" if self.pool else model, worker_id, gpu=gpu, base=base, extra=extra)
        log_path = self.log_dir / f"{worker_id}.log"
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                process = await asyncio.create_subprocess_exec(
                    *worker_argv(self.python),
                    *(["--standby"] if standby else []),
                    env={**env, PARENT_PID_ENV: str(os.getpid())},
                    stdin=subprocess.PIPE if standby else subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: signals reach it only from us
                )
            finally:
                os.close(out)  # the child has its own copy
        except OSError as exc:
            what = "a standby" if standby else f"a worker of {model!r}"
            raise BackendError(f"spawning {what} failed: {exc}") from exc
        proc = _Proc(
            worker_id, model, gpu, process, log_path, time.monotonic(), metrics_port=metrics_port, standby=standby
        )
        proc.was_standby = standby
        self._procs[worker_id] = proc
        if self._state is not _State.RUNNING:  # stop() began while this spawn was under way
            self._request_stop(proc, "backend stop")
        gpu_text = "" if gpu is None else f" on GPU {gpu}"
        what = f"standby {worker_id}" if standby else f"worker {worker_id} of {model}"
        log.info("spawned %s (pid %d)%s, log %s", what, process.pid, gpu_text, log_path)
        self._own(self._lifetime_routine(proc), f"worker-{worker_id}")

    def _free_metrics_port(self) -> int | None:
        """The lowest port of ``metrics_ports`` no live worker holds; None when there is no range."""
        if self.metrics_ports is None:
            return None
        taken = {p.metrics_port for p in self._procs.values() if p.alive}
        for port in self.metrics_ports:
            if port not in taken:
                return port
        ports = self.metrics_ports
        raise BackendError(f"every worker metrics port of {ports.start}-{ports.stop - 1} is taken; widen the range")

    def _own(self, routine: Any, name: str) -> None:
        task = asyncio.create_task(routine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request_stop(self, proc: _Proc, why: str) -> None:
        if proc.stop_requested_at is not None or not proc.alive:
            return
        proc.stop_requested_at = time.monotonic()
        log.info("draining worker %s of %s (pid %d): %s", proc.worker_id, proc.model, proc.process.pid, why)
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)
        self._own(self._drain_routine(proc), f"drain-{proc.worker_id}")

    async def _drain_routine(self, proc: _Proc) -> None:
        try:
            await asyncio.wait_for(proc.exited.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning(
                "worker %s of %s (pid %d) still running %.0fs after SIGTERM: killing it (its uncommitted "
                "records will be redelivered)",
                proc.worker_id,
                proc.model,
                proc.process.pid,
                self.drain_timeout_s,
            )
            _kill_group(proc.process.pid)
            await proc.exited.wait()

    async def _lifetime_routine(self, proc: _Proc) -> None:
        try:
            activated = not proc.standby or await self._await_activation(proc)
            if activated:
                await self._await_ready(proc)
            returncode = await proc.process.wait()  # reaps it
        finally:
            proc.exited.set()
            self._procs.pop(proc.worker_id, None)
        # Anything the worker left in its process group goes with it (no orphans).
        _kill_group(proc.process.pid)
        if not activated:
            self._standby_ended(proc, returncode)
            return
        requested = proc.stop_requested_at is not None
        killed = returncode == -signal.SIGKILL and requested
        drain_s = time.monotonic() - proc.stop_requested_at if proc.stop_requested_at is not None else 0.0
        self.exits.append(WorkerExit(proc.worker_id, proc.model, returncode, requested, killed, drain_s))
        if requested and returncode == 0:
            log.info("worker %s of %s drained and exited in %.2fs", proc.worker_id, proc.model, drain_s)
        elif requested:
            log.warning("worker %s of %s exited with %d after a stop request", proc.worker_id, proc.model, returncode)
        else:
            backoff = self._crashes.setdefault(proc.model, Backoff(CRASH_BACKOFF)).next()
            self._respawn_at[proc.model] = time.monotonic() + backoff
            log.warning(
                "worker %s of %s exited on its own with %d (see %s); respawn in %.0fs at the earliest",
                proc.worker_id,
                proc.model,
                returncode,
                proc.log_path,
                backoff,
            )

    async def _await_activation(self, proc: _Proc) -> bool:
        """Wait until the standby is activated (True) or exits (False); it exits after a stop request."""
        activated = asyncio.ensure_future(proc.activated.wait())
        exited = asyncio.ensure_future(proc.process.wait())
        try:
            await asyncio.wait({activated, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (activated, exited):
                task.cancel()
            await asyncio.gather(activated, exited, return_exceptions=True)
        return proc.activated.is_set()

    def _standby_ended(self, proc: _Proc, returncode: int) -> None:
        """Note a standby's exit before its activation; one that exits on its own is started again later."""
        requested = proc.stop_requested_at is not None
        drain_s = time.monotonic() - proc.stop_requested_at if proc.stop_requested_at is not None else 0.0
        self.exits.append(WorkerExit(proc.worker_id, STANDBY_MODEL, returncode, requested, False, drain_s))
        if requested:
            log.info("standby %s stopped (status %d)", proc.worker_id, returncode)
            return
        backoff = self._crashes.setdefault(STANDBY_MODEL, Backoff(CRASH_BACKOFF)).next()
        self._respawn_at[STANDBY_MODEL] = time.monotonic() + backoff
        log.warning(
            "standby %s exited on its own with %d (see %s); another in %.0fs at the earliest",
            proc.worker_id,
            returncode,
            proc.log_path,
            backoff,
        )
        self._own(self._replenish_after(backoff), "standby-respawn")

    async def _replenish_after(self, delay_s: float) -> None:
        """`_replenish` after ``delay_s``, unless the backend stops first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        await self._replenish()

    async def _await_ready(self, proc: _Proc) -> None:
        """Poll the heartbeat until the worker is ready, exits, is asked to stop or times out."""
        if self._redis is None:
            self._redis = self.fleet_settings.redis.client()
        key = self.names.worker_key(proc.worker_id)
        deadline: float | None = proc.spawned_at + self.ready_timeout_s
        while proc.alive and proc.stop_requested_at is None:
            try:
                state = await self._redis.hget(key, "state")
            except RedisError as exc:
                log.debug("heartbeat of %s unreadable: %s", proc.worker_id, exc)
                state = None
            if state == b"ready":
                proc.ready_latency_s = time.monotonic() - proc.spawned_at
                self.ready_latencies.append(proc.ready_latency_s)
                for key in (proc.model, STANDBY_MODEL) if proc.was_standby else (proc.model,):
                    self._crashes.pop(key, None)
                    self._respawn_at.pop(key, None)
                log.info("worker %s of %s ready in %.2fs", proc.worker_id, proc.model, proc.ready_latency_s)
                await self._replenish()
                return
            if deadline is not None and time.monotonic() > deadline:
                log.warning("worker %s of %s not ready after %.0fs", proc.worker_id, proc.model, self.ready_timeout_s)
                deadline = None  # warn once; a late ready is still recorded
            # An exit shows in `alive` (the child watcher sets returncode); past the timeout, poll gently.
            await asyncio.sleep(_POLL_S if deadline is not None else 1.0)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
