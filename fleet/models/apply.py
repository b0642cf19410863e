"""``fleet models apply -f FILE``: bring the registry in line with a models file, idempotently.

A models file (YAML) is a list of entries, or a mapping with ``models:``; a directory stands for every
``*.yaml``/``*.yml`` file in it (sorted). One entry is one model version and means what the same
``fleet models register`` flags mean::

    - name: fraud                 # required
      version: 3                  # required: versions are immutable, so the file names them
      artifact: fraud-v3.onnx     # required: a path (relative to the file's directory; a file, directory or
                                  # archive) or a URL (http(s)://, s3://, gs://, az://, file://)
      framework: onnx             # onnx | torchscript | torch (default: from the suffix)
      factory: pkg.mod:build      # torch checkpoints, python classes
      trust: [pkg.mod.Type]       # skops types to trust (scikit-learn), as --trust
      task: feature-extraction    # transformers, as --task
      options: {pooling: cls, normalize: true}  # transformers, as --option
      inputs: [x:FP32:-1,16]      # overrides, as --input (or {name, datatype, shape} mappings)
      outputs: [y:FP32:-1,4]
      batching: {max_batch_size: 8, max_queue_delay_ms: 2}
      labels: {team: risk, max_replicas: 4, memory_cap_mb: 512, gpus: "0,1"}
      example: fraud-example.npz  # example inputs kept for `fleet models verify`
      partitions: 4               # partitions of the model's request topic when it is created (default
                                  # FLEET_KAFKA_PARTITIONS): the most workers of the model; the bulk topic,
                                  # created on first use, gets as many
      default: true               # make this version the default
      traffic: {2: 90, 3: 10}     # the model's split of unversioned requests

Each entry is parsed, checked (`fleet.models.checks`) and compared with the registry on its own: a bad entry
is reported (its index, name and a one-line reason) and nothing of it is applied; the others are. A version
already registered with the same artifact sha256 and settings is unchanged; with other content it is an error
(versions are immutable: bump the version). Defaults and splits are set when they differ. Models and versions
absent from the file are left alone. Parsing and planning here are pure; ``apply`` is the async shell.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import yaml
from redis.exceptions import RedisError

from common import text
from schemas import (
    BatchingConfig,
    FleetError,
    FleetSettings,
    Framework,
    ModelRecord,
    ModelRegistry,
    Names,
    SchemaError,
    Tensor,
    TensorSpec,
    parse_spec,
)
from schemas.artifact_source import is_remote
from schemas.errors import ErrorCode
from schemas.limits import ModelLimits
from schemas.names import check_model_name, check_version
from schemas.topics import ensure_topics_for_models
from schemas.traffic import TrafficSplit

from .artifacts import build_record

#: Keys an entry may have.
ENTRY_KEYS = frozenset(
    {"name", "version", "artifact", "framework", "factory", "inputs", "outputs", "batching", "labels", "example",
     "partitions", "default", "traffic", "trust", "task", "options"}
)  # fmt: skip
BATCHING_KEYS = frozenset({"max_batch_size", "max_queue_delay_ms"})
SPEC_KEYS = frozenset({"name", "datatype", "shape"})


class ModelsFileError(FleetError):
    """A models file that cannot be read as a whole (missing, not YAML, not a list of entries)."""

    code = ErrorCode.INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class Entry:
    """One model version of a models file, validated (the artifact itself is checked when it is built)."""

    index: int  # 1-based position over all files read
    source: str  # the file it came from
    name: str
    version: str
    artifact: str  # an absolute path or a URL
    framework: Framework | None = None
    factory: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: BatchingConfig = BatchingConfig()
    labels: dict[str, str] = field(default_factory=dict)
    example: Path | None = None
    partitions: int | None = None
    default: bool = False
    traffic: TrafficSplit | None = None
    trust: tuple[str, ...] = ()
    task: str | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EntryError:
    """An entry that is not applied, and why (one line)."""

    index: int
    source: str
    name: str  # "?" when the entry has no usable name
    version: str  # "" when it has none
    reason: str


class Action(StrEnum):
    """What applying an entry does."""

    CREATE = "+"
    UNCHANGED = "="
    CHANGE = "~"
    ERROR = "!"


@dataclass(frozen=True, slots=True)
class Step:
    """The plan for one entry: its action, the record to register (CREATE) and the pointer changes."""

    action: Action
    name: str
    version: str
    index: int
    source: str
    record: ModelRecord | None = None
    make_default: bool = False  # CREATE: with this version as the default; CHANGE: set_default to it
    traffic: TrafficSplit | None = None  # a split to set
    partitions: int | None = None
    reason: str = ""

    def line(self) -> str:
        """The plan line: ``+ create m1 v1``, ``= unchanged m2 v1``, ``~ default m3 -> v2``, ``! error m4 ...``."""
        if self.action is Action.ERROR:
            version = f" v{self.version}" if self.version else ""
            return f"! error {self.name}{version} (entry {self.index}, {self.source}): {self.reason}"
        if self.action is Action.UNCHANGED:
            return f"= unchanged {self.name} v{self.version}"
        parts = [f"traffic {self.name} {self.traffic.describe()}"] if self.traffic else []
        if self.action is Action.CREATE:
            head = f"+ create {self.name} v{self.version}" + (" (default)" if self.make_default else "")
            return ", ".join([head, *parts])
        if self.make_default:
            parts.insert(0, f"default {self.name} -> v{self.version}")
        return "~ " + ", ".join(parts)

    def failed(self, reason: str) -> Step:
        """This step as an error (it failed while being applied)."""
        return Step(Action.ERROR, self.name, self.version, self.index, self.source, reason=reason)


# --- reading a models file (pure) -------------------------------------------------------------------------


def read_models(path: Path) -> tuple[list[Entry], list[EntryError]]:
    """The entries of a models file or directory, and the entries that are invalid (with their reasons).

    ModelsFileError for what makes a whole file unreadable. Blocking (reads files): call from a thread.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise ModelsFileError(f"{path} holds no *.yaml or *.yml file")
    elif path.is_file():
        files = [path]
    else:
        raise ModelsFileError(f"models file {str(path)!r} does not exist")
    entries: list[Entry] = []
    errors: list[EntryError] = []
    index = 0
    for file in files:
        for raw in _raw_entries(file):
            index += 1
            try:
                entries.append(parse_entry(raw, index=index, source=file.name, base=file.parent.resolve()))
            except SchemaError as exc:
                name, version = _ids(raw)
                errors.append(EntryError(index, file.name, name, version, exc.message))
    entries, more = _check_across(entries)
    return entries, sorted([*errors, *more], key=lambda e: e.index)


def _raw_entries(file: Path) -> list[Any]:
    try:
        source = file.read_text(encoding="utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # never the unsafe loader
        document = yaml.load(source, Loader=loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelsFileError(f"{file.name}: not a readable YAML file: {first}") from None
    if document is None:
        return []
    if isinstance(document, dict):
        extra = sorted(str(k) for k in document if k != "models")
        if extra or "models" not in document:
            raise ModelsFileError(f"{file.name}: a mapping at the top must have exactly one key 'models:'")
        document = document["models"] or []
    if not isinstance(document, list):
        raise ModelsFileError(f"{file.name}: expected a list of model entries (or 'models:' with one)")
    return document


def _ids(raw: Any) -> tuple[str, str]:
    """(name, version) of a raw entry for an error line, "?" where missing."""
    if not isinstance(raw, dict):
        return "?", ""
    name, version = raw.get("name"), raw.get("version")
    return (name if isinstance(name, str) and name else "?"), (str(version) if version is not None else "")


def parse_entry(raw: Any, *, index: int, source: str, base: Path) -> Entry:
    """One entry from its YAML form; SchemaError (INVALID_REQUEST) names the first problem."""
    if not isinstance(raw, dict):
        raise _bad(f"an entry must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in ENTRY_KEYS)
    if unknown:
        raise _bad(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(ENTRY_KEYS))})")
    for key in ("name", "version", "artifact"):
        if raw.get(key) is None:
            raise _bad(f"missing key {key!r}")
    name = check_model_name(_string(raw, "name"))
    version = check_version(_string(raw, "version", allow_int=True))
    artifact = _string(raw, "artifact")
    if not is_remote(artifact):
        artifact = str((base / artifact).resolve())
    framework = None
    if raw.get("framework") is not None:
        try:
            framework = Framework(_string(raw, "framework"))
        except ValueError:
            known = ", ".join(f.value for f in Framework)
            raise _bad(f"framework {raw['framework']!r} is not one of {known}") from None
    labels = _labels(raw.get("labels"))
    ModelLimits.from_labels(labels)
    example = raw.get("example")
    traffic = raw.get("traffic")
    return Entry(
        index=index,
        source=source,
        name=name,
        version=version,
        artifact=artifact,
        framework=framework,
        factory=_string(raw, "factory") if raw.get("factory") is not None else None,
        inputs=_specs(raw.get("inputs"), "inputs"),
        outputs=_specs(raw.get("outputs"), "outputs"),
        batching=_batching(raw.get("batching")),
        labels=labels,
        example=(base / _string(raw, "example")).resolve() if example is not None else None,
        partitions=_positive(raw.get("partitions"), "partitions"),
        default=_flag(raw.get("default"), "default"),
        traffic=_traffic(traffic) if traffic is not None else None,
        trust=_trust(raw.get("trust")),
        task=_string(raw, "task") if raw.get("task") is not None else None,
        options=_options(raw.get("options")),
    )


def _bad(message: str) -> SchemaError:
    return SchemaError(message, code=ErrorCode.INVALID_REQUEST)


def _string(raw: dict[str, Any], key: str, *, allow_int: bool = False) -> str:
    value = raw[key]
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _positive(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"{key!r} must be an integer >= 1, got {value!r}")
    return value


def _flag(value: Any, key: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{key!r} must be true or false, got {value!r}")
    return value


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"'labels' must be a mapping of key: value, got {type(value).__name__}")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise _bad(f"label key {key!r} must be a non-empty string")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _bad(f"label {key}={item!r} must be a string or a number")
        labels[key.strip()] = str(item).strip()
    return labels


def _trust(value: Any) -> tuple[str, ...]:
    """``trust``: one type name or a list of them."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if value is None:
        return ()
    if items is None or not all(isinstance(item, str) and item.strip() for item in items):
        raise _bad("'trust' must be a type name or a list of type names (the skops types to trust)")
    return tuple(item.strip() for item in items)


def _options(value: Any) -> dict[str, str]:
    """``options``: a mapping of key: value (true/false and numbers as their text)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"'options' must be a mapping of key: value, got {type(value).__name__}")
    options: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str | int | float):
            raise _bad(f"option {key}={item!r} must be a string, a number or true/false")
        options[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return options


def _specs(value: Any, key: str) -> tuple[TensorSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(f"{key!r} must be a list of name:DATATYPE:dims specs")
    specs = []
    for item in value:
        if isinstance(item, str):
            specs.append(parse_spec(item))
        elif isinstance(item, dict) and set(item) == SPEC_KEYS and isinstance(item["shape"], list):
            if not (isinstance(item["name"], str) and isinstance(item["datatype"], str)):
                raise _bad(f"{key}: spec {item!r} needs a string name and datatype")
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in item["shape"]):
                raise _bad(f"{key}: spec {item['name']!r}: shape must hold integers")
            specs.append(TensorSpec(item["name"], item["datatype"].upper(), tuple(item["shape"])))
        else:
            raise _bad(f"{key}: {item!r} is neither name:DATATYPE:dims nor a mapping of name, datatype, shape")
    return tuple(specs)


def _batching(value: Any) -> BatchingConfig:
    if value is None:
        return BatchingConfig()
    if not isinstance(value, dict):
        raise _bad("'batching' must be a mapping with max_batch_size and/or max_queue_delay_ms")
    unknown = sorted(str(k) for k in value if k not in BATCHING_KEYS)
    if unknown:
        raise _bad(f"unknown key 'batching.{unknown[0]}' (known: {', '.join(sorted(BATCHING_KEYS))})")
    size = value.get("max_batch_size", BatchingConfig().max_batch_size)
    delay = value.get("max_queue_delay_ms", BatchingConfig().max_queue_delay_ms)
    if isinstance(size, bool) or not isinstance(size, int):
        raise _bad(f"'batching.max_batch_size' must be an integer, got {size!r}")
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise _bad(f"'batching.max_queue_delay_ms' must be a number, got {delay!r}")
    return BatchingConfig(size, float(delay))


def _traffic(value: Any) -> TrafficSplit:
    if not isinstance(value, dict) or not value:
        raise _bad("'traffic' must map versions to whole percentages, e.g. {1: 90, 2: 10}")
    shares: dict[str, int] = {}
    for version, percent in value.items():
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise _bad(f"traffic: version {version!r} must be a string or an integer")
        shares[str(version)] = percent
    return TrafficSplit.of(shares)


def _check_across(entries: list[Entry]) -> tuple[list[Entry], list[EntryError]]:
    """Refuse entries that contradict an earlier one: the same version twice, a second default, another split."""
    seen: dict[tuple[str, str], int] = {}
    default_of: dict[str, Entry] = {}
    traffic_of: dict[str, TrafficSplit] = {}
    kept: list[Entry] = []
    errors: list[EntryError] = []
    for entry in entries:
        reason = None
        first = seen.get((entry.name, entry.version))
        if first is not None:
            reason = f"version {entry.version!r} of {entry.name!r} is also entry {first}"
        elif entry.default and entry.name in default_of:
            reason = f"entry {default_of[entry.name].index} already makes v{default_of[entry.name].version} the default"
        elif entry.traffic is not None and entry.name in traffic_of and traffic_of[entry.name] != entry.traffic:
            other = traffic_of[entry.name]
            reason = f"another entry gives {entry.name!r} the traffic split {other.describe()}"
        if reason is not None:
            errors.append(EntryError(entry.index, entry.source, entry.name, entry.version, reason))
            continue
        seen[(entry.name, entry.version)] = entry.index
        if entry.default:
            default_of[entry.name] = entry
        if entry.traffic is not None:
            traffic_of.setdefault(entry.name, entry.traffic)
        kept.append(entry)
    return kept, errors


# --- planning (pure) --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What the registry holds of the models a file names."""

    records: dict[tuple[str, str], ModelRecord] = field(default_factory=dict)
    versions: dict[str, set[str]] = field(default_factory=dict)
    defaults: dict[str, str | None] = field(default_factory=dict)
    traffic: dict[str, TrafficSplit | None] = field(default_factory=dict)


def differences(new: ModelRecord, old: ModelRecord) -> list[str]:
    """The fields in which ``new`` differs from the registered ``old`` (same name and version)."""
    pairs = {
        "artifact sha256": (new.sha256, old.sha256),
        "framework": (new.framework, old.framework),
        "inputs": (new.inputs, old.inputs),
        "outputs": (new.outputs, old.outputs),
        "factory": (new.factory, old.factory),
        "trust": (new.trusted_types, old.trusted_types),
        "task": (new.task, old.task),
        "options": (new.options, old.options),
        "batching": (new.batching, old.batching),
        "labels": (new.labels, old.labels),
        "example": (new.example, old.example),
    }
    return [what for what, (a, b) in pairs.items() if a != b]


def plan(
    entries: Iterable[Entry],
    errors: Iterable[EntryError],
    built: Mapping[int, ModelRecord | str],
    state: RegistryState,
) -> list[Step]:
    """One step per entry, in file order. ``built``: entry index -> its record, or why it cannot be built."""
    steps: dict[int, Step] = {
        e.index: Step(Action.ERROR, e.name, e.version, e.index, e.source, reason=e.reason) for e in errors
    }
    ok: list[Entry] = []
    for entry in entries:
        record = built[entry.index]
        if isinstance(record, str):
            steps[entry.index] = _error(entry, record)
            continue
        old = state.records.get((entry.name, entry.version))
        changed = differences(record, old) if old is not None else []
        if changed:
            reason = f"version exists with different content ({', '.join(changed)}); bump the version"
            steps[entry.index] = _error(entry, reason)
            continue
        ok.append(entry)
    will_exist: dict[str, set[str]] = {name: set(versions) for name, versions in state.versions.items()}
    for entry in ok:
        will_exist.setdefault(entry.name, set()).add(entry.version)
    split_planned: set[str] = set()  # models whose split is already set by an earlier entry
    for entry in ok:
        record = built[entry.index]
        assert isinstance(record, ModelRecord)
        new = (entry.name, entry.version) not in state.records
        traffic = entry.traffic if entry.traffic != state.traffic.get(entry.name) else None
        if entry.name in split_planned:
            traffic = None
        if traffic is not None:
            unknown = [v for v, _ in traffic.weights if v not in will_exist[entry.name]]
            if unknown:
                steps[entry.index] = _error(
                    entry, f"traffic names version {unknown[0]!r}, which is neither registered nor applied here"
                )
                continue
        if traffic is not None:
            split_planned.add(entry.name)
        make_default = entry.default and (new or state.defaults.get(entry.name) != entry.version)
        if new:
            action = Action.CREATE
        else:
            action = Action.CHANGE if (make_default or traffic is not None) else Action.UNCHANGED
        steps[entry.index] = Step(
            action, entry.name, entry.version, entry.index, entry.source, record=record if new else None,
            make_default=make_default, traffic=traffic, partitions=entry.partitions,
        )  # fmt: skip
    return [steps[index] for index in sorted(steps)]


def _error(entry: Entry, reason: str) -> Step:
    return Step(Action.ERROR, entry.name, entry.version, entry.index, entry.source, reason=reason)


def summary(steps: Iterable[Step], *, applied: bool) -> str:
    """``3 to create, 1 unchanged, 1 to change, 1 error`` (``created``/``changed`` once applied)."""
    counts = {action: 0 for action in Action}
    for step in steps:
        counts[step.action] += 1
    words = ("created", "changed") if applied else ("to create", "to change")
    errors = counts[Action.ERROR]
    return (
        f"{counts[Action.CREATE]} {words[0]}, {counts[Action.UNCHANGED]} unchanged, {counts[Action.CHANGE]} "
        f"{words[1]}, {errors} error{'' if errors == 1 else 's'}"
    )


# --- the async shell --------------------------------------------------------------------------------------


def build_entry(entry: Entry) -> ModelRecord | str:
    """The record ``fleet models register`` would build for ``entry`` (checks included), or the one-line
    reason it cannot be built. Blocking: runs in the thread pool."""
    try:
        example = _load_example(entry.example) if entry.example is not None else ()
        return build_record(
            entry.name, entry.version, entry.artifact, framework=entry.framework, inputs=entry.inputs,
            outputs=entry.outputs, factory=entry.factory, batching=entry.batching, labels=entry.labels,
            example=example, load=True, trusted_types=entry.trust, task=entry.task, options=entry.options,
        )  # fmt: skip
    except FleetError as exc:
        return exc.message
    except (OSError, ValueError) as exc:  # an unreadable example file
        return f"{type(exc).__name__}: {exc}"


def _load_example(path: Path) -> tuple[Tensor, ...]:
    with np.load(path, allow_pickle=False) as arrays:
        return tuple(Tensor.from_numpy(name, arrays[name]) for name in arrays.files)


async def read_state(redis: aioredis.Redis, names: Names, entries: list[Entry]) -> RegistryState:
    """The registry's records, versions, defaults and splits of ``entries`` in one pipelined round trip."""
    models = sorted({entry.name for entry in entries})
    wanted = sorted({(entry.name, entry.version) for entry in entries})
    state = RegistryState()
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.smembers(names.versions_key(model))
                pipe.get(names.default_key(model))
                pipe.hgetall(names.traffic_key(model))
            for model, version in wanted:
                pipe.get(names.record_key(model, version))
            replies = await pipe.execute()
    except RedisError as exc:
        raise FleetError(f"Redis unavailable: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE) from exc
    for i, model in enumerate(models):
        versions, default, split = replies[3 * i : 3 * i + 3]
        state.versions[model] = {text(v) for v in versions}
        state.defaults[model] = text(default) if default is not None else None
        state.traffic[model] = TrafficSplit.from_hash(split)
    for (model, version), raw in zip(wanted, replies[3 * len(models) :], strict=True):
        if raw is not None:
            state.records[(model, version)] = ModelRecord.from_bytes(raw if isinstance(raw, bytes) else raw.encode())
    return state


@dataclass
class ApplyResult:
    """The steps as planned, as applied (errors met on the way included) and the topics created."""

    planned: list[Step]
    applied: list[Step]
    topics_created: int = 0

    @property
    def ok(self) -> bool:
        """True when no entry errored."""
        return all(step.action is not Action.ERROR for step in self.applied)


async def apply(
    settings: FleetSettings,
    path: Path,
    *,
    dry_run: bool = False,
    jobs: int | None = None,
    echo: Callable[[str], None] = print,
) -> ApplyResult:
    """Read ``path``, plan against the registry, print the plan through ``echo`` and (unless ``dry_run``)
    apply it: topics of every model in the file (created in batches), then new versions, defaults, splits."""
    names = Names(settings.namespace)
    entries, errors = await asyncio.to_thread(read_models, path)
    redis = settings.redis.client()
    try:
        state = await read_state(redis, names, entries)
        workers = jobs or min(4, os.cpu_count() or 1)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-apply") as pool:
            records = await asyncio.gather(*(loop.run_in_executor(pool, build_entry, entry) for entry in entries))
        steps = plan(entries, errors, {e.index: r for e, r in zip(entries, records, strict=True)}, state)
        for step in steps:
            echo(step.line())
        if dry_run:
            echo(f"dry run, nothing applied: {summary(steps, applied=False)}")
            return ApplyResult(steps, steps)
        result = await _execute(settings, names, redis, steps)
    finally:
        await redis.aclose()
    for before, after in zip(result.planned, result.applied, strict=True):
        if before.action is not Action.ERROR and after.action is Action.ERROR:
            echo(after.line())
    echo(f"applied: {summary(result.applied, applied=True)}; {result.topics_created} topics created")
    return result


#: Models registered at once (each model's versions go one after another, in file order).
CONCURRENT_MODELS = 16


async def _execute(settings: FleetSettings, names: Names, redis: aioredis.Redis, steps: list[Step]) -> ApplyResult:
    """Apply the planned steps; a step that fails on the way becomes an error step (the others go on)."""
    live = [s for s in steps if s.action is not Action.ERROR]
    partitions: dict[str, int | None] = {}
    for step in live:
        partitions[step.name] = partitions.get(step.name) or step.partitions
    outcome = await ensure_topics_for_models(settings.kafka, names, partitions)
    done: dict[int, Step] = {}
    by_model: dict[str, list[Step]] = {}
    for step in live:
        failure = outcome.failed.get(step.name)
        if failure is not None:
            done[step.index] = step.failed(f"topics: {failure.message}")
        elif step.action is not Action.UNCHANGED:
            by_model.setdefault(step.name, []).append(step)
    registry = ModelRegistry(redis, names)
    gate = asyncio.Semaphore(CONCURRENT_MODELS)

    async def one_model(model_steps: list[Step]) -> None:
        async with gate:
            # In file order (the first new version of a new model becomes its default), splits last: a split
            # may name a version that a later entry creates.
            for step in model_steps:
                try:
                    if step.record is not None:
                        await registry.register(step.record, make_default=step.make_default)
                    elif step.make_default:
                        await registry.set_default(step.name, step.version)
                except FleetError as exc:
                    done[step.index] = step.failed(exc.message)
            for step in model_steps:
                if step.traffic is not None and step.index not in done:
                    try:
                        await registry.set_traffic(step.name, step.traffic)
                    except FleetError as exc:
                        done[step.index] = step.failed(exc.message)

    await asyncio.gather(*(one_model(model_steps) for model_steps in by_model.values()))
    applied = [done.get(step.index, step) for step in steps]
    return ApplyResult(steps, applied, sum(len(topics) for topics in outcome.created.values()))
