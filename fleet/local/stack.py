"""``LocalStack``: broker, Redis, gateway and workers as local processes, started and stopped in order.

Two ways to run the workers:

* fixed (``StackConfig.autoscale`` False, the default of this Python API): ``workers`` processes serve a
  fixed model list (``FLEET_WORKER_MODELS``); :meth:`LocalStack.restart_workers` replaces them when models
  are registered later (``fleet reload`` asks a running ``fleet up`` to do it);
* autoscaled (``autoscale`` True, the default of ``fleet up``): one ``python -m autoscaler`` process with the
  local backend spawns and drains one-model workers on measured lag, between ``workers`` (its
  ``FLEET_AUTOSCALER_MIN_REPLICAS``) and ``max_workers`` per model, and finds models registered later in the
  registry by itself (no reload);
* placed (``placement`` True, ``fleet up --placement``): ``workers`` multi-model processes follow their
  assignment (``FLEET_WORKER_FOLLOW_ASSIGNMENT``) and the autoscaler runs the placement scheduler
  (``FLEET_AUTOSCALER_PLACEMENT``): it assigns each registered model's replicas to workers with room, and
  the workers load, evict and serve what they are assigned (budget: ``FLEET_WORKER_MEMORY_BUDGET_MB``).

The embedded Redis keeps an append-only file in ``home/redis`` (``StackConfig.durable_redis``), so models,
API keys and jobs survive a restart; the embedded broker is memory-only, so each start (and restart) of it
re-creates the topics of every registered model.

Start: LocalBroker + LocalRedis (unless external addresses are given) → gateway → autoscaler or workers,
each waited on by its readiness signal (``/v2/health/ready``; the autoscaler's first GPU inventory report;
a worker's heartbeat hash ``state=ready``, in autoscale mode one per model registered at start, in placement
mode every model placed on a ready worker or its placement failure recorded).
Stop: SIGTERM the gateway → SIGTERM the autoscaler (it drains its workers) or the workers, and wait while
they drain → stop Redis and the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from autoscaler import state as autoscaler_state
from fleet.client.errors import StackError
from fleet.client.http import FleetClient
from fleet.client.stackfile import ProcessInfo, StackInfo
from schemas import FleetSettings, KafkaSettings, ModelRegistry, Names, RedisSettings, load, now_ms
from schemas.constants import DEFAULT_NAMESPACE
from schemas.topics import ensure_model_topics

from .heartbeats import read_workers
from .procs import Backoff, RestartPolicy, ServiceProcess
from .servers import LocalBroker, LocalRedis, LocalServer, free_port

log = logging.getLogger("fleet.stack")

#: Consumer-group timings that suit the embedded broker (each join waits max(1 s, session/2)).
#: A placement verdict this long after the workers were ready comes from a round that saw them.
_PLACEMENT_SETTLE_MS = 1000.0
#: How often the supervisor looks for dead processes.
_SUPERVISE_INTERVAL_S = 0.25

LOCAL_BROKER_ENV = {"FLEET_KAFKA_SESSION_TIMEOUT_MS": "2000", "FLEET_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}


@dataclass(frozen=True)
class StackConfig:
    """What :class:`LocalStack` starts."""

    home: Path
    namespace: str = DEFAULT_NAMESPACE
    kafka: str | None = None  # external bootstrap servers; None starts the embedded broker
    redis: str | None = None  # external Redis URL; None starts the embedded Valkey
    gateway: bool = True
    host: str = "127.0.0.1"
    port: int | None = None  # None picks a free port
    workers: int = 1  # fixed: worker processes; autoscale: fewest workers per model
    models: tuple[str, ...] | None = None  # None: every model registered (when the workers start, if fixed)
    autoscale: bool = False  # run the autoscaler (local backend) instead of fixed workers
    placement: bool = False  # run ``workers`` following workers and the autoscaler's placement scheduler
    max_workers: int | None = None  # autoscale: most workers per model (None: the autoscaler's default)
    device: str | None = None
    durable_redis: bool = True  # the embedded Valkey keeps an append-only file in ``home/redis``
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    ready_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    supervise: bool = True  # restart a broker, Redis, gateway, autoscaler or fixed worker that dies
    restart: RestartPolicy = RestartPolicy()  # backoff between restarts, and when to give up


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class LocalStack:
    """The whole fleet on this machine: ``async with LocalStack(config) as stack: stack.url``."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.logs = config.home / "logs"
        self._state = _State.NEW
        self._servers: list[LocalServer] = []
        self._gateway: ServiceProcess | None = None
        self._autoscaler: ServiceProcess | None = None
        self._workers: list[ServiceProcess] = []
        self._models: list[str] = []
        self._generation = 0
        self._started_ms = now_ms()
        self.kafka_bootstrap = config.kafka or ""
        self.redis_url = config.redis or ""
        self.port = config.port or free_port()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._changing = asyncio.Lock()  # the supervisor's restarts vs restart_workers
        self._watch: dict[str, _Watch] = {}
        self._failure: str | None = None

    @property
    def url(self) -> str:
        """Base URL of the gateway."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def settings(self) -> FleetSettings:
        """Connection settings of this stack (for clients and the registry)."""
        return FleetSettings(
            namespace=self.config.namespace,
            kafka=KafkaSettings(bootstrap=self.kafka_bootstrap),
            redis=RedisSettings(url=self.redis_url),
        )

    @property
    def redis_dir(self) -> Path | None:
        """Where the embedded Redis keeps its append-only file (None: external, or not durable)."""
        if self.config.redis or not self.config.durable_redis:
            return None
        return self.config.home / "redis"

    @property
    def models(self) -> list[str]:
        """Models the current workers serve (autoscale: the models known when last looked)."""
        return list(self._models)

    @property
    def autoscaler_log(self) -> Path | None:
        """Log of the autoscaler process (None in fixed mode)."""
        return None if self._autoscaler is None else self._autoscaler.log_path

    async def start(self) -> None:
        """Start everything and wait until it is ready; on failure stop what started and raise StackError."""
        if self._state is not _State.NEW:
            raise StackError(f"this stack is {self._state.value}; create a new LocalStack")
        self._state = _State.RUNNING
        if self.config.gateway and self.config.port and not _can_listen(self.config.host, self.port):
            self._state = _State.STOPPED
            raise StackError(
                f"port {self.port} on {self.config.host} is busy: another process listens there; "
                "stop it or choose another --port (0 picks a free one)"
            )
        try:
            await self._start_servers()
            if self.config.gateway:
                self._gateway = self._spawn("gateway", ["gateway"], self._gateway_env())
                await self._wait(self._gateway, self._gateway_ready())
            if self.config.autoscale or self.config.placement:
                await self._start_autoscaler()
            await self._start_workers(self.config.models)
        except BaseException:
            await self.stop()
            raise
        if self.config.supervise:
            self._supervisor = asyncio.create_task(self._supervise(), name="fleet-stack-supervisor")

    @property
    def failure(self) -> str | None:
        """Why the supervisor gave up on the stack (a process kept dying), or None while all is well."""
        return self._failure

    async def restart_workers(self, models: Sequence[str] | None = None) -> list[str]:
        """Drain and stop the workers, then start new ones for ``models`` (None: the configured or registered ones).

        In autoscale and placement mode nothing restarts (the autoscaler serves registered models by itself):
        the known models are refreshed and, for those that should have workers, their first ready worker awaited.
        """
        if self._state is not _State.RUNNING:
            raise StackError("the stack is not running")
        async with self._changing:
            if self.config.autoscale or self.config.placement:
                await self._start_workers(tuple(models) if models is not None else self.config.models)
                return self.models
            await self._stop_workers()
            chosen = tuple(models) if models is not None else self.config.models
            await self._start_workers(chosen)
            return self.models

    def dead(self) -> list[ServiceProcess]:
        """Children that exited while the stack runs (for the ``fleet up`` watchdog)."""
        procs = [p for p in (self._gateway, self._autoscaler, *self._workers) if p is not None]
        return [p for p in procs if not p.running]

    def servers_alive(self) -> bool:
        """True while the embedded broker and Redis run."""
        return all(server.running for server in self._servers)

    async def stop(self) -> None:
        """Gateway, then workers (drained), then Redis and broker; idempotent."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        self._closing.set()
        if self._supervisor is not None:
            # A restart in progress stops at its next await; what it spawned is stopped below.
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        try:
            if self._gateway is not None:
                await self._gateway.stop(10.0)
            if self._autoscaler is not None:
                # It drains its workers (each within their drain timeout) before it exits.
                await self._autoscaler.stop(self.config.drain_timeout_s + 15.0)
            await self._stop_workers()
        finally:
            for server in reversed(self._servers):
                await asyncio.to_thread(server.stop)
            info = StackInfo.read(self.config.home)
            if info is not None and info.pid == os.getpid():
                StackInfo.remove(self.config.home)

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def info(self) -> StackInfo:
        """What ``stack.json`` says about this stack."""
        procs = [ProcessInfo(s.name, s.name, s.pid or -1, str(s.log_path)) for s in self._servers if s.pid is not None]
        if self._gateway is not None:
            procs.append(ProcessInfo("gateway", "gateway", self._gateway.pid, str(self._gateway.log_path)))
        if self._autoscaler is not None:
            autoscaler = self._autoscaler
            procs.append(ProcessInfo("autoscaler", "autoscaler", autoscaler.pid, str(autoscaler.log_path)))
        procs += [ProcessInfo(w.name, "worker", w.pid, str(w.log_path), list(self._models)) for w in self._workers]
        return StackInfo(
            pid=os.getpid(),
            namespace=self.config.namespace,
            gateway_url=self.url if self.config.gateway else "",
            kafka_bootstrap=self.kafka_bootstrap,
            redis_url=self.redis_url,
            home=str(self.config.home),
            started_ms=self._started_ms,
            generation=self._generation,
            models=list(self._models),
            autoscale=self.config.autoscale or self.config.placement,
            processes=procs,
        )

    # supervision -------------------------------------------------------------
    async def _supervise(self) -> None:
        """Restart what died, with backoff, until the stack stops or a process keeps failing."""
        try:
            while not self._closing.is_set():
                async with self._changing:
                    await self._heal()
                if self._failure is not None:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), _SUPERVISE_INTERVAL_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the stack unwatched without a word
            log.exception("the stack's supervisor failed")
            self._failure = f"the stack's supervisor failed: {exc!r}"

    def _units(self) -> list[tuple[str, bool, Path, int | None]]:
        """(name, running, log, exit status) of every supervised process, servers first."""
        units = [(srv.name, srv.running, srv.log_path, srv.returncode) for srv in self._servers]
        procs = [p for p in (self._gateway, self._autoscaler) if p is not None]
        if not (self.config.autoscale or self.config.placement):
            procs += self._workers  # the autoscaler restarts the workers it runs by itself
        units += [(p.name, p.running, p.log_path, p.returncode) for p in procs]
        return units

    async def _heal(self) -> None:
        now = time.monotonic()
        for name, running, log_path, status in self._units():
            watch = self._watch.setdefault(name, _Watch(Backoff(self.config.restart), now))
            if running:
                continue
            if watch.restart_at is None:
                ran_s = now - watch.started
                delay = watch.backoff.next_delay(ran_s)
                if delay is None:
                    policy = self.config.restart
                    self._failure = (
                        f"the {name} died {policy.max_failures + 1} times in a row, each within "
                        f"{policy.stable_s:.0f}s of its start (last exit status {status}); giving up; log {log_path}"
                    )
                    log.error("%s", self._failure)
                    return
                watch.restart_at = now + delay
                log.warning(
                    "the %s exited (status %s) after %.1fs; restarting it in %.1fs (quick failure %d of %d); log %s",
                    name, status, ran_s, delay, watch.backoff.failures, self.config.restart.max_failures, log_path,
                )  # fmt: skip
            if now < watch.restart_at:
                continue
            watch.restart_at, watch.started = None, time.monotonic()
            try:
                await self._restart(name)
            except (StackError, OSError, RuntimeError, TimeoutError) as exc:
                log.warning("restarting the %s failed: %s", name, exc)  # the next round counts it as a failure
                continue
            log.warning("restarted the %s", name)
            self.info().write(self.config.home)

    async def _restart(self, name: str) -> None:
        """Start the dead process ``name`` again and wait until it is ready (StackError otherwise)."""
        for server in self._servers:
            if server.name == name:
                server.launch()  # same port; Redis on the same data directory
                await self._wait_listening(server)
                if isinstance(server, LocalBroker):
                    models = await self._recreate_topics()
                    log.warning(
                        "the embedded broker keeps data in memory only: it restarted empty, so requests queued in "
                        "Kafka and the consumer groups' committed offsets were lost; re-created the topics of %s",
                        ", ".join(models) or "(no registered models)",
                    )
                return
        if self._gateway is not None and self._gateway.name == name:
            self._gateway = self._gateway.fresh()
            self._gateway.start()
            await self._wait(self._gateway, self._gateway_ready())
        elif self._autoscaler is not None and self._autoscaler.name == name:
            self._autoscaler = self._autoscaler.fresh()
            self._autoscaler.start()
            await self._wait(self._autoscaler, self._autoscaler_ready(now_ms()))
        else:
            for i, worker in enumerate(self._workers):
                if worker.name == name:
                    self._workers[i] = worker = worker.fresh()
                    worker.start()
                    await self._wait(worker, self._worker_ready(worker))

    async def _wait_listening(self, server: LocalServer) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while not await asyncio.to_thread(_accepts, server.port):
            if not server.running:
                raise StackError(f"the {server.name} exited with status {server.returncode}; log {server.log_path}")
            if time.monotonic() > deadline:
                await asyncio.to_thread(server.stop)
                raise StackError(f"the {server.name} did not listen on port {server.port}; log {server.log_path}")
            await asyncio.sleep(0.05)

    # internals ---------------------------------------------------------------
    async def _start_servers(self) -> None:
        if not self.config.kafka:
            broker = LocalBroker(log_dir=self.logs)
            self._servers.append(broker)
            await asyncio.to_thread(broker.start)
            self.kafka_bootstrap = broker.bootstrap
        if not self.config.redis:
            redis = LocalRedis(log_dir=self.logs, data_dir=self.redis_dir)
            self._servers.append(redis)
            await asyncio.to_thread(redis.start)
            self.redis_url = redis.url
        if not self.config.kafka:
            # A new embedded broker has no topics, while a durable Redis may remember models.
            created = await self._recreate_topics()
            if created:
                log.info("created the topics of the registered models %s on the new embedded broker", created)

    async def _recreate_topics(self) -> list[str]:
        """Create the topics of every registered model (a new or restarted embedded broker has none)."""
        models = await self._registered_models()
        kafka = load(KafkaSettings, self._base_env(), "FLEET_KAFKA_")
        for model in models:
            await ensure_model_topics(kafka, Names(self.config.namespace), model)
        return models

    def _base_env(self) -> dict[str, str]:
        env = dict(self.config.env)
        if not self.config.kafka:
            for key, value in LOCAL_BROKER_ENV.items():
                env.setdefault(key, value)
        env.update(
            FLEET_NAMESPACE=self.config.namespace,
            FLEET_KAFKA_BOOTSTRAP=self.kafka_bootstrap,
            FLEET_REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
        )
        return env

    def _gateway_env(self) -> dict[str, str]:
        return {**self._base_env(), "FLEET_GATEWAY_HOST": self.config.host, "FLEET_GATEWAY_PORT": str(self.port)}

    def _spawn(self, name: str, module: list[str], env: dict[str, str]) -> ServiceProcess:
        proc = ServiceProcess(name, [sys.executable, "-m", *module], env, self.logs / f"{name}.log")
        proc.start()
        log.info("started %s (pid %d), log %s", name, proc.pid, proc.log_path)
        return proc

    def _autoscaler_env(self) -> dict[str, str]:
        env = {
            **self._base_env(),
            "FLEET_AUTOSCALER_BACKEND": "local",
            # With placement the scheduler assigns replicas to the running workers (one each, unless scaled).
            "FLEET_AUTOSCALER_MIN_REPLICAS": "1" if self.config.placement else str(self.config.workers),
            "FLEET_AUTOSCALER_PLACEMENT": "true" if self.config.placement else "false",
            "FLEET_AUTOSCALER_LOG_DIR": str(self.logs / "workers"),
            "FLEET_AUTOSCALER_DRAIN_TIMEOUT_S": str(self.config.drain_timeout_s),
            "FLEET_AUTOSCALER_MODELS": ",".join(self.config.models or ()),
        }
        if self.config.max_workers is not None:
            env["FLEET_AUTOSCALER_MAX_REPLICAS"] = str(self.config.max_workers)
        if self.config.device:
            env["FLEET_WORKER_DEVICE"] = self.config.device  # handed on to the workers it spawns
        return env

    async def _start_autoscaler(self) -> None:
        self._autoscaler = self._spawn("autoscaler", ["autoscaler"], self._autoscaler_env())
        await self._wait(self._autoscaler, self._autoscaler_ready(now_ms()))

    async def _start_workers(self, models: Sequence[str] | None) -> None:
        if models is None:
            models = await self._registered_models()
        self._models = sorted(set(models))
        self._generation += 1
        if self.config.placement:
            if not self._workers and self.config.workers > 0:
                await self._spawn_workers({"FLEET_WORKER_FOLLOW_ASSIGNMENT": "true"})
            if self._models and self._autoscaler is not None:
                await self._wait(self._autoscaler, self._placed(self._models, now_ms()))
        elif self._autoscaler is not None:
            if self._models and self.config.workers > 0:
                await self._wait(self._autoscaler, self._autoscaled_ready(self._models))
        elif self._models and self.config.workers > 0:
            await self._spawn_workers({"FLEET_WORKER_MODELS": ",".join(self._models)})
        self.info().write(self.config.home)

    async def _spawn_workers(self, mode_env: Mapping[str, str]) -> None:
        """Start ``workers`` worker processes with ``mode_env`` and wait until each is ready."""
        tag = secrets.token_hex(3)
        for i in range(1, self.config.workers + 1):
            worker_id = f"local-{tag}-w{i}"
            env = {**self._base_env(), **mode_env, "FLEET_WORKER_ID": worker_id}
            if self.config.device:
                env["FLEET_WORKER_DEVICE"] = self.config.device
            self._workers.append(self._spawn(worker_id, ["workers"], env))
        await asyncio.gather(*(self._wait(w, self._worker_ready(w)) for w in self._workers))

    async def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        # SIGTERM all at once so they drain in parallel.
        await asyncio.gather(*(w.stop(self.config.drain_timeout_s) for w in workers))

    async def _registered_models(self) -> list[str]:
        client = self.settings.redis.client()
        try:
            return await ModelRegistry(client, Names(self.config.namespace)).models()
        finally:
            await client.aclose()

    async def _wait(self, proc: ServiceProcess, probe: AsyncGenerator[bool, None]) -> None:
        """Poll ``probe`` (an async iterator of bools) until True, failing fast if ``proc`` exits."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        async with contextlib.aclosing(probe) as readiness:
            async for ready in readiness:
                if ready and proc.running:  # an answer while ours is dead came from someone else
                    return
                if not proc.running:
                    raise StackError(
                        f"{proc.name} exited with status {proc.returncode} before it was ready; "
                        f"log {proc.log_path}:\n{proc.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{proc.name} not ready after {self.config.ready_timeout_s:.0f}s; log {proc.log_path}:\n"
                        f"{proc.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def _gateway_ready(self) -> AsyncGenerator[bool, None]:
        async with FleetClient(self.url, timeout_s=2.0) as client:
            while True:
                yield await client.ready()

    async def _autoscaler_ready(self, since_ms: float) -> AsyncGenerator[bool, None]:
        """Ready once it published a GPU inventory (it does so right after connecting, before its loop)."""
        client = self.settings.redis.client()
        try:
            while True:
                reports = []
                with contextlib.suppress(autoscaler_state.StateError):
                    reports = await autoscaler_state.read_gpus(client, Names(self.config.namespace))
                yield any(r.ts_ms >= since_ms - 1000 for r in reports)
        finally:
            await client.aclose()

    async def _autoscaled_ready(self, models: Sequence[str]) -> AsyncGenerator[bool, None]:
        """Ready once every model has a ready worker (the autoscaler keeps at least ``workers`` of each)."""
        client = self.settings.redis.client()
        try:
            while True:
                served: set[str] = set()
                with contextlib.suppress(RedisError):
                    served = await _served_models(client, Names(self.config.namespace))
                yield served.issuperset(models)
        finally:
            await client.aclose()

    async def _placed(self, models: Sequence[str], since_ms: float) -> AsyncGenerator[bool, None]:
        """Ready once the scheduler decided about every model: placed models have a ready worker serving
        them; a model it could not place (``schedule_failed``, the reason in ``fleet status``) does not
        hold the stack back, once that verdict is from a round that saw the workers (a second after
        ``since_ms``, when they were ready; an earlier round may have found none)."""
        client = self.settings.redis.client()
        names = Names(self.config.namespace)
        try:
            while True:
                waiting = set(models)
                with contextlib.suppress(RedisError):
                    placements = await autoscaler_state.read_placements(client, names, models)
                    decided = {
                        m
                        for m, status in placements.items()
                        if status.get("state") in autoscaler_state.UNSERVED_PLACEMENTS
                        and float(status.get("ts_ms") or 0) >= since_ms + _PLACEMENT_SETTLE_MS
                    }
                    waiting = set(models) - await _served_models(client, names) - decided
                yield not waiting
        finally:
            await client.aclose()

    async def _worker_ready(self, proc: ServiceProcess) -> AsyncGenerator[bool, None]:
        client = self.settings.redis.client()
        key = Names(self.config.namespace).worker_key(proc.name)
        pid = str(proc.pid).encode()
        try:
            while True:
                fields: dict[bytes, bytes] = {}
                with contextlib.suppress(RedisError):
                    fields = await client.hgetall(key)
                # The pid check ignores a stale hash left by an earlier worker with the same id.
                yield fields.get(b"state") == b"ready" and fields.get(b"pid", pid) == pid
        finally:
            await client.aclose()


@dataclass
class _Watch:
    """The supervisor's view of one process: when it (re)started, its backoff, when to restart it."""

    backoff: Backoff
    started: float
    restart_at: float | None = None


def _can_listen(host: str, port: int) -> bool:
    """True when a server may listen on ``host:port`` (bound as the gateway binds: with SO_REUSEADDR,
    so a port left in TIME_WAIT counts as free and only a listening socket as busy)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE  # other errors (a bad host) are the gateway's to report
    return True


def _accepts(port: int) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _served_models(redis: Any, names: Names) -> set[str]:
    """Models that some worker in state ``ready`` serves now (from the heartbeats); raises RedisError."""
    return {m for view in await read_workers(redis, names) if view.state == "ready" for m in view.models}
