"""``LocalStack``: broker, Redis, gateway and workers as local processes, started and stopped in order.

Two ways to run the workers:

* fixed (``StackConfig.autoscale`` False, the default of this Python API): ``workers`` processes serve a
  fixed model list (``FLEET_WORKER_MODELS``); :meth:`LocalStack.restart_workers` replaces them when models
  are registered later (``fleet reload`` asks a running ``fleet up`` to do it);
* autoscaled per model (``autoscale`` True, ``fleet up --per-model-workers``): one ``python -m autoscaler``
  process with the local backend spawns and drains one-model workers on measured lag, between ``workers`` (its
  ``FLEET_AUTOSCALER_MIN_REPLICAS``) and ``max_workers`` per model, and finds models registered later in the
  registry by itself (no reload);
* pooled (``pool`` True, the default of ``fleet up``): the autoscaler runs a pool of multi-model workers
  (``FLEET_AUTOSCALER_POOL``: pool mode, following their assignment), between ``workers`` and ``max_workers``
  of them, sized from the measured work and the models' sizes, and places every registered model's replicas
  on them; each worker's memory budget is a share of the machine's memory (`services.pool_env`);
* placed (``placement`` True): ``workers`` fixed multi-model processes follow their assignment
  (``FLEET_WORKER_FOLLOW_ASSIGNMENT``) and the autoscaler runs the placement scheduler
  (``FLEET_AUTOSCALER_PLACEMENT``): it assigns each registered model's replicas to workers with room, and
  the workers load, evict and serve what they are assigned (budget: ``FLEET_WORKER_MEMORY_BUDGET_MB``).

The embedded Redis keeps an append-only file in ``home/redis`` (``StackConfig.durable_redis``), so models,
API keys and jobs survive a restart; the embedded broker is memory-only, so each start (and restart) of it
re-creates the topics of every registered model.

Start: LocalBroker + LocalRedis (unless external addresses are given) → gateway → autoscaler or workers,
each waited on by its readiness signal (``/v2/health/ready``; the autoscaler's first GPU inventory report;
a worker's heartbeat hash ``state=ready``, in autoscale mode one per model registered at start, in placement
and pool mode every model placed on a ready worker or its placement failure recorded).
Stop: SIGTERM the gateway → SIGTERM the autoscaler (it drains its workers) or the workers, and wait while
they drain → stop Redis and the broker.

``LocalStack`` orders and owns the parts, one job each: :mod:`.servers` (embedded broker and Redis),
:mod:`.procs` (a service process and its restart backoff), :mod:`.services` (each service's environment, the
topics of the registered models), :mod:`.readiness` (when a process is ready) and :mod:`.supervisor`
(restarting what died, giving up on what keeps dying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import AsyncGenerator, Mapping, Sequence
from enum import Enum
from pathlib import Path

from fleet.client.errors import StackError
from fleet.client.stackfile import ProcessInfo, StackInfo
from schemas import FleetSettings, KafkaSettings, Names, RedisSettings, now_ms
from schemas.key_migrator import KeyMigrator, old_layout_present

from . import readiness, services
from .config import StackConfig
from .procs import ServiceProcess
from .servers import LocalBroker, LocalRedis, LocalServer, free_port
from .services import LOCAL_BROKER_ENV
from .supervisor import Supervisor, Unit

log = logging.getLogger("fleet.stack")

#: How often the supervisor looks for dead processes.
_SUPERVISE_INTERVAL_S = 0.25

__all__ = ["LOCAL_BROKER_ENV", "LocalStack", "StackConfig"]


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
        self.grpc_port = services.grpc_port(config.env)
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._changing = asyncio.Lock()  # the supervisor's restarts vs restart_workers
        self._restarts = Supervisor(config.restart)
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
        if self.config.gateway and self.config.port and not readiness.can_listen(self.config.host, self.port):
            self._state = _State.STOPPED
            raise StackError(
                f"port {self.port} on {self.config.host} is busy: another process listens there; "
                "stop it or choose another --port (0 picks a free one)"
            )
        try:
            await self._start_servers()
            if self.config.gateway:
                env = services.gateway_env(self._base_env(), self.config, self.port, self.grpc_port)
                self._gateway = self._spawn("gateway", ["gateway"], env)
                await self._wait(self._gateway, readiness.gateway_ready(self.url))
            if self._automatic:
                await self._start_autoscaler()
            await self._start_workers(self.config.models)
        except BaseException:
            await self.stop()
            raise
        if self.config.supervise:
            self._supervisor = asyncio.create_task(self._supervise(), name="fleet-stack-supervisor")

    @property
    def _automatic(self) -> bool:
        """Whether the autoscaler runs (and the registered models are found without a reload)."""
        return self.config.autoscale or self.config.placement or self.config.pool

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
            if self._automatic:
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
            autoscale=self._automatic,
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

    def _units(self) -> list[Unit]:
        """Every supervised process, servers first."""
        units = [Unit(srv.name, srv.running, srv.log_path, srv.returncode) for srv in self._servers]
        procs = [p for p in (self._gateway, self._autoscaler) if p is not None]
        if not self._automatic:
            procs += self._workers  # the autoscaler restarts the workers it runs by itself
        units += [Unit(p.name, p.running, p.log_path, p.returncode) for p in procs]
        return units

    async def _heal(self) -> None:
        restarted = await self._restarts.heal(self._units(), self._restart)
        self._failure = self._restarts.failure
        if restarted:
            self.info().write(self.config.home)

    def _base_env(self) -> dict[str, str]:
        return services.base_env(self.config, self.kafka_bootstrap, self.redis_url)

    async def _recreate_topics(self) -> list[str]:
        return await services.recreate_topics(self.settings, self._base_env())

    async def _wait(self, proc: ServiceProcess, probe: AsyncGenerator[bool, None]) -> None:
        await readiness.wait_ready(proc, probe, self.config.ready_timeout_s)

    async def _restart(self, name: str) -> None:
        """Start the dead process ``name`` again and wait until it is ready (StackError otherwise)."""
        for server in self._servers:
            if server.name == name:
                server.launch()  # same port; Redis on the same data directory
                await readiness.wait_listening(server, self.config.ready_timeout_s)
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
            await self._wait(self._gateway, readiness.gateway_ready(self.url))
        elif self._autoscaler is not None and self._autoscaler.name == name:
            self._autoscaler = self._autoscaler.fresh()
            self._autoscaler.start()
            await self._wait(self._autoscaler, readiness.autoscaler_ready(self.settings, now_ms()))
        else:
            for i, worker in enumerate(self._workers):
                if worker.name == name:
                    self._workers[i] = worker = worker.fresh()
                    worker.start()
                    await self._wait(worker, readiness.worker_ready(self.settings, worker))

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
            await self._migrate_keys()
        if not self.config.kafka:
            # A new embedded broker has no topics, while a durable Redis may remember models.
            created = await self._recreate_topics()
            if created:
                log.info("created the topics of the registered models %s on the new embedded broker", created)

    async def _migrate_keys(self) -> None:
        """Move a durable Redis's keys of the previous key layout (an older version's stack) to their names now."""
        client = self.settings.redis.client()
        try:
            if not await old_layout_present(client, Names(self.config.namespace)):
                return
            report = await KeyMigrator(client, Names(self.config.namespace)).run()
        finally:
            await client.aclose()
        for line in report.lines():
            log.info("key migration: %s", line.strip())
        log.warning("Redis keys of the previous layout migrated to the current one: %s", report.summary())

    def _spawn(self, name: str, module: list[str], env: dict[str, str]) -> ServiceProcess:
        proc = ServiceProcess(name, [sys.executable, "-m", *module], env, self.logs / f"{name}.log")
        proc.start()
        log.info("started %s (pid %d), log %s", name, proc.pid, proc.log_path)
        return proc

    async def _start_autoscaler(self) -> None:
        env = services.autoscaler_env(self._base_env(), self.config, str(self.logs / "workers"))
        self._autoscaler = self._spawn("autoscaler", ["autoscaler"], env)
        await self._wait(self._autoscaler, readiness.autoscaler_ready(self.settings, now_ms()))

    async def _start_workers(self, models: Sequence[str] | None) -> None:
        if models is None:
            models = await services.registered_models(self.settings)
        self._models = sorted(set(models))
        self._generation += 1
        if self.config.pool:
            if self._models and self.config.workers > 0 and self._autoscaler is not None:
                await self._wait(self._autoscaler, readiness.placed(self.settings, self._models, now_ms()))
        elif self.config.placement:
            if not self._workers and self.config.workers > 0:
                # Pool workers (one multiplexed consumer for every model) unless FLEET_WORKER_MODE says otherwise.
                mode = self._base_env().get("FLEET_WORKER_MODE", "pool")
                await self._spawn_workers({"FLEET_WORKER_FOLLOW_ASSIGNMENT": "true", "FLEET_WORKER_MODE": mode})
            if self._models and self._autoscaler is not None:
                await self._wait(self._autoscaler, readiness.placed(self.settings, self._models, now_ms()))
        elif self._autoscaler is not None:
            if self._models and self.config.workers > 0:
                await self._wait(self._autoscaler, readiness.autoscaled_ready(self.settings, self._models))
        elif self._models and self.config.workers > 0:
            await self._spawn_workers({"FLEET_WORKER_MODELS": ",".join(self._models)})
        self.info().write(self.config.home)

    async def _spawn_workers(self, mode_env: Mapping[str, str]) -> None:
        """Start ``workers`` worker processes with ``mode_env`` and wait until each is ready."""
        tag = secrets.token_hex(3)
        for i in range(1, self.config.workers + 1):
            worker_id = f"local-{tag}-w{i}"
            env = services.worker_env(self._base_env(), self.config, mode_env, worker_id)
            self._workers.append(self._spawn(worker_id, ["workers"], env))
        await asyncio.gather(*(self._wait(w, readiness.worker_ready(self.settings, w)) for w in self._workers))

    async def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        # SIGTERM all at once so they drain in parallel.
        await asyncio.gather(*(w.stop(self.config.drain_timeout_s) for w in workers))


