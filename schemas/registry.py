"""Model registry: immutable version records in Redis, a default-version pointer, measured sizes.

A :class:`ModelRecord` is written once (``SET NX``); registering the same version again with a
different artifact or signature is an error, registering the identical record is a no-op.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .codec import field as read
from .codec import pack, unpack_envelope
from .constants import CPU, DEVICE_KINDS, ENVELOPE_VERSION, GPU
from .envelopes import now_ms
from .errors import ErrorCode, FleetError, SchemaError
from .limits import ModelLimits
from .names import Names, check_model_name, check_version
from .redis_values import text
from .signature import BatchingConfig, TensorSpec
from .tensors import Tensor
from .traffic import ROLLBACK_SCRIPT, SET_DEFAULT_SCRIPT, SET_TRAFFIC_SCRIPT, TrafficSplit, version_order


class Framework(StrEnum):
    """How a model artifact is loaded."""

    ONNX = "onnx"  # an .onnx file, run by ONNX Runtime
    TORCHSCRIPT = "torchscript"  # a TorchScript archive (torch.jit.save)
    TORCH = "torch"  # a state dict (torch.save or safetensors) + a ``module:function`` factory building the module
    TORCH_EXPORT = "torch-export"  # a torch.export archive (.pt2, torch.export.save)
    PYTHON = "python"  # any Python class ``module:Class`` built with the artifact's path (workers.runtimes.python)
    SKLEARN = "sklearn"  # a scikit-learn estimator saved with skops (never pickle)
    XGBOOST = "xgboost"  # an XGBoost booster saved as JSON or UBJ
    LIGHTGBM = "lightgbm"  # a LightGBM model text file
    TRANSFORMERS = "transformers"  # a Hugging Face model directory (config, tokenizer, safetensors) and a task


#: How a record's artifact is stored and hashed.
FILE = "file"  # one file, its sha256
DIRECTORY = "directory"  # a directory, an archive of one or a store prefix: the sha256 of its manifest
LAYOUTS = (FILE, DIRECTORY)


class RegistryError(FleetError):
    """A registry operation that cannot be done (unknown model/version, conflicting re-register)."""

    code = ErrorCode.MODEL_NOT_FOUND


class BackendUnavailableError(FleetError):
    """Redis (or Kafka) could not be reached."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retriable = True


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One registered, immutable model version."""

    name: str
    version: str
    framework: Framework
    artifact: str  # absolute path of the artifact (file, directory or archive), or the URL workers fetch it from
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig = BatchingConfig()
    factory: str | None = None  # "module:function" for Framework.TORCH, "module:Class" for Framework.PYTHON
    labels: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0  # artifact size until a worker measures the loaded footprint
    size_measured: bool = False
    example: tuple[Tensor, ...] = ()  # example inputs used by `fleet models verify`
    created_ms: float = field(default_factory=now_ms)
    v: int = ENVELOPE_VERSION
    #: Framework.SKLEARN: the types beyond skops' defaults that its loader may build (listed at registration).
    trusted_types: tuple[str, ...] = ()
    #: FILE, or DIRECTORY (`schemas.artifact_tree`: cached as a directory, sha256 over its manifest).
    layout: str = FILE
    #: Framework.TRANSFORMERS: the pipeline task (text-classification, feature-extraction, token-classification).
    task: str | None = None
    #: Runtime options (transformers: pooling, normalize, max_length).
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        check_version(self.version)
        if self.layout not in LAYOUTS:
            raise SchemaError(f"layout {self.layout!r} is not one of {list(LAYOUTS)}", code=ErrorCode.INVALID_REQUEST)
        if self.framework is Framework.TRANSFORMERS and not self.task:
            raise SchemaError("a transformers model needs a task", code=ErrorCode.INVALID_REQUEST)
        if self.framework is Framework.TORCH and not self.factory:
            raise SchemaError("a torch checkpoint needs a factory 'module:function'", code=ErrorCode.INVALID_REQUEST)
        if self.framework is Framework.PYTHON and not self.factory:
            raise SchemaError("a python model needs a factory 'module:Class'", code=ErrorCode.INVALID_REQUEST)
        if not self.inputs or not self.outputs:
            raise SchemaError("a model needs at least one input and one output", code=ErrorCode.INVALID_REQUEST)
        if self.batching.max_batch_size > 1:
            for spec in (*self.inputs, *self.outputs):
                if not spec.shape or spec.shape[0] != -1:
                    raise SchemaError(
                        f"{spec.describe()}: a batching model needs -1 as its first (batch) dimension",
                        code=ErrorCode.INVALID_REQUEST,
                    )

    @property
    def batched(self) -> bool:
        """True when requests are merged along dimension 0."""
        return self.batching.max_batch_size > 1

    def identity(self) -> tuple[Any, ...]:
        """What must match for a re-register of the same version to be accepted as a no-op."""
        return (
            self.framework, self.sha256, self.inputs, self.outputs, self.factory, self.trusted_types, self.layout,
            self.task, tuple(sorted(self.options.items())),
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": self.v,
                "name": self.name,
                "version": self.version,
                "framework": self.framework.value,
                "artifact": self.artifact,
                "sha256": self.sha256,
                "inputs": [s.to_wire() for s in self.inputs],
                "outputs": [s.to_wire() for s in self.outputs],
                "batching": [self.batching.max_batch_size, self.batching.max_queue_delay_ms],
                "factory": self.factory,
                "labels": self.labels,
                "size_bytes": self.size_bytes,
                "size_measured": self.size_measured,
                "example": [t.to_wire() for t in self.example],
                "created_ms": self.created_ms,
                "trusted_types": list(self.trusted_types),
                "layout": self.layout,
                "task": self.task,
                "options": self.options,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelRecord:
        obj = unpack_envelope(data, "model record")
        batching = obj.get("batching")
        if not (isinstance(batching, list) and len(batching) == 2):
            raise SchemaError("field 'batching' must be [max_batch_size, max_queue_delay_ms]")
        labels = _string_map(obj.get("labels"), "labels")
        options = _string_map(obj.get("options"), "options")
        try:
            framework = Framework(read(obj, "framework", str))
        except ValueError:
            raise SchemaError(f"unknown framework {obj.get('framework')!r}") from None
        return cls(
            name=read(obj, "name", str),
            version=read(obj, "version", str),
            framework=framework,
            artifact=read(obj, "artifact", str),
            sha256=read(obj, "sha256", str),
            inputs=tuple(TensorSpec.from_wire(s) for s in read(obj, "inputs", list)),
            outputs=tuple(TensorSpec.from_wire(s) for s in read(obj, "outputs", list)),
            batching=BatchingConfig(int(batching[0]), float(batching[1])),
            factory=read(obj, "factory", str, optional=True),
            labels=dict(labels),
            size_bytes=read(obj, "size_bytes", int),
            size_measured=bool(obj.get("size_measured", False)),
            example=tuple(Tensor.from_wire(t) for t in (obj.get("example") or [])),
            created_ms=read(obj, "created_ms", float),
            v=obj["v"],
            trusted_types=_strings(obj.get("trusted_types"), "trusted_types"),
            layout=read(obj, "layout", str, optional=True) or FILE,
            task=read(obj, "task", str, optional=True),
            options=options,
        )


def _string_map(value: Any, name: str) -> dict[str, str]:
    """A string-to-string map field (absent: empty)."""
    value = value or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SchemaError(f"field {name!r} must map strings to strings")
    return dict(value)


def _strings(value: Any, name: str) -> tuple[str, ...]:
    """A list-of-strings field (absent in older records: empty)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SchemaError(f"field {name!r} must be a list of strings")
    return tuple(value)


class ModelRegistry:
    """Async access to the registry keys of one namespace (see :mod:`schemas.names`)."""

    def __init__(self, redis: aioredis.Redis, names: Names) -> None:
        self._redis = redis
        self._names = names
        self._set_traffic = redis.register_script(SET_TRAFFIC_SCRIPT)
        self._set_default = redis.register_script(SET_DEFAULT_SCRIPT)
        self._rollback = redis.register_script(ROLLBACK_SCRIPT)
        self._set_measured = redis.register_script(_SET_MEASURED_SCRIPT)

    async def register(self, record: ModelRecord, *, make_default: bool = False) -> bool:
        """Store ``record``; True if it is new. The first version of a model becomes its default.

        Raises SchemaError(INVALID_REQUEST) when a limit label (`schemas.limits`) has a bad value.
        """
        ModelLimits.from_labels(record.labels)
        n = self._names
        try:
            created = await self._redis.set(n.record_key(record.name, record.version), record.to_bytes(), nx=True)
            if not created:
                existing = await self.get(record.name, record.version)
                if existing.identity() != record.identity():
                    raise RegistryError(
                        f"model {record.name!r} version {record.version!r} is already registered with a different "
                        "artifact or signature; versions are immutable, register a new version",
                        code=ErrorCode.INVALID_REQUEST,
                    )
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(n.models_key, record.name)
                pipe.sadd(n.versions_key(record.name), record.version)
                if make_default:
                    default_keys = (n.default_key(record.name), n.previous_default_key(record.name))
                    pipe.eval(SET_DEFAULT_SCRIPT, 3, *default_keys, n.registry_epoch_key, record.version)
                else:
                    pipe.set(n.default_key(record.name), record.version, nx=True)
                pipe.incr(n.registry_epoch_key)
                await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return bool(created)

    async def get(self, model: str, version: str | None = None, *, device_kind: str = CPU) -> ModelRecord:
        """The record of ``version`` (the default when None); RegistryError when unknown.

        Its size is the footprint measured on a ``device_kind`` device, else the one measured on the
        other kind (the best estimate there is), else the artifact size (``size_measured`` False).
        """
        record, _ = await self.get_sized(model, version, device_kind=device_kind)
        return record

    async def get_sized(
        self, model: str, version: str | None = None, *, device_kind: str = CPU
    ) -> tuple[ModelRecord, dict[str, int]]:
        """``get`` and ``measured_sizes`` of the same version in one round trip (after the default's)."""
        n = self._names
        try:
            if version is None:
                raw_default = await self._redis.get(n.default_key(model))
                if raw_default is None:
                    raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
                version = text(raw_default)
            raw, *sizes = await self._redis.mget(
                n.record_key(model, version), *(n.measured_key(model, version, kind) for kind in DEVICE_KINDS)
            )
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        if raw is None:
            if not await self.exists(model):
                raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
            raise RegistryError(f"model {model!r} has no version {version!r}", code=ErrorCode.VERSION_NOT_FOUND)
        record = ModelRecord.from_bytes(raw if isinstance(raw, bytes) else raw.encode())
        measured = _by_kind(sizes)
        other_kind = GPU if device_kind == CPU else CPU
        size = measured.get(device_kind, measured.get(other_kind))
        if size is not None:
            record = replace(record, size_bytes=size, size_measured=True)
        return record, measured

    async def measured_sizes(self, model: str, version: str) -> dict[str, int]:
        """Footprints of ``version`` measured so far, by device kind (``{}`` before any load)."""
        keys = [self._names.measured_key(model, version, kind) for kind in DEVICE_KINDS]
        try:
            return _by_kind(await self._redis.mget(keys))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def exists(self, model: str) -> bool:
        """True when ``model`` has at least one registered version."""
        try:
            return bool(await self._redis.sismember(self._names.models_key, model))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def models(self) -> list[str]:
        """Names of all registered models, sorted."""
        try:
            raw = await self._redis.smembers(self._names.models_key)
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return sorted(text(x) for x in raw)

    async def versions(self, model: str) -> list[str]:
        """Registered versions of ``model``, sorted (numerically when they are numbers)."""
        try:
            raw = await self._redis.smembers(self._names.versions_key(model))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        values = [text(x) for x in raw]
        return sorted(values, key=version_order)

    async def default_version(self, model: str) -> str | None:
        """The default version of ``model`` or None."""
        try:
            raw = await self._redis.get(self._names.default_key(model))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return None if raw is None else (text(raw))

    async def set_default(self, model: str, version: str) -> None:
        """Point the default of ``model`` at an existing ``version`` (the old one becomes the rollback target)."""
        await self.get(model, version)
        n = self._names
        try:
            keys = [n.default_key(model), n.previous_default_key(model), n.registry_epoch_key]
            await self._set_default(keys=keys, args=[version])
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def previous_default(self, model: str) -> str | None:
        """The default before the last change (what ``rollback`` returns to), or None."""
        try:
            raw = await self._redis.get(self._names.previous_default_key(model))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return None if raw is None else (text(raw))

    async def traffic(self, model: str) -> TrafficSplit | None:
        """The traffic split of ``model``'s unversioned requests, or None (all go to the default)."""
        try:
            raw = await self._redis.hgetall(self._names.traffic_key(model))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return TrafficSplit.from_hash(raw)

    async def set_traffic(self, model: str, split: TrafficSplit) -> None:
        """Replace the split of ``model``; every version it names must be registered.

        Starting a split (none stored) keeps the current default as the rollback target.
        """
        n = self._names
        keys = [
            n.traffic_key(model),
            n.default_key(model),
            n.previous_default_key(model),
            n.versions_key(model),
            n.registry_epoch_key,
        ]
        args = [field for pair in split.to_hash().items() for field in pair]
        try:
            outcome = await self._set_traffic(keys=keys, args=args)
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        status = text(outcome[0])
        if status == "missing":
            if not await self.exists(model):
                raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
            version = text(outcome[1])
            raise RegistryError(f"model {model!r} has no version {version!r}", code=ErrorCode.VERSION_NOT_FOUND)
        if status == "nomodel":
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)

    async def clear_traffic(self, model: str) -> bool:
        """Remove the split of ``model`` (all unversioned traffic to the default); True if there was one."""
        if not await self.exists(model):
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._names.traffic_key(model))
                pipe.incr(self._names.registry_epoch_key)
                deleted, _ = await pipe.execute()
            return bool(deleted)
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def rollback(self, model: str) -> tuple[str, str]:
        """In one atomic step: clear the split and point the default back at the previous default.

        Returns (default before, default after); RegistryError when there is nothing to roll back.
        """
        n = self._names
        keys = [
            n.traffic_key(model),
            n.default_key(model),
            n.previous_default_key(model),
            n.versions_key(model),
            n.registry_epoch_key,
        ]
        try:
            outcome = await self._rollback(keys=keys, args=[])
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        status = text(outcome[0])
        if status == "nomodel":
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
        if status == "nothing":
            raise RegistryError(
                f"nothing to roll back: {model!r} has no traffic split and no previous default "
                f"(all traffic already goes to version {text(outcome[1])!r})",
                code=ErrorCode.INVALID_REQUEST,
            )
        return text(outcome[1]), text(outcome[2])

    async def record_measured_size(self, model: str, version: str, size_bytes: int, device_kind: str = CPU) -> None:
        """Store the footprint a worker measured after loading on a ``device_kind`` device (replaces the
        declared size for workers on that kind of device); a changed size bumps the registry epoch."""
        keys = [self._names.measured_key(model, version, device_kind), self._names.registry_epoch_key]
        try:
            await self._set_measured(keys=keys, args=[int(size_bytes)])
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def remove(self, model: str, version: str | None = None) -> list[str]:
        """Remove one version (or the whole model when None); returns the removed versions.

        Removing the default version of a model that keeps other versions is refused: set another
        default first.
        """
        n = self._names
        versions = await self.versions(model)
        if not versions:
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
        if version is not None:
            if version not in versions:
                raise RegistryError(f"model {model!r} has no version {version!r}", code=ErrorCode.VERSION_NOT_FOUND)
            if version == await self.default_version(model) and len(versions) > 1:
                raise RegistryError(
                    f"version {version!r} is the default of {model!r}; set another default first",
                    code=ErrorCode.INVALID_REQUEST,
                )
            split = await self.traffic(model)
            if split is not None and version in split.versions and len(versions) > 1:
                raise RegistryError(
                    f"version {version!r} is in the traffic split of {model!r} ({split.describe()}); "
                    "change or clear the split first",
                    code=ErrorCode.INVALID_REQUEST,
                )
            doomed = [version]
        else:
            doomed = versions
        whole_model = len(doomed) == len(versions)
        previous = None if whole_model else await self.previous_default(model)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for v in doomed:
                    pipe.delete(n.record_key(model, v), *(n.measured_key(model, v, kind) for kind in DEVICE_KINDS))
                    pipe.srem(n.versions_key(model), v)
                if whole_model:
                    # The model leaves the index only when its last version goes.
                    pipe.delete(n.default_key(model), n.versions_key(model))
                    pipe.delete(n.traffic_key(model), n.previous_default_key(model))
                    pipe.srem(n.models_key, model)
                elif previous in doomed:
                    pipe.delete(n.previous_default_key(model))  # nothing left to roll back to
                pipe.incr(n.registry_epoch_key)
                await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return doomed


#: KEYS: measured size, registry epoch; ARGV: bytes. Stores the size; bumps the epoch only when it changed
#: (workers write it after every load, most of them with the size measured before).
_SET_MEASURED_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
return 1
"""



def _by_kind(values: list[Any]) -> dict[str, int]:
    """Measured sizes read for ``DEVICE_KINDS`` (in that order) -> {kind: bytes}, the missing ones left out."""
    return {kind: int(value) for kind, value in zip(DEVICE_KINDS, values, strict=True) if value is not None}


@dataclass(frozen=True, slots=True)
class _Entry:
    """One model as a `RegistryCache` refresh found it."""

    default: str | None
    split: TrafficSplit | None
    versions: frozenset[str]
    #: Why the model's stored entries are unusable (a malformed split), or "".
    error: str = ""


class RegistryCache:
    """Registry reads for control loops that cost one GET per round while nothing changes.

    `refresh` reads ``Names.registry_epoch_key``; only when it moved (every registry write bumps it in the
    same step) does it read the model list, each model's default, split and versions, the measured sizes of
    the versions in use and the records not seen before (a few pipelined round trips). Records are kept for
    good, keyed by (model, version): a version is immutable while it is registered; one that is no longer
    registered is forgotten. Between refreshes every read is answered from memory. Not for concurrent use
    by several tasks.
    """

    def __init__(self, redis: aioredis.Redis, names: Names) -> None:
        self._redis = redis
        self._names = names
        self._epoch: bytes | str | None = None
        self._loaded = False
        self._models: tuple[str, ...] = ()
        self._entries: dict[str, _Entry] = {}
        self._records: dict[tuple[str, str], ModelRecord] = {}
        self._bad: dict[tuple[str, str], str] = {}
        self._measured: dict[tuple[str, str], dict[str, int]] = {}
        #: Refreshes that re-read the registry (the epoch had moved), for tests and metrics.
        self.reloads = 0

    async def refresh(self) -> bool:
        """Re-read what changed since the last call; True when the epoch had moved. Raises
        BackendUnavailableError when Redis cannot be read (the cached view stays as it was)."""
        try:
            epoch = await self._redis.get(self._names.registry_epoch_key)
            if self._loaded and epoch == self._epoch:
                return False
            await self._reload()
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        # Stored only once the reload succeeded: a failed one is tried again next time.
        self._epoch, self._loaded = epoch, True
        self.reloads += 1
        return True

    async def _reload(self) -> None:
        n = self._names
        models = sorted(text(m) for m in await self._redis.smembers(n.models_key))
        entries: dict[str, _Entry] = {}
        if models:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model in models:
                    pipe.get(n.default_key(model))
                    pipe.hgetall(n.traffic_key(model))
                    pipe.smembers(n.versions_key(model))
                raw = await pipe.execute()
            for i, model in enumerate(models):
                default, traffic, versions = raw[3 * i : 3 * i + 3]
                split: TrafficSplit | None = None
                error = ""
                try:
                    split = TrafficSplit.from_hash(traffic)
                except SchemaError as exc:
                    error = exc.message
                entries[model] = _Entry(
                    None if default is None else text(default),
                    split,
                    frozenset(text(v) for v in versions),
                    error,
                )
        for table in (self._records, self._bad):
            for key in [k for k in table if k[1] not in entries.get(k[0], _NO_ENTRY).versions]:
                del table[key]
        wanted = sorted({(m, v) for m, e in entries.items() for v in _versions_in_use(e) if v in e.versions})
        missing = [key for key in wanted if key not in self._records and key not in self._bad]
        measured: dict[tuple[str, str], dict[str, int]] = {}
        if wanted:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model, version in wanted:  # GETs, not MGET: a cluster client refuses MGET in a pipeline
                    for kind in DEVICE_KINDS:
                        pipe.get(n.measured_key(model, version, kind))
                for model, version in missing:
                    pipe.get(n.record_key(model, version))
                raw = await pipe.execute()
            kinds = len(DEVICE_KINDS)
            for i, key in enumerate(wanted):
                measured[key] = _by_kind(raw[i * kinds : (i + 1) * kinds])
            for key, data in zip(missing, raw[len(wanted) * kinds :], strict=True):
                if data is None:
                    continue  # removed between the reads: the next epoch says so
                try:
                    self._records[key] = ModelRecord.from_bytes(data if isinstance(data, bytes) else data.encode())
                except SchemaError as exc:
                    self._bad[key] = exc.message
        self._models, self._entries, self._measured = tuple(models), entries, measured

    @property
    def epoch(self) -> int:
        """The epoch of the cached view (0 before any registry write)."""
        return int(self._epoch or 0)

    def models(self) -> list[str]:
        """Registered models, sorted, as of the last refresh."""
        return list(self._models)

    def default_version(self, model: str) -> str | None:
        """The default version of ``model`` or None."""
        entry = self._entries.get(model)
        return None if entry is None else entry.default

    def traffic(self, model: str) -> TrafficSplit | None:
        """The traffic split of ``model`` or None; SchemaError when the stored one is malformed."""
        entry = self._entries.get(model)
        if entry is not None and entry.error:
            raise SchemaError(entry.error)
        return None if entry is None else entry.split

    def get_sized(
        self, model: str, version: str | None = None, *, device_kind: str = CPU
    ) -> tuple[ModelRecord, dict[str, int]]:
        """Like `ModelRegistry.get_sized`, from memory, for the default version and those of the split;
        RegistryError when unknown (or not in use), SchemaError when the stored record is malformed."""
        entry = self._entries.get(model)
        if entry is None or entry.default is None:
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
        version = entry.default if version is None else version
        key = (model, version)
        if key in self._bad:
            raise SchemaError(self._bad[key])
        record = self._records.get(key)
        if record is None or key not in self._measured:
            raise RegistryError(f"model {model!r} has no version {version!r}", code=ErrorCode.VERSION_NOT_FOUND)
        measured = dict(self._measured[key])
        other_kind = GPU if device_kind == CPU else CPU
        size = measured.get(device_kind, measured.get(other_kind))
        if size is not None:
            record = replace(record, size_bytes=size, size_measured=True)
        return record, measured

    def get(self, model: str, version: str | None = None, *, device_kind: str = CPU) -> ModelRecord:
        """`get_sized` without the measured sizes."""
        return self.get_sized(model, version, device_kind=device_kind)[0]


_NO_ENTRY = _Entry(None, None, frozenset())


def _versions_in_use(entry: _Entry) -> set[str]:
    """The default version and every version the split names."""
    versions = set() if entry.split is None else set(entry.split.versions)
    if entry.default is not None:
        versions.add(entry.default)
    return versions
