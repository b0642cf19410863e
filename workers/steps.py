"""Pipeline steps: a step's answer goes on to the next steps' topics instead of back to the caller.

A request whose reply kind is ``step`` (`schemas.PipelineRoute`) is one step of a pipeline request. Its
worker answers it as any other request; `StepRouter` (the round's reply writer) then passes the answer on:

1. **First result wins per step**: the ``step`` script stores the step's first answer under
   ``names.step_key(request id, step)`` (``HSETNX r``) with the token of the record that stored it
   (``o``, `schemas.PipelineRoute.token`): that record *owns* the step and is the only one that passes
   it on. A redelivered or retried step whose answer was passed on already (``e`` set) stops there; the
   owner's redelivery after a crash before ``e`` (its offset was not committed, so it comes again) passes
   on the *stored* answer again; any other record of the same step (a duplicate that an earlier step
   passed on twice, across such a crash) is dropped at once, even while the owner is still passing on.
   So a step passed on twice makes one more record of the next step at most, and that record goes no
   further: every later step and the caller see one answer per step.
2. **Successors**: each step (or the pipeline's outputs) that waits for this step alone gets its request
   produced to its model's topic of the caller's lane (key = its request id), carrying the tensors it and
   the steps after it read. A *join* (a step waiting for several) gathers its inputs in
   ``names.join_key(request id, join)``: the ``join`` script adds this branch's tensors and fires once, for
   the branch that completes it (a redelivered branch fires it again while it is not marked ``done``).
3. **The answer**: the pipeline's outputs go to the caller's reply address as an ordinary reply with the
   pipeline request's id (the reply writer's first-result-wins holds for the whole pipeline); a step that
   fails answers the caller with its code and the step named, and goes to the dead letters with the
   pipeline's context (``fleet-pipeline`` / ``fleet-step`` headers, the step's request as value). A failed
   step that no output depends on (a side branch) is only dead-lettered.
4. Then the markers (``e``, ``done``) are set; only after all of it is the round committed. Anything that
   does not get through raises BackendDownError: the round delivers again, which the markers make safe
   (at worst a successor's record is produced twice, and the successor's owner rule drops the second). The
   last step's answer to the caller may then reach the caller's reply address twice with the same id, as a
   single model's may: a gateway, a job's result (``SET NX``) and the producer client keep the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.exceptions import NoScriptError, RedisError

from schemas import (
    ENVELOPE_VERSION,
    DeadLetter,
    InferenceRequest,
    InferenceResponse,
    Names,
    PipelineRoute,
    ReplyKind,
    SchemaError,
    Tensor,
    now_ms,
)
from schemas.codec import pack, unpack_envelope
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID, HEADER_TRACEPARENT, RESULT_TTL_S
from schemas.pipeline_plan import OUTPUTS, gather
from schemas.pipelines import pipeline_answer, step_failure, step_request
from schemas.topics import BulkTopics

from .deadletter import DeadLetterWriter
from .errors import BackendDownError
from .replies import DeliveryReport, Reply, ReplyWriter

log = logging.getLogger("fleet.workers")

#: Dead-letter headers naming the pipeline and the step of a failed step's request.
HEADER_PIPELINE = "fleet-pipeline"
HEADER_STEP = "fleet-step"

#: KEYS[1] step key; ARGV[1] the step's answer, ARGV[2] TTL ms, ARGV[3] the record's token. 1 when this answer
#: is the first (stored now, this record owns the step), 0 when the first was passed on already or another record
#: owns the step, else the first answer (this record's, stored but not passed on yet: a redelivery).
STEP_SCRIPT = """
if redis.call('HSETNX', KEYS[1], 'r', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'o', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('HEXISTS', KEYS[1], 'e') == 1 then
  return 0
end
local owner = redis.call('HGET', KEYS[1], 'o')
if owner and owner ~= '' and owner ~= ARGV[3] then
  return 0
end
return redis.call('HGET', KEYS[1], 'r')
"""
STEP_SHA = hashlib.sha1(STEP_SCRIPT.encode()).hexdigest()
#: KEYS[1] join key; ARGV[1] field of the arriving step, ARGV[2] its tensors, ARGV[3] fields needed, ARGV[4] TTL
#: ms. Every field (flat list) when the join fires for this arrival, else 0.
JOIN_SCRIPT = """
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('HEXISTS', KEYS[1], 'done') == 1 then
  return 0
end
local have = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], 'fired')
if have < tonumber(ARGV[3]) then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'fired', '1') == 1 or new == 0 then
  return redis.call('HGETALL', KEYS[1])
end
return 0
"""
JOIN_SHA = hashlib.sha1(JOIN_SCRIPT.encode()).hexdigest()
_BRANCH = "s:"  # join hash field prefix of an arrived step (step names may be "fired" or "done")
_MARGIN_MS = 60_000  # markers outlive the deadline by this much (a late redelivery still finds them)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StepMetrics:
    """Per-step metrics of the pipelines a worker serves steps of."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("pipeline", "step")
        self.requests = Counter(
            "fleet_pipeline_step_requests",
            "Pipeline step answers passed on (first answers only), by outcome (ok or the error code).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.latency = Histogram(
            "fleet_pipeline_step_latency_seconds",
            "From a step's request being sent to its answer being passed on (queue + batch + run).",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.answers = Counter(
            "fleet_pipeline_answers",
            "Pipeline answers sent to callers by this worker's last steps, by outcome (ok or the error code).",
            ("pipeline", "outcome"),
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, StepMetrics] = weakref.WeakKeyDictionary()


def step_metrics(registry: CollectorRegistry) -> StepMetrics:
    """The step metrics of ``registry`` (created on first use: one set per worker registry)."""
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = StepMetrics(registry)
    return metrics


def _ttl_ms(route: PipelineRoute) -> int:
    if route.deadline_ms is None:
        return RESULT_TTL_S * 1000
    return max(_MARGIN_MS, int(route.deadline_ms - now_ms()) + _MARGIN_MS)


def _pack(gathered: Mapping[str, Tensor]) -> bytes:
    return pack({"v": ENVELOPE_VERSION, "t": [[ref, t.to_wire()] for ref, t in gathered.items()]})


def _unpack(raw: bytes) -> dict[str, Tensor]:
    obj = unpack_envelope(raw, "join branch")
    items = obj.get("t")
    if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
        raise SchemaError("join branch: field 't' must be a list of [reference, tensor]")
    return {str(ref): Tensor.from_wire(wire) for ref, wire in items}


@dataclass
class _Passing:
    """What one delivery passes on: records for next steps, answers, dead letters, markers to set after."""

    records: list[tuple[str, InferenceRequest]] = field(default_factory=list)
    answers: list[Reply] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # step keys
    joined: list[str] = field(default_factory=list)  # join keys that fired


class StepRouter(ReplyWriter):
    """The reply writer of a worker's rounds: passes pipeline steps' answers on, delivers the other replies."""

    def __init__(
        self,
        model: str,
        redis: Any,
        names: Names,
        producer: Any,
        dead_letters: DeadLetterWriter,
        metrics: StepMetrics,
        worker_id: str,
        bulk_topics: BulkTopics | None = None,
        *,
        before_mark: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_mark`` is a fault seam for tests: awaited once the answers were passed on, before the
        markers are set (where a crash leaves a step passed on but not marked)."""
        super().__init__(redis, names, producer)
        self._model = model
        self._r = redis
        self._n = names
        self._kafka = producer
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._worker_id = worker_id
        self._bulk_topics = bulk_topics
        self._before_mark = before_mark

    async def deliver_some(self, items: Sequence[Reply]) -> DeliveryReport:
        """Pass the step answers on (all of them, or BackendDownError), then deliver the other replies."""
        steps = [item for item in items if item[0].kind is ReplyKind.STEP and item[0].route is not None]
        if steps:
            await self._pass_on(steps)
        others = [item for item in items if item[0].kind is not ReplyKind.STEP]
        report = await super().deliver_some(others) if others else DeliveryReport()
        report.first += len(steps)
        return report

    async def _pass_on(self, items: Sequence[Reply]) -> None:
        routes = [address.route for address, _ in items]
        assert all(route is not None for route in routes)
        firsts = await self._scripts(
            STEP_SHA,
            STEP_SCRIPT,
            [
                (
                    [self._n.step_key(route.request_id, route.step)],
                    [response.to_bytes(), _ttl_ms(route), route.token],
                )
                for route, (_, response) in zip(routes, items, strict=True)
                if route is not None
            ],
        )
        passing = _Passing()
        joins: list[tuple[PipelineRoute, InferenceResponse, str, dict[str, Tensor]]] = []
        seen: set[str] = set()
        for route, (_, response), first in zip(routes, items, firsts, strict=True):
            assert route is not None
            key = self._n.step_key(route.request_id, route.step)
            if first == 0 or key in seen:
                continue  # passed on already, owned by another record of the step, or twice in this round
            seen.add(key)
            if isinstance(first, bytes):
                response = InferenceResponse.from_bytes(first)  # the first answer, stored but not passed on
            else:
                self._observe(route, response)
            passing.passed.append(key)
            if response.error is not None:
                self._failed(passing, route, response)
                continue
            gathered = {**{t.name: t for t in route.gathered}, **gather(response.outputs, route.step)}
            for node in route.plan.successors(route.step):
                if len(route.plan.upstream(node)) == 1:
                    self._next(passing, route, response, node, gathered)
                else:
                    joins.append((route, response, node, gathered))
        if joins:
            await self._join(passing, joins)
        await self._produce(passing.records)
        if passing.letters and await self._dead_letters.send_some(self._model, passing.letters):
            raise BackendDownError("Kafka unavailable: a failed pipeline step's dead letter was not stored")
        if passing.answers:
            report = await super().deliver_some(passing.answers)
            if report.pending:
                raise BackendDownError(f"Redis refused pipeline answers for now: {report.error}")
        if self._before_mark is not None:
            await self._before_mark()
        await self._mark(passing)

    def _observe(self, route: PipelineRoute, response: InferenceResponse) -> None:
        outcome = "ok" if response.error is None else response.error.code.value
        pipeline = route.plan.name
        self._metrics.requests.labels(pipeline, route.step, outcome).inc()
        self._metrics.latency.labels(pipeline, route.step).observe(max(0.0, now_ms() - route.sent_ms) / 1000)

    def _next(
        self,
        passing: _Passing,
        route: PipelineRoute,
        last: InferenceResponse,
        node: str,
        gathered: Mapping[str, Tensor],
    ) -> None:
        if node == OUTPUTS:
            passing.answers.append((route.caller, pipeline_answer(route, gathered, last)))
            self._metrics.answers.labels(route.plan.name, "ok").inc()
            return
        request = step_request(route, node, gathered)
        passing.records.append((self._n.request_topic(request.model, route.lane), request))

    def _failed(self, passing: _Passing, route: PipelineRoute, response: InferenceResponse) -> None:
        assert response.error is not None
        plan = route.plan
        answer = step_failure(route, response)
        assert answer.error is not None
        if OUTPUTS in plan.descendants(route.step):
            passing.answers.append((route.caller, answer))
            self._metrics.answers.labels(plan.name, response.error.code.value).inc()
        step = plan.step(route.step)
        # The step's request as it was sent (its inputs from the tensors the route carries), for `fleet dlq`.
        request = step_request(
            PipelineRoute(route.request_id, "", plan, (), route.caller, route.lane, deadline_ms=route.deadline_ms),
            route.step,
            {t.name: t for t in route.gathered},
        )
        passing.letters.append(
            DeadLetter(
                code=response.error.code,
                reason=answer.error.message,
                topic=self._n.request_topic(step.model, route.lane),
                partition=-1,
                offset=-1,
                value=request.to_bytes(),
                key=request.id.encode(),
                headers=((HEADER_PIPELINE, plan.name.encode()), (HEADER_STEP, route.step.encode())),
                worker=self._worker_id,
            )
        )

    async def _join(
        self, passing: _Passing, joins: Sequence[tuple[PipelineRoute, InferenceResponse, str, dict[str, Tensor]]]
    ) -> None:
        calls = []
        for route, _, node, gathered in joins:
            needed = len(route.plan.upstream(node))
            key = self._n.join_key(route.request_id, node)
            calls.append(([key], [_BRANCH + route.step, _pack(gathered), needed, _ttl_ms(route)]))
        results = await self._scripts(JOIN_SHA, JOIN_SCRIPT, calls)
        for (route, last, node, _), result in zip(joins, results, strict=True):
            if not isinstance(result, list):
                continue  # waiting for another branch, or fired already
            fields = dict(zip(result[::2], result[1::2], strict=True))
            merged: dict[str, Tensor] = {}
            for name, value in sorted(fields.items()):
                if bytes(name).startswith(_BRANCH.encode()):
                    merged.update(_unpack(bytes(value)))
            passing.joined.append(self._n.join_key(route.request_id, node))
            self._next(passing, route, last, node, merged)

    async def _scripts(self, sha: str, script: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per call in one pipelined round trip (loading it on NOSCRIPT)."""

        async def send() -> list[Any]:
            async with self._r.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                return list(await pipe.execute(raise_on_error=False))

        try:
            results = await send()
            if any(isinstance(r, NoScriptError) for r in results):
                await self._r.script_load(script)
                results = await send()
        except RedisError as exc:
            raise BackendDownError(f"Redis unavailable, pipeline steps not passed on: {exc}") from exc
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise BackendDownError(f"Redis refused a pipeline step's marker: {errors[0]}")
        return results

    async def _produce(self, records: Sequence[tuple[str, InferenceRequest]]) -> None:
        """Produce the next steps' requests and wait for the acks; BackendDownError when any is not stored."""
        if not records:
            return
        sent: list[Any] = []
        try:
            for topic, request in records:
                if self._bulk_topics is not None:
                    await self._bulk_topics.ensure(topic)
                key = request.id.encode()
                headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())]
                route = request.reply.route
                if route is not None and route.trace:  # every step's spans in the caller's trace
                    headers.append((HEADER_TRACEPARENT, route.trace.encode()))
                sent.append(await self._kafka.send(topic, request.to_bytes(), key=key, headers=headers))
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
        except KafkaError as exc:
            raise BackendDownError(f"Kafka unavailable, pipeline steps not passed on: {exc}") from exc
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            if not all(isinstance(o, KafkaError) for o in failed):
                raise failed[0]
            raise BackendDownError(f"Kafka unavailable, pipeline steps not passed on: {failed[0]}")
        log.debug("passed %d pipeline step request(s) on", len(records))

    async def _mark(self, passing: _Passing) -> None:
        if not (passing.passed or passing.joined):
            return
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for key in passing.passed:
                    pipe.hset(key, "e", b"1")
                for key in passing.joined:
                    pipe.hset(key, "done", b"1")
                await pipe.execute()
        except RedisError as exc:
            raise BackendDownError(f"Redis unavailable, pipeline steps passed on but not marked: {exc}") from exc


__all__ = ["HEADER_PIPELINE", "HEADER_STEP", "StepMetrics", "StepRouter", "step_metrics"]
