"""Registry records and loaded runtimes of one served model, cached per version.

Records are immutable once registered, so a found record is cached for good. A runtime is loaded
once per version on the model's own thread; a version that fails to load is retried only after
``LOAD_RETRY_S`` so a broken artifact does not cost a load attempt per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from schemas import BatchingConfig, FleetError, ModelRecord, ModelRegistry

from .errors import ModelLoadError
from .footprint import measure
from .runtimes import Runtime, load_runtime

log = logging.getLogger("fleet.workers")

#: Seconds before a version that failed to load is tried again.
LOAD_RETRY_S = 5.0


class ModelCache:
    """Records and runtimes of the versions of ``model`` this worker has seen."""

    def __init__(self, model: str, registry: ModelRegistry, executor: Executor, device: str, threads: int) -> None:
        self.model = model
        self._registry = registry
        self._executor = executor
        self._device = device
        self._threads = threads
        self._records: dict[str, ModelRecord] = {}
        self._runtimes: dict[str, Runtime] = {}
        self._failures: dict[str, tuple[float, ModelLoadError]] = {}
        self._default: str | None = None

    async def record(self, version: str) -> ModelRecord:
        """The record of ``version``; RegistryError when unknown, BackendUnavailableError when Redis is down."""
        record = self._records.get(version)
        if record is None:
            record = self._records[version] = await self._registry.get(self.model, version)
        return record

    async def default_record(self) -> ModelRecord:
        """The record of the model's current default version."""
        record = await self._registry.get(self.model)
        self._records.setdefault(record.version, record)
        self._default = record.version
        return record

    def batching_hint(self, version: str | None) -> BatchingConfig | None:
        """Batching of ``version`` (or of the default) when its record is cached; None otherwise."""
        record = self._records.get(version or "") or self._records.get(self._default or "")
        return None if record is None else record.batching

    async def runtime(self, record: ModelRecord) -> Runtime:
        """The loaded runtime of ``record``'s version, loading it on the model thread the first time."""
        cached = self._runtimes.get(record.version)
        if cached is not None:
            return cached
        failed = self._failures.get(record.version)
        if failed is not None and time.monotonic() - failed[0] < LOAD_RETRY_S:
            raise failed[1]
        loop = asyncio.get_running_loop()
        try:
            runtime, footprint = await loop.run_in_executor(self._executor, self._load, record)
        except ModelLoadError as exc:
            log.error("%s", exc.message)
            self._failures[record.version] = (time.monotonic(), exc)
            raise
        self._failures.pop(record.version, None)
        self._runtimes[record.version] = runtime
        try:
            await self._registry.record_measured_size(record.name, record.version, footprint)
        except FleetError as exc:  # the model serves regardless; the size is advisory
            log.warning("could not record the measured size of %s:%s: %s", record.name, record.version, exc.message)
        log.info(
            "loaded %s:%s on %s, measured footprint %d bytes", record.name, record.version, runtime.device, footprint
        )
        return runtime

    def _load(self, record: ModelRecord) -> tuple[Runtime, int]:
        """Load on the model thread, measuring the memory the load took (see workers.footprint)."""
        return measure(
            lambda: load_runtime(record, self._device, self._threads), lambda rt: rt.device, record.size_bytes
        )

    @property
    def devices(self) -> list[str]:
        """Devices of the loaded runtimes."""
        return sorted({runtime.device for runtime in self._runtimes.values()})

    def unload_all(self) -> None:
        """Unload every runtime (call from the model thread or after it has finished)."""
        runtimes, self._runtimes = self._runtimes, {}
        for runtime in runtimes.values():
            runtime.unload()
