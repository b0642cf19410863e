"""Pipelines: models composed into a DAG whose steps pass tensors to each other through Kafka.

The resource (``fleet pipelines apply -f pipeline.yaml``)::

    name: tabular
    steps:
      - name: pre                 # 1-63 of [A-Za-z0-9_-]
        model: scaler
        version: "2"              # optional: the model's default version when the request is sent
        inputs: {x: inputs.raw}   # the model's input <- a reference (the tensor map)
      - name: clf
        model: mlp
        inputs: {input: pre.y}
    outputs: {probs: clf.output}  # the pipeline's output <- a reference

A reference is ``inputs.NAME`` (an input of the pipeline) or ``STEP.NAME`` (an output of a step); a step
that reads several steps joins them. :func:`check_pipeline` checks a pipeline against its steps' model
signatures (every model input fed, every reference an output that exists, datatypes and shapes that
fit) and derives the pipeline's own input and output signatures. :class:`PipelineStore` keeps the
versions in Redis (keys in `schemas.names`): applying a changed pipeline makes a new version and the
current one; an unchanged one is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError

from .codec import field as read
from .codec import pack, unpack_envelope
from .constants import ENVELOPE_VERSION
from .envelopes import ErrorInfo, InferenceRequest, InferenceResponse, PipelineRoute, ReplyAddress, ReplyKind, now_ms
from .errors import ErrorCode, FleetError, SchemaError
from .names import Names, check_model_name, check_version
from .pipeline_plan import (
    INPUTS,
    OUTPUTS,
    PipelinePlan,
    PlanStep,
    check_step_name,
    gather,
    invalid,
    split_ref,
    step_request_id,
)
from .redis_values import text
from .registry import BackendUnavailableError, ModelRecord, RegistryError
from .signature import TensorSpec
from .tensors import Tensor

__all__ = [
    "PipelineError",
    "PipelineSignature",
    "PipelineStore",
    "check_pipeline",
    "first_requests",
    "outbox_request",
    "parse_pipeline",
    "pipeline_answer",
    "restart_requests",
    "step_failure",
    "step_request",
]


class PipelineError(FleetError):
    """A pipeline (or a version of it) that is not stored: MODEL_NOT_FOUND on the wire (404)."""

    code = ErrorCode.MODEL_NOT_FOUND


def _mapping(raw: Any, what: str) -> tuple[tuple[str, str], ...]:
    """A tensor map: ``{name: ref}``, or a list of refs (each keeps its tensor's name)."""
    if isinstance(raw, list):
        return tuple((split_ref(ref)[1], ref) for ref in raw)
    if not isinstance(raw, Mapping) or not raw:
        raise invalid(f"{what} must be a non-empty map of name: reference (or a list of references)")
    pairs: list[tuple[str, str]] = []
    for name, ref in raw.items():
        if not isinstance(name, str) or not isinstance(ref, str):
            raise invalid(f"{what}: {name!r}: {ref!r} must map a name to a reference")
        split_ref(ref)
        pairs.append((name, ref))
    return tuple(pairs)


def parse_pipeline(doc: Any) -> PipelinePlan:
    """The pipeline a YAML/JSON document describes (version 0: not stored yet); SchemaError naming what is wrong.

    Only the form is checked here (names, references, a DAG); :func:`check_pipeline` checks the models.
    """
    if not isinstance(doc, Mapping):
        raise invalid("a pipeline must be a map with name, steps and outputs")
    unknown = sorted(set(doc) - {"name", "steps", "outputs"})
    if unknown:
        raise invalid(f"unknown pipeline field(s) {unknown}; a pipeline has name, steps and outputs")
    name = doc.get("name")
    if not isinstance(name, str):
        raise invalid("a pipeline needs a name")
    check_model_name(name)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise invalid(f"pipeline {name!r}: steps must be a non-empty list")
    steps: list[PlanStep] = []
    for i, raw in enumerate(raw_steps):
        if not isinstance(raw, Mapping):
            raise invalid(f"pipeline {name!r}: step {i + 1} must be a map with name, model, inputs")
        extra = sorted(set(raw) - {"name", "model", "version", "inputs"})
        if extra:
            raise invalid(f"pipeline {name!r}: step {raw.get('name', i + 1)!r}: unknown field(s) {extra}")
        step = check_step_name(raw.get("name"))  # type: ignore[arg-type]
        model = raw.get("model")
        if not isinstance(model, str):
            raise invalid(f"pipeline {name!r}: step {step!r} needs a model")
        check_model_name(model)
        version = raw.get("version")
        version = "" if version is None else str(version)
        if version:
            check_version(version)
        if any(s.name == step for s in steps):
            raise invalid(f"pipeline {name!r}: two steps are called {step!r}")
        steps.append(PlanStep(step, model, version, _mapping(raw.get("inputs"), f"step {step!r} inputs")))
    outputs = _mapping(doc.get("outputs"), f"pipeline {name!r} outputs")
    plan = PipelinePlan(name, 0, tuple(steps), outputs)
    known = {s.name for s in steps}
    for node in plan.nodes():
        where = "the outputs" if node == OUTPUTS else f"step {node!r}"
        for ref in plan.refs_of(node):
            source = split_ref(ref)[0]
            if source != INPUTS and source not in known:
                raise invalid(f"pipeline {name!r}: {where} reads {ref!r}, but no step is called {source!r}")
    if not plan.upstream(OUTPUTS):
        raise invalid(f"pipeline {name!r}: the outputs must name at least one step's tensor")
    plan.order()  # refuses a cycle
    return plan


@dataclass(frozen=True, slots=True)
class PipelineSignature:
    """A pipeline's inputs and outputs, derived from its steps' models."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _fits(source: TensorSpec, target: TensorSpec) -> bool:
    if source.datatype != target.datatype or len(source.shape) != len(target.shape):
        return False
    return all(a == -1 or b == -1 or a == b for a, b in zip(source.shape, target.shape, strict=True))


def _label(record: ModelRecord) -> str:
    return f"{record.name}:{record.version}"


def check_pipeline(plan: PipelinePlan, records: Mapping[str, ModelRecord]) -> PipelineSignature:
    """Check ``plan`` against its steps' models (``records``: step name -> the version a request would run).

    Raises SchemaError(INVALID_REQUEST) naming the step and the tensor of the first mismatch.
    """
    p = plan.name
    produced: dict[str, TensorSpec] = {}  # "step.tensor" -> spec
    inputs: dict[str, TensorSpec] = {}
    for step_name in plan.order():
        step = plan.step(step_name)
        record = records[step_name]
        specs = {spec.name: spec for spec in record.inputs}
        fed = {name for name, _ in step.inputs}
        for name, ref in step.inputs:
            target = specs.get(name)
            if target is None:
                raise invalid(
                    f"pipeline {p!r}: step {step_name!r}: model {_label(record)} has no input {name!r} "
                    f"(it takes {sorted(specs)})"
                )
            node, tensor = split_ref(ref)
            if node == INPUTS:
                seen = inputs.get(tensor)
                if seen is not None and not _fits(seen, target):
                    raise invalid(
                        f"pipeline {p!r}: step {step_name!r}: input {name!r} ({target.describe()}) reads {ref!r}, "
                        f"which another step reads as {seen.describe()}"
                    )
                inputs.setdefault(tensor, replace(target, name=tensor))
                continue
            source = produced.get(ref)
            if source is None:
                outs = sorted(s.name for s in records[node].outputs)
                raise invalid(
                    f"pipeline {p!r}: step {step_name!r}: input {name!r} reads {ref!r}, but model "
                    f"{_label(records[node])} of step {node!r} has no output {tensor!r} (it has {outs})"
                )
            if not _fits(source, target):
                raise invalid(
                    f"pipeline {p!r}: step {step_name!r}: input {name!r} of model {_label(record)} is "
                    f"{target.describe()}, but {ref!r} is {source.describe()}"
                )
        missing = sorted(set(specs) - fed)
        if missing:
            raise invalid(
                f"pipeline {p!r}: step {step_name!r}: input(s) {missing} of model {_label(record)} are not fed "
                "(map each in the step's inputs)"
            )
        for spec in record.outputs:
            produced[f"{step_name}.{spec.name}"] = spec
    outputs: list[TensorSpec] = []
    for name, ref in plan.outputs:
        node, tensor = split_ref(ref)
        source = inputs.get(tensor) if node == INPUTS else produced.get(ref)
        if source is None:
            raise invalid(f"pipeline {p!r}: output {name!r} reads {ref!r}, which no step produces")
        outputs.append(replace(source, name=name))
    return PipelineSignature(tuple(inputs.values()), tuple(outputs))


def _to_bytes(plan: PipelinePlan) -> bytes:
    return pack({"v": ENVELOPE_VERSION, "plan": replace(plan, version=0).to_wire(), "created_ms": now_ms()})


def _from_bytes(raw: bytes, version: int) -> PipelinePlan:
    obj = unpack_envelope(raw, "pipeline")
    read(obj, "created_ms", float)
    return replace(PipelinePlan.from_wire(obj.get("plan")), version=version)


#: KEYS: pipelines set, serial, current, the key prefix of versions; ARGV: name, pipeline bytes. The new version.
_APPLY_SCRIPT = """
local version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[4] .. version, ARGV[2])
redis.call('SET', KEYS[3], version)
redis.call('SADD', KEYS[1], ARGV[1])
return version
"""


class PipelineStore:
    """The pipelines of one namespace in Redis: apply (a new version when changed), get, list, remove."""

    def __init__(self, redis: Any, names: Names) -> None:
        self._redis = redis
        self._names = names

    async def apply(self, plan: PipelinePlan) -> tuple[PipelinePlan, bool]:
        """Store ``plan`` as the pipeline's next version unless the current one has the same steps and outputs;
        returns the current version and whether it is new. Check it with :func:`check_pipeline` first."""
        try:
            current = await self.get(plan.name)
        except PipelineError:
            current = None
        if current is not None and (current.steps, current.outputs) == (plan.steps, plan.outputs):
            return current, False
        n = self._names
        prefix = n.pipeline_key(plan.name, 0)[: -len("0")]
        keys = (n.pipelines_key, n.pipeline_serial_key(plan.name), n.pipeline_current_key(plan.name), prefix)
        try:
            version = int(await self._redis.eval(_APPLY_SCRIPT, len(keys), *keys, plan.name, _to_bytes(plan)))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return replace(plan, version=version), True

    async def get(self, name: str, version: int | None = None) -> PipelinePlan:
        """Version ``version`` of a pipeline (the current one when None); PipelineError when there is none."""
        n = self._names
        try:
            if version is None:
                raw_current = await self._redis.get(n.pipeline_current_key(name))
                if raw_current is None:
                    raise PipelineError(f"unknown pipeline {name!r}")
                version = int(text(raw_current))
            raw = await self._redis.get(n.pipeline_key(name, version))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        if raw is None:
            raise PipelineError(f"pipeline {name!r} has no version {version}")
        return _from_bytes(raw, version)

    async def names(self) -> list[str]:
        """Every applied pipeline's name, sorted."""
        try:
            return sorted(text(x) for x in await self._redis.smembers(self._names.pipelines_key))
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def versions(self, name: str) -> list[int]:
        """The stored version numbers of a pipeline, ascending."""
        try:
            serial = await self._redis.get(self._names.pipeline_serial_key(name))
            last = 0 if serial is None else int(text(serial))
            keys = [self._names.pipeline_key(name, v) for v in range(1, last + 1)]
            present = await self._redis.exists(*keys) if keys else 0
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return list(range(1, last + 1)) if present else []

    async def remove(self, name: str) -> bool:
        """Delete every version of a pipeline; False when there was none. Requests in flight finish."""
        n = self._names
        try:
            serial = await self._redis.get(n.pipeline_serial_key(name))
            last = 0 if serial is None else int(text(serial))
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(n.pipelines_key, name)
                pipe.delete(n.pipeline_current_key(name), n.pipeline_serial_key(name))
                for v in range(1, last + 1):
                    pipe.delete(n.pipeline_key(name, v))
                removed, *_ = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        return bool(removed)


async def step_records(plan: PipelinePlan, get: Any) -> dict[str, ModelRecord]:
    """Each step's model record: its pinned version, else the model's default (``get(model, version|None)``).

    Raises SchemaError(INVALID_REQUEST) naming the step whose model or version is not registered.
    """
    records: dict[str, ModelRecord] = {}
    for step in plan.steps:
        try:
            records[step.name] = await get(step.model, step.version or None)
        except RegistryError as exc:
            raise invalid(f"pipeline {plan.name!r}: step {step.name!r}: {exc.message}") from None
    return records


def resolve(plan: PipelinePlan, records: Mapping[str, ModelRecord]) -> PipelinePlan:
    """``plan`` with every step's version set to the one in ``records``."""
    return plan.resolved({name: record.version for name, record in records.items()})


def describe(plan: PipelinePlan) -> dict[str, Any]:
    """A JSON-able view of a pipeline (``fleet pipelines show``)."""
    return {
        "name": plan.name,
        "version": plan.version,
        "steps": [
            {"name": s.name, "model": s.model, "version": s.version or None, "inputs": dict(s.inputs)}
            for s in plan.steps
        ],
        "outputs": dict(plan.outputs),
    }


# Requests and answers of a running pipeline ----------------------------------------------------------------


def step_request(route: PipelineRoute, node: str, gathered: Mapping[str, Tensor]) -> InferenceRequest:
    """The request of step ``node`` of ``route``'s pipeline request, fed from ``gathered`` (reference -> tensor).

    It carries on the tensors that ``node`` or a step after it reads, and the caller's reply address.
    """
    plan = route.plan
    step = plan.step(node)
    needed = plan.needed_by(node)
    created = now_ms()
    carried = tuple(replace(gathered[ref], name=ref) for ref in sorted(needed) if ref in gathered)
    onward = PipelineRoute(
        request_id=route.request_id,
        step=node,
        plan=plan,
        gathered=carried,
        caller=route.caller,
        lane=route.lane,
        sent_ms=created,
        deadline_ms=route.deadline_ms,
        trace=route.trace,
    )
    missing = [ref for _, ref in step.inputs if ref not in gathered]
    if missing:  # cannot happen for a checked plan: every reference is carried to where it is read
        raise SchemaError(f"pipeline {plan.name!r}: step {node!r} misses {missing}")
    return InferenceRequest(
        id=step_request_id(route.request_id, node),
        model=step.model,
        version=step.version,
        inputs=tuple(replace(gathered[ref], name=name) for name, ref in step.inputs),
        reply=ReplyAddress(ReplyKind.STEP, plan.name, route=onward),
        deadline_ms=route.deadline_ms,
        created_ms=created,
    )


def first_requests(
    plan: PipelinePlan,
    request_id: str,
    inputs: Iterable[Tensor],
    caller: ReplyAddress,
    lane: str,
    deadline_ms: float | None,
    trace: str = "",
) -> list[InferenceRequest]:
    """The requests that start pipeline request ``request_id``: one per entry step (versions resolved);
    ``trace`` is the traceparent every step's record carries on."""
    start = PipelineRoute(request_id, "", plan, (), caller, lane, deadline_ms=deadline_ms, trace=trace)
    gathered = gather(inputs, INPUTS)
    return [step_request(start, node, gathered) for node in plan.entry_steps()]


def outbox_request(entry: InferenceRequest, inputs: Iterable[Tensor]) -> InferenceRequest:
    """``entry`` (an entry step's request) with every input of the pipeline in its route: what an async job's
    outbox keeps, so that a sweep can start every entry step again (:func:`restart_requests`)."""
    route = entry.reply.route
    if route is None:
        raise SchemaError(f"request {entry.id!r} is not a pipeline step's")
    gathered = {t.name: t for t in route.gathered}
    for ref, tensor in gather(inputs, INPUTS).items():
        gathered.setdefault(ref, replace(tensor, name=ref))
    carried = replace(route, gathered=tuple(gathered.values()))
    return replace(entry, reply=ReplyAddress(ReplyKind.STEP, route.plan.name, route=carried))


def restart_requests(request: InferenceRequest) -> list[InferenceRequest]:
    """What publishing an outboxed ``request`` means: itself when it is a model's, else the requests of every
    entry step of its pipeline (from the inputs :func:`outbox_request` put in its route). Entry steps that ran
    already drop the new records (their first-result markers)."""
    route = request.reply.route
    if route is None:
        return [request]
    inputs = [
        replace(t, name=split_ref(t.name)[1]) for t in route.gathered if split_ref(t.name)[0] == INPUTS
    ]
    return first_requests(
        route.plan, route.request_id, inputs, route.caller, route.lane, route.deadline_ms, route.trace
    )


def pipeline_answer(route: PipelineRoute, gathered: Mapping[str, Tensor], last: InferenceResponse) -> InferenceResponse:
    """The caller's answer: the pipeline's outputs from ``gathered``, timings of the ``last`` step's batch."""
    plan = route.plan
    return InferenceResponse(
        route.request_id,
        plan.name,
        str(plan.version),
        outputs=tuple(replace(gathered[ref], name=name) for name, ref in plan.outputs),
        worker=last.worker,
        batch_size=last.batch_size,
        queue_ms=last.queue_ms,
        compute_ms=last.compute_ms,
    )


def step_failure(route: PipelineRoute, failed: InferenceResponse) -> InferenceResponse:
    """The caller's answer when step ``route.step`` answered with an error: its code, the step named."""
    plan = route.plan
    assert failed.error is not None
    step = plan.step(route.step)
    message = f"pipeline {plan.name!r} step {route.step!r} (model {step.model}:{step.version}): {failed.error.message}"
    error = ErrorInfo(failed.error.code, message)
    return InferenceResponse(route.request_id, plan.name, str(plan.version), error=error, worker=failed.worker)
