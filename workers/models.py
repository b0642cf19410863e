"""Registry records and loaded runtimes of one served model, cached per version.

Records are immutable once registered, so a found record is cached for good. A runtime is loaded on
the model's own thread from the worker's local artifact cache (`workers.artifact_cache`), under the
worker's memory budget (`workers.residency_manager`): it may be evicted when another model needs the
room, and is then reloaded from the disk cache on its next batch. A version that fails to load is
retried only after ``LOAD_RETRY_S`` so a broken artifact does not cost a load attempt per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from concurrent.futures import Executor

from common.gpu import device_kind_of
from schemas import BatchingConfig, FleetError, ModelRecord, ModelRegistry, SchemaError, now_ms
from schemas.limits import MB, ModelLimits
from schemas.load_failures import LoadFailures

from .artifact_cache import ArtifactCache, CachedArtifact
from .errors import ModelLoadError
from .footprint import measure, trim_heap
from .residency_manager import ResidencyManager
from .runtimes import Runtime, load_runtime
from .settings import WorkerSettings

log = logging.getLogger("fleet.workers")

#: Seconds before a version that failed to load is tried again.
LOAD_RETRY_S = 5.0


class ModelCache:
    """Records and runtimes of the versions of ``model`` this worker has seen."""

    def __init__(
        self,
        model: str,
        registry: ModelRegistry,
        executor: Executor,
        settings: WorkerSettings,
        manager: ResidencyManager,
        artifacts: ArtifactCache,
        failures: LoadFailures | None = None,
    ) -> None:
        self.model = model
        self._load_failures = failures  # tells the gateway's model readiness (schemas.load_failures)
        self._manager = manager
        self._artifacts = artifacts
        self._size_factor = settings.size_factor
        self._measure = settings.measure_footprint
        self._measured: dict[str, int] = {}
        self._fetch_s = 0.0  # duration of the last artifact fetch (set on the model thread)
        self._load_lock = asyncio.Lock()
        self._registry = registry
        self._executor = executor
        self._device = settings.device
        self._device_kind = device_kind_of(settings.device)  # sizes are read and recorded for this kind
        self._threads = settings.intra_op_threads
        self._records: dict[str, ModelRecord] = {}
        self._runtimes: dict[str, Runtime] = {}
        self._failures: dict[str, tuple[float, ModelLoadError]] = {}
        self._default: str | None = None

    async def record(self, version: str) -> ModelRecord:
        """The record of ``version``; RegistryError when unknown, BackendUnavailableError when Redis is down."""
        record = self._records.get(version)
        if record is None:
            record = self._records[version] = await self._registry.get(
                self.model, version, device_kind=self._device_kind
            )
        return record

    async def default_record(self) -> ModelRecord:
        """The record of the model's current default version."""
        record = await self._registry.get(self.model, device_kind=self._device_kind)
        self._records.setdefault(record.version, record)
        self._default = record.version
        return record

    def batching_hint(self, version: str | None) -> BatchingConfig | None:
        """Batching of ``version`` (or of the default) when its record is cached; None otherwise."""
        record = self._records.get(version or "") or self._records.get(self._default or "")
        return None if record is None else record.batching

    def size_of(self, record: ModelRecord) -> int:
        """Bytes ``record`` takes when loaded: measured here, else measured by the fleet, else artifact x factor."""
        measured = self._measured.get(record.version)
        if measured is not None:
            return measured
        if record.size_measured:
            return record.size_bytes
        return int(record.size_bytes * self._size_factor)

    async def acquire(self, record: ModelRecord, requests: int = 1) -> Runtime:
        """The loaded runtime of ``record``'s version, pinned resident until ``release(record)``.

        Loads it (from the local artifact cache, evicting least recently used models when the budget is
        full) when it is not resident; raises ModelLoadError, remembered for ``LOAD_RETRY_S``.
        """
        key = (self.model, record.version)
        async with self._load_lock:
            cached = self._runtimes.get(record.version)
            if cached is not None and self._manager.pin(key):
                self._manager.metrics.lookups.labels("hit").inc(requests)
                return cached
            self._manager.metrics.lookups.labels("miss").inc(requests)
            failed = self._failures.get(record.version)
            if failed is not None and time.monotonic() - failed[0] < LOAD_RETRY_S:
                raise failed[1]
            try:
                runtime: Runtime = await self._manager.load(
                    key, self.size_of(record), lambda: self._load(record), lambda: self._evict(record.version)
                )
            except ModelLoadError as exc:
                log.error("%s", exc.message)
                self._failures[record.version] = (time.monotonic(), exc)
                if self._load_failures is not None:
                    await self._load_failures.record(self.model, record.version, exc.message, now_ms())
                raise
            self._failures.pop(record.version, None)
            if self._load_failures is not None:
                await self._load_failures.clear(self.model, record.version)
            return runtime

    def release(self, record: ModelRecord) -> None:
        """The batches of ``record`` that ``acquire`` pinned are done."""
        self._manager.unpin((self.model, record.version))

    async def preload(self, record: ModelRecord) -> bool:
        """Load ``record`` unless it would evict another model; True when it is resident."""
        if record.version in self._runtimes:
            return True
        if not self._manager.fits_now(self.size_of(record)):
            log.info("%s:%s not preloaded: the memory budget is full", record.name, record.version)
            return False
        await self.acquire(record, requests=0)
        self.release(record)
        return True

    async def _load(self, record: ModelRecord) -> tuple[Runtime, int]:
        """Fetch (disk cache) and load on the model thread; stores the runtime, returns it with its footprint."""
        key = (self.model, record.version)
        reload = self._manager.was_loaded(key)
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        runtime, measured, cached = await loop.run_in_executor(self._executor, self._load_blocking, record)
        footprint = measured if self._measure else self.size_of(record)
        await self._check_limits(record, runtime, footprint)
        elapsed = time.perf_counter() - began
        metrics = self._manager.metrics
        metrics.cache.labels("hit" if cached.hit else "corrupt" if cached.refetched else "miss").inc()
        if reload:
            metrics.reload_seconds.labels(*key).observe(elapsed)
        self._runtimes[record.version] = runtime
        if self._measure:
            self._measured[record.version] = footprint
            try:
                await self._registry.record_measured_size(record.name, record.version, footprint, self._device_kind)
            except FleetError as exc:  # the model serves regardless; the size is advisory
                log.warning("could not record the measured size of %s:%s: %s", record.name, record.version, exc.message)
        log.info(
            "%s %s:%s on %s in %.0f ms (artifact cache %s, fetch + sha256 %.0f ms), measured footprint %d bytes",
            "reloaded" if reload else "loaded",
            record.name,
            record.version,
            runtime.device,
            elapsed * 1000,
            "hit" if cached.hit else "miss",
            self._fetch_s * 1000,
            footprint,
        )
        return runtime, footprint

    async def _check_limits(self, record: ModelRecord, runtime: Runtime, footprint: int) -> None:
        """Unload and raise ModelLoadError when the load breaks the model's ``memory_cap_mb`` or ``gpus`` label."""
        try:
            limits = ModelLimits.from_labels(record.labels)
        except SchemaError as exc:
            problem = exc.message
        else:
            cap = limits.memory_cap_bytes
            if cap is not None and footprint > cap:
                problem = f"its footprint {footprint / MB:.1f} MB exceeds its memory cap {cap / MB:.1f} MB"
            elif not limits.allows_device(runtime.device):
                allowed = ",".join(str(i) for i in sorted(limits.gpus or ()))
                problem = f"it may use GPU(s) {allowed} only, and this worker loaded it on {runtime.device}"
            else:
                return
        await asyncio.get_running_loop().run_in_executor(self._executor, _release, runtime)
        raise ModelLoadError(record.name, record.version, problem)

    def _load_blocking(self, record: ModelRecord) -> tuple[Runtime, int, CachedArtifact]:
        """On the model thread: a verified local copy, then the load, measuring the memory it took.

        The measurement is floored at the artifact size (the weights are in memory at least once).
        """
        began = time.perf_counter()
        cached = self._artifacts.fetch(record)
        self._fetch_s = time.perf_counter() - began
        local = dataclasses.replace(record, artifact=str(cached.path))
        trim_heap()
        runtime, footprint = measure(
            lambda: load_runtime(local, self._device, self._threads, verified=True),
            lambda rt: rt.device,
            cached.size_bytes,
        )
        footprint = max(footprint, cached.size_bytes)
        return runtime, footprint, cached

    async def _evict(self, version: str) -> None:
        """Unload ``version`` on the model thread (after any batch in hand) and give the memory back."""
        runtime = self._runtimes.pop(version, None)
        if runtime is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, _release, runtime)

    @property
    def devices(self) -> list[str]:
        """Devices of the loaded runtimes."""
        return sorted({runtime.device for runtime in self._runtimes.values()})

    async def close(self) -> None:
        """Unload every runtime on the model thread (after any batch in hand) and leave the residency."""
        runtimes, self._runtimes = self._runtimes, {}
        for version, runtime in runtimes.items():
            self._manager.forget((self.model, version))
            await asyncio.get_running_loop().run_in_executor(self._executor, _release, runtime)


def _release(runtime: Runtime) -> None:
    """Unload, collect, and hand cached CUDA blocks back to the driver (so NVML sees the memory free)."""
    runtime.unload()
    trim_heap()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
