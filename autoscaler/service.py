"""The autoscaler service: the control loop wired to Kafka, Redis, a worker backend, the GPU inventory and a
Prometheus endpoint. ``python -m autoscaler`` runs `run`; ``fleet up`` can embed `AutoscalerService`.

Models: the configured list, or every model of the registry when it is empty. The registry is read through a
`schemas.registry.RegistryCache`: one GET of the registry epoch per round, the rest only when it moved.
Leader election (``FLEET_AUTOSCALER_LEADER_ELECTION``, on by default; `autoscaler.leader`): of several
autoscalers of one namespace only the lease holder measures, scales and places; the others stand by,
publishing their inventory and metrics, and take over within the lease when it goes.
Supervision: the service owns its loops (control, placement, and the placement news listener that wakes the
placement loop when a worker joins), each run by `common.supervise`: a loop that
raises is logged with its traceback and started again after a pause that doubles from 0.5 s to 30 s (back to
0.5 s once a run lasted 30 s). Restarting rather than exiting: every round re-reads its state
from Redis, so a fresh loop is safe, while an exit would stop scaling and, with the local backend, drain every
worker the autoscaler runs because one round hit an unexpected error.
Stop: the control loop ends after its round, then the backend stops (the local backend drains its workers;
Kubernetes Deployments keep running), then the clients close. Signal handlers are installed only by
``__main__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from redis.exceptions import RedisError

from common import supervise
from common.channel import listen_routine
from common.wake import WakeNotes
from schemas import FleetError, Names, SchemaError
from schemas.assignment_news import AssignmentNews, NewsKind
from schemas.eventloop import AsyncService
from schemas.key_migrator import warn_if_old_layout
from schemas.limits import ModelLimits
from schemas.registry import RegistryCache
from schemas.wake_notes import read_wake_note

from .backends import KubernetesBackend, LocalProcessBackend, PlacementBackend, PoolBackend
from .collector import LagCollector
from .controller import Autoscaler, Backend
from .decisions import DEFAULT_DECISION_TTL_S, DecisionStore
from .errors import BackendError
from .inventory import InventoryPublisher
from .leader import LeaderLease
from .metrics import AutoscalerMetrics
from .overrides import PinStore
from .pool_size import PoolSizer
from .settings import AutoscalerSettings
from .stats import ServiceStatsReader

log = logging.getLogger("fleet.autoscaler")

#: How often the lag collector lists the cluster's topics again while some it measures are missing (bulk-lane
#: topics come with a model's first bulk request): without wake notes, and with them (a note names a new one).
MISSING_TOPICS_S = 5.0
MISSING_TOPICS_WITH_NOTES_S = 30.0

#: Prometheus HTTP service discovery of the local backend's workers, on the metrics port.
WORKER_SD_PATH = "/sd/workers"


class ServiceBackend(Backend, Protocol):
    """A `Backend` with a lifetime: the service starts it and stops it last."""

    async def start(self) -> None:
        """Connect (or check) before the first round."""
        ...

    async def stop(self) -> None:
        """Release it; the local backend drains its workers."""
        ...


def make_backend(settings: AutoscalerSettings, *, worker_env: Mapping[str, str] | None = None) -> ServiceBackend:
    """The backend that ``settings.backend`` names (placements on a sized pool of it when ``settings.pool``,
    on workers run by others when ``settings.placement``); ``worker_env`` is added to local workers' environment."""
    if settings.pool:
        sizer = PoolSizer(
            settings.pool_min_workers,
            settings.pool_max_workers,
            worker_bytes=int(settings.pool_worker_memory_mb * (1 << 20)),
            scale_down_stabilization_s=settings.scale_down_stabilization_s,
        )
        if settings.backend == "kubernetes":
            runner: KubernetesBackend | LocalProcessBackend = KubernetesBackend(settings.k8s_namespace, "{model}")
            key = settings.k8s_pool_deployment
        else:
            runner, key = _local_backend(settings, worker_env, pool=True), "pool"
        return PoolBackend(
            settings.fleet,
            runner,
            sizer,
            pool_key=key,
            size_factor=settings.placement_size_factor,
            full_round_s=settings.placement_full_round_s,
        )
    if settings.placement:
        return PlacementBackend(
            settings.fleet, size_factor=settings.placement_size_factor, full_round_s=settings.placement_full_round_s
        )
    if settings.backend == "kubernetes":
        return KubernetesBackend(settings.k8s_namespace, settings.k8s_deployment_template)
    return _local_backend(settings, worker_env)


def _local_backend(
    settings: AutoscalerSettings, worker_env: Mapping[str, str] | None, *, pool: bool = False
) -> LocalProcessBackend:
    log_dir = settings.log_dir or Path(tempfile.gettempdir()) / f"fleet-{settings.fleet.namespace}" / "workers"
    return LocalProcessBackend(
        settings.fleet,
        log_dir=log_dir,
        extra_env=worker_env,
        gpu_count=None if settings.gpus < 0 else settings.gpus,
        drain_timeout_s=settings.drain_timeout_s,
        ready_timeout_s=settings.ready_timeout_s,
        metrics_ports=settings.worker_metrics_port_range(),
        pool=pool,
        standby=settings.pool_standby if pool else 0,
    )


def local_workers(backend: object) -> LocalProcessBackend | None:
    """The local process backend that runs ``backend``'s workers (itself, or a pool's runner), if any."""
    if isinstance(backend, PoolBackend):
        backend = backend.runner
    return backend if isinstance(backend, LocalProcessBackend) else None


class AutoscalerService(AsyncService):
    """Everything ``python -m autoscaler`` runs; ``async with AutoscalerService(settings):`` in process."""

    def __init__(
        self,
        settings: AutoscalerSettings,
        *,
        backend: ServiceBackend | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.names = Names(settings.fleet.namespace)
        self.backend = backend or make_backend(settings, worker_env=worker_env)
        self.autoscaler: Autoscaler | None = None
        self.inventory: InventoryPublisher | None = None
        self.lease: LeaderLease | None = None
        self._redis: Any = None
        self._registry: RegistryCache | None = None
        self._collector: LagCollector | None = None
        self._wake: WakeNotes | None = None
        self._runner: web.AppRunner | None = None
        self._known_models: list[str] = []
        self._caps: tuple[int, list[str], dict[str, int]] | None = None  # registry reloads, models, their caps
        self._control_task: asyncio.Task[None] | None = None
        self._placement_task: asyncio.Task[None] | None = None
        self._news_task: asyncio.Task[None] | None = None
        self._notes_task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._place_now = asyncio.Event()  # a worker joined (or the service stops): run a placement round now
        self._started = False
        #: Port the metrics endpoint listens on (None when off).
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Connect, start the backend, the inventory reports, the metrics endpoint and the control loop."""
        if self._started:
            raise RuntimeError("AutoscalerService can start only once")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        self._redis = s.fleet.redis.client()
        await warn_if_old_layout(self._redis, self.names, log)
        self._registry = RegistryCache(self._redis, self.names)
        await self.backend.start()
        self._wake = WakeNotes(self._redis, self.names, s.wake_interval_s)
        self._wake.start()
        self._collector = LagCollector(
            s.fleet,
            half_life_s=s.smoothing_half_life_s,
            quiet_probe_rounds=max(1, round(s.quiet_probe_s / s.interval_s)),
            on_waiting=self._wake.note if self._wake.enabled else None,
            # With wake notes a missing topic is looked for when a note names it (`_on_wake_note`); listing every
            # topic of the cluster each 5 s for the bulk topics most models never have cost ~30 ms of CPU a time.
            missing_refresh_s=MISSING_TOPICS_WITH_NOTES_S if self._wake.enabled else MISSING_TOPICS_S,
        )
        await self._collector.start()
        local = local_workers(self.backend)
        allocation = local.gpu_allocation if local is not None else dict
        self.inventory = InventoryPublisher(self._redis, self.names, allocation, interval_s=s.inventory_interval_s)
        await self.inventory.start()
        metrics = AutoscalerMetrics()
        if s.leader_election:
            self.lease = LeaderLease(
                self._redis, self.names, lease_s=s.leader_lease_s, on_change=lambda leads: metrics.leader.set(leads)
            )
            await self.lease.start()
        else:
            metrics.leader.set(1)
        self.autoscaler = Autoscaler(
            s,
            self.backend,
            self._collector,
            ServiceStatsReader(self._redis, self.names, max_age_s=s.stats_max_age_s),
            models=self._models,
            pins=PinStore(self._redis, self.names),
            limits=self._model_caps,
            sink=DecisionStore(self._redis, self.names, ttl_s=max(DEFAULT_DECISION_TTL_S, int(10 * s.interval_s))),
            metrics=metrics,
            may_act=self._leads,
        )
        if s.metrics_port:
            await self._serve_metrics(s.metrics_port)
        autoscaler = self.autoscaler
        self._control_task = asyncio.create_task(
            supervise("autoscaler control", lambda: self._control_routine(autoscaler), log, stop=self._closing),
            name="autoscaler-control",
        )
        if self._wake.enabled:
            notes = functools.partial(
                listen_routine, self._redis, self.names.wake_channel, self._on_wake_note, log, stop=self._closing
            )
            self._notes_task = asyncio.create_task(
                supervise("wake notes listener", notes, log, stop=self._closing), name="autoscaler-wake-notes"
            )
        if isinstance(self.backend, PlacementBackend):
            backend = self.backend
            self._placement_task = asyncio.create_task(
                supervise("autoscaler placement", lambda: self._placement_routine(backend), log, stop=self._closing),
                name="placement",
            )
            listen = functools.partial(
                listen_routine, self._redis, self.names.assignments_channel, self._on_news, log, stop=self._closing
            )
            self._news_task = asyncio.create_task(
                supervise("placement news", listen, log, stop=self._closing), name="placement-news"
            )
        log.info(
            "autoscaler started: backend %s, models %s, namespace %s",
            s.backend,
            ",".join(s.models) or "(every registered model)",
            s.fleet.namespace,
        )

    async def stop(self) -> None:
        """Stop the loops (after their round), then the backend (draining local workers), then the clients;
        idempotent."""
        self.autoscaler = None
        await self._close()

    async def _control_routine(self, autoscaler: Autoscaler) -> None:
        """Every interval: one autoscaling round (`Autoscaler.step`)."""
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            started = loop.time()
            await autoscaler.step()
            pause = max(0.0, self.settings.interval_s - (loop.time() - started))
            # Wait on the closing event rather than sleeping, so stop() is not delayed by the interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), pause)

    def _on_wake_note(self, raw: bytes) -> None:
        """A publisher wrote to ``topic:partition``: a topic the collector found missing may exist now."""
        named = read_wake_note(raw)
        if self._collector is not None and named is not None:
            self._collector.topic_written(named[0])

    def _on_news(self, raw: bytes) -> None:
        """A worker that follows its assignment joined: place now rather than at the end of the interval."""
        try:
            news = AssignmentNews.from_bytes(raw)
        except SchemaError as exc:
            log.warning("placement news ignored: %s", exc.message)
            return
        if news.kind is NewsKind.JOINED:
            self._place_now.set()

    async def _placement_routine(self, backend: PlacementBackend) -> None:
        """Every interval, and at once when a worker joins: place every model's desired replicas on the workers
        that follow an assignment (with a pool: size the pool for the latest per-model decisions first). A round
        whose inputs did not change keeps the last outcome (`PlacementRunner`); the one a joining worker wakes
        places in any case."""
        joined = False
        while not self._closing.is_set():
            try:
                if self._leads():
                    models = list(await self._models())
                    decisions = self.autoscaler.decisions if self.autoscaler is not None else {}
                    if isinstance(backend, PoolBackend) and self.autoscaler is not None:
                        try:
                            await backend.size_pool([decisions[m] for m in models if m in decisions])
                        except BackendError as exc:  # the pool keeps its size; its workers are still placed
                            log.warning("pool sizing skipped: %s", exc)
                    await backend.place(models, decisions=decisions, force=joined)
            except BackendError as exc:
                log.warning("placement round skipped: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._place_now.wait(), self.settings.interval_s)
            joined = self._place_now.is_set()
            self._place_now.clear()

    def _leads(self) -> bool:
        """Whether this autoscaler may scale and place now (always, without leader election)."""
        return self.lease is None or self.lease.is_leader

    async def _close(self) -> None:
        self._closing.set()
        self._place_now.set()
        listeners = [task for task in (self._news_task, self._notes_task) if task is not None]
        self._news_task = self._notes_task = None
        for task in listeners:
            task.cancel()  # they wait on their channel; nothing of them needs finishing
        await asyncio.gather(*listeners, return_exceptions=True)
        tasks = [task for task in (self._control_task, self._placement_task) if task is not None]
        self._control_task = self._placement_task = None
        await asyncio.gather(*tasks)  # _supervise never raises an Exception
        # Hand the lease over only once this one stopped acting; the backend's stop (draining local
        # workers) is not scaling, so a standby may begin meanwhile.
        lease, self.lease = self.lease, None
        if lease is not None:
            await lease.stop()
        inventory, self.inventory = self.inventory, None
        if inventory is not None:
            await inventory.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.backend.stop()
        collector, self._collector = self._collector, None
        if collector is not None:
            await collector.stop()
        wake, self._wake = self._wake, None
        if wake is not None:
            await wake.stop()
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()

    async def _models(self) -> Sequence[str]:
        if self.settings.models:
            return self.settings.models
        registry = self._registry
        if registry is None:
            return self._known_models
        try:
            await registry.refresh()
        except (RedisError, FleetError) as exc:  # the registry raises BackendUnavailableError when Redis is down
            log.warning("model registry unreadable, keeping %s: %s", self._known_models, exc)
            return self._known_models
        models = registry.models()
        if models != self._known_models:
            log.info("autoscaling models: %s", ", ".join(models) or "(none registered)")
            self._known_models = list(models)
        return models

    async def _model_caps(self, models: Sequence[str]) -> dict[str, int]:
        """Each model's ``max_replicas`` label (`schemas.limits`), from its default version's record (cached
        by the registry cache; refreshed when ``_models`` is, or here when the models are configured)."""
        registry = self._registry
        if registry is None:
            return {}
        if self.settings.models:
            try:
                await registry.refresh()
            except FleetError as exc:
                log.warning("model registry unreadable, no per-model replica caps this round: %s", exc)
                return {}
        kept = self._caps
        if kept is not None and kept[0] == registry.reloads and kept[1] == models:
            return dict(kept[2])  # the registry did not move: the caps did not either
        caps: dict[str, int] = {}
        for model in models:
            try:
                cap = ModelLimits.from_labels(registry.get(model).labels).max_replicas
            except (FleetError, SchemaError) as exc:
                log.debug("no replica cap for %s: %s", model, exc)
                continue
            if cap is not None:
                caps[model] = cap
        self._caps = (registry.reloads, list(models), caps)
        return dict(caps)

    async def _worker_targets(self, _: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: the /metrics of every live local worker, labelled with its
        model and id (``[]`` with another backend or without ``worker_metrics_ports``)."""
        groups: list[dict[str, Any]] = []
        local = local_workers(self.backend)
        if local is not None:
            host = self.settings.worker_metrics_host
            host = f"[{host}]" if ":" in host else host  # an IPv6 address
            for worker in local.workers():
                if worker.metrics_port is not None:
                    labels = {"model": worker.model, "worker_id": worker.worker_id}
                    groups.append({"targets": [f"{host}:{worker.metrics_port}"], "labels": labels})
        return web.json_response(groups)

    async def _serve_metrics(self, port: int) -> None:
        registry = CollectorRegistry(auto_describe=True)
        gpus = Gauge(
            "fleet_gpus", "GPUs of this host by state (total, allocated, available).", ["state"], registry=registry
        )

        async def metrics(_: web.Request) -> web.Response:
            latest = self.inventory.latest if self.inventory is not None else None
            if latest is not None:
                for state in ("total", "allocated", "available"):
                    gpus.labels(state).set(getattr(latest, state))
            body = (self.autoscaler.metrics.render() if self.autoscaler else b"") + generate_latest(registry)
            return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get(WORKER_SD_PATH, self._worker_targets)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "0.0.0.0", port)
        await site.start()
        self.metrics_port = port
        log.info("metrics on :%d/metrics", self.metrics_port)


async def run(
    settings: AutoscalerSettings, stop: asyncio.Event, *, worker_env: Mapping[str, str] | None = None
) -> None:
    """Run the autoscaler until ``stop`` is set, then stop it gracefully."""
    async with AutoscalerService(settings, worker_env=worker_env):
        await stop.wait()
        log.info("autoscaler stopping")
