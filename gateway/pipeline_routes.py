"""``/v2/pipelines/{p}``: a pipeline's metadata and its infer route, sync and async (``workers.steps`` runs it).

The infer route is the model route's twin: the same body formats (JSON and binary), admission, body limits,
timeouts and lanes; auth and rate limits apply to the pipeline's name as to a model's (the route's match
variable is ``model``, so the guard's allow-list and per-model buckets name pipelines too). The gateway
resolves the pipeline's current version and each step's model version (pinned, else the default), checks
the body against the pipeline's inputs, and publishes one request per entry step with the pipeline's route
(`schemas.PipelineRoute`); the last step's worker answers the caller's reply address with the pipeline
request's id. ``?async=true`` (or ``Prefer: respond-async``) creates a job (``GET /v2/jobs/{id}``) whose
result the last step stores; it reads ``running`` once a worker takes its first step (`workers.jobs`), and
an ``Idempotency-Key`` works as on a model's jobs (the same key and body: the same job, nothing published
again; the same key with another body: 409). The job's outbox entry carries every input of the pipeline, so
that a sweep publishes every entry step again (`schemas.pipelines.restart_requests`). With tracing on, the
route runs in a SERVER span and every step's record carries its ``traceparent``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from common import tracing
from schemas import (
    ErrorCode,
    FleetError,
    InferenceRequest,
    JobStatus,
    Lane,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    check_inputs,
)
from schemas import now_ms as wall_ms
from schemas.jobs import F_CALLBACK, F_CLIENT_ID, F_CREATED, F_DEADLINE, F_EXPIRES, F_MODEL, F_VERSION
from schemas.pipeline_plan import PipelinePlan
from schemas.pipelines import (
    PipelineError,
    PipelineSignature,
    PipelineStore,
    check_pipeline,
    first_requests,
    outbox_request,
    resolve,
    step_records,
)

from .auth import API_KEY
from .backends import Backends
from .errors import (
    WIRE_ID_KEY,
    BackendDownError,
    ConflictError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    WorkerReplyError,
)
from .job_routes import (
    ASYNC_QUERY,
    CALLBACK_HEADER,
    CALLBACK_QUERY,
    IDEMPOTENCY_HEADER,
    JOBS_PATH,
    PREFER_HEADER,
    REPLAYED_HEADER,
    callback_url,
    check_idempotency_key,
    fingerprint,
    job_result_ttl_s,
    wants_async,
)
from .jobs import JobStore, republish_after_s
from .limits import check_declared_body
from .protocol import (
    HEADER_LENGTH,
    LANE_HEADER,
    TIMEOUT_HEADER,
    check_outputs,
    choose_lane,
    json_response,
    parse_timeout_ms,
    render_infer,
)
from .routes import Routes

log = logging.getLogger("fleet.gateway")

PIPELINE_PATH = "/v2/pipelines/{model}"  # ``model``: the guard checks keys and rate limits by this name


class _Resolved:
    """A pipeline's current version with its steps' versions resolved, and its signature."""

    def __init__(self, plan: PipelinePlan, signature: PipelineSignature, batched: bool) -> None:
        self.plan = plan
        self.signature = signature
        self.batched = batched


class PipelineRoutes:
    """The pipeline routes of one gateway (they share the model routes' limits and backends)."""

    def __init__(self, backends: Backends, routes: Routes) -> None:
        self._b = backends
        self._routes = routes
        self._store = PipelineStore(backends.redis, backends.names)
        self._jobs = JobStore(backends.redis, backends.names, backends.settings.backend_timeout_s)
        self._reply = ReplyAddress(ReplyKind.STREAM, backends.listener.stream)
        self._cache: dict[str, tuple[float, PipelinePlan]] = {}

    def add_to(self, app: web.Application) -> None:
        """Register the routes on ``app``."""
        app.router.add_get(PIPELINE_PATH, self.metadata)
        app.router.add_post(PIPELINE_PATH + "/infer", tracing.traced_http(self.infer))  # as is when tracing is off

    async def _plan(self, name: str) -> PipelinePlan:
        """The current version (cached for the registry cache's TTL); 404 when there is none."""
        cached = self._cache.get(name)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with asyncio.timeout(self._b.settings.backend_timeout_s):
                plan = await self._store.get(name)
        except TimeoutError:
            raise BackendDownError("redis", "reading the pipeline took too long") from None
        except PipelineError:
            raise ModelNotFoundError(name) from None
        except FleetError as exc:
            raise BackendDownError("redis", exc.message) from None
        self._cache[name] = (now + self._b.settings.registry_cache_ttl_s, plan)
        return plan

    async def _resolve(self, name: str) -> _Resolved:
        plan = await self._plan(name)
        try:
            records = await step_records(plan, self._b.cache.get)
            signature = check_pipeline(plan, records)
        except SchemaError as exc:  # a step's model was removed or changed since the pipeline was applied
            raise FleetError(exc.message, code=ErrorCode.MODEL_UNAVAILABLE) from None
        entries = [records[n] for n in plan.entry_steps()]
        return _Resolved(resolve(plan, records), signature, all(r.batched for r in entries))

    async def metadata(self, request: web.Request) -> web.Response:
        """``GET /v2/pipelines/{p}``: name, version, inputs, outputs and steps (versions resolved now)."""
        resolved = await self._resolve(request.match_info["model"])
        plan = resolved.plan
        spec = [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in resolved.signature.inputs]
        out = [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in resolved.signature.outputs]
        steps = [{"name": s.name, "model": s.model, "version": s.version, "inputs": dict(s.inputs)} for s in plan.steps]
        return json_response(
            {"name": plan.name, "versions": [str(plan.version)], "platform": "pipeline", "inputs": spec,
             "outputs": out, "steps": steps}
        )  # fmt: skip

    async def infer(self, request: web.Request) -> web.Response:
        """``POST /v2/pipelines/{p}/infer``: run the pipeline (sync), or create a job with ``?async=true``."""
        loop = asyncio.get_running_loop()
        started, started_ms = loop.time(), wall_ms()
        name = request.match_info["model"]
        label, version_label = "_unknown", "_unknown"
        code: str | None = ErrorCode.INTERNAL.value
        metrics, routes, settings = self._b.metrics, self._routes, self._b.settings
        metrics.in_flight.inc()
        ticket = None
        try:
            check_declared_body(request.content_length, settings.max_body_bytes)
            ticket = routes.admission.admit(request.content_length)
            is_async = wants_async(request.query.get(ASYNC_QUERY), request.headers.get(PREFER_HEADER))
            key = request.headers.get(IDEMPOTENCY_HEADER)
            if key is not None:
                if not is_async:
                    raise InvalidRequestError(f"{IDEMPOTENCY_HEADER} applies to async requests only")
                check_idempotency_key(key)
            async with routes.large_bodies.turn(request.content_length):
                raw = await routes._read_body(request, ticket)
                resolved = await self._resolve(name)
                label, version_label = name, str(resolved.plan.version)
                datatypes = {spec.name: spec.datatype for spec in resolved.signature.inputs}
                body = await self._b.decoder.decode(raw, request.headers.get(HEADER_LENGTH), datatypes)
            lane = choose_lane(body.lane, request.headers.get(LANE_HEADER)) or Lane.INTERACTIVE
            default_s, max_s = (
                (settings.job_ttl_s, settings.job_ttl_s)
                if is_async
                else (settings.default_timeout_s, settings.max_timeout_s)
            )
            timeout_ms = parse_timeout_ms(body.timeout_ms, request.headers.get(TIMEOUT_HEADER), default_s, max_s)
            check_inputs(resolved.signature.inputs, body.inputs, batched=resolved.batched)
            check_outputs((s.name for s in resolved.signature.outputs), body)
            if routes.draining:
                raise BackendDownError("gateway", "the gateway is stopping")
            if is_async:
                print_ = fingerprint(name, None, request.headers.get(HEADER_LENGTH), raw)
                accepted = await self._submit(request, resolved.plan, body, lane, started_ms, timeout_ms, print_)
                code = None
                return accepted
            wire_id = request[WIRE_ID_KEY]
            response = await self._round_trip(
                wire_id, resolved.plan, body.inputs, lane, started, started_ms, timeout_ms
            )
            if response.error is not None:
                raise WorkerReplyError(response.error.code, response.error.message)
            rendered = render_infer(response, body, body.id or wire_id)
            code = None
        except FleetError as exc:
            code = exc.code.value
            raise
        finally:
            if ticket is not None:
                ticket.release()
            metrics.in_flight.dec()
            metrics.observe(label, loop.time() - started, code, version_label)
        headers = {"Content-Type": rendered.content_type}
        if rendered.header_length is not None:
            headers[HEADER_LENGTH] = str(rendered.header_length)
        return web.Response(body=rendered.body, headers=headers)

    async def _publish(self, requests: list[InferenceRequest], lane: Lane) -> None:
        names, publisher = self._b.names, self._b.publisher
        await asyncio.gather(*(publisher.publish(names.request_topic(r.model, lane), r) for r in requests))

    async def _round_trip(
        self,
        wire_id: str,
        plan: PipelinePlan,
        inputs: Any,
        lane: Lane,
        started: float,
        started_ms: float,
        timeout_ms: float,
    ) -> Any:
        listener = self._b.listener
        if not listener.healthy:
            raise BackendDownError("redis", listener.last_error)
        deadline = started_ms + timeout_ms
        requests = first_requests(plan, wire_id, inputs, self._reply, lane.value, deadline, tracing.traceparent())
        future = listener.expect(wire_id)  # before publishing: the last step may answer before publish() returns
        try:
            async with asyncio.timeout_at(started + timeout_ms / 1000.0):
                await self._publish(requests, lane)
                return await future
        except TimeoutError:
            raise DeadlineExceededError(plan.name, timeout_ms) from None
        finally:
            listener.discard(wire_id)

    async def _submit(
        self,
        request: web.Request,
        plan: PipelinePlan,
        body: Any,
        lane: Lane,
        created_ms: float,
        timeout_ms: float,
        print_: str,
    ) -> web.Response:
        """Create the job, publish the entry steps' requests; 202 with the job id and ``Location`` (an
        idempotent replay: the first job's, nothing published)."""
        settings, names = self._b.settings, self._b.names
        if not self._b.publisher.connected:
            raise BackendDownError("kafka", await self._b.publisher.check() or "not connected")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        api_key = request.get(API_KEY)
        owner = "" if api_key is None else api_key.key_id  # keys are scoped to the API key, as on models' jobs
        job_id = names.new_job_id(key, owner)  # with a key: in its job shard (one hash slot)
        ttl_s = settings.job_ttl_s
        callback = callback_url(
            request.headers.get(CALLBACK_HEADER) or request.query.get(CALLBACK_QUERY), settings.webhooks
        )
        fields = {
            F_MODEL: plan.name,
            F_VERSION: str(plan.version),
            F_CLIENT_ID: body.id or "",
            F_CREATED: repr(created_ms),
            F_DEADLINE: repr(created_ms + timeout_ms),
            F_EXPIRES: repr(created_ms + ttl_s * 1000.0),
        }
        if callback is not None:
            fields[F_CALLBACK] = callback
        expire_at = None if callback is None else created_ms + timeout_ms + settings.webhook_expiry_grace_s * 1000
        caller = ReplyAddress(ReplyKind.RESULT, "", ttl_s=job_result_ttl_s(settings))
        deadline = created_ms + timeout_ms
        requests = first_requests(plan, job_id, body.inputs, caller, lane.value, deadline, tracing.traceparent())
        first = requests[0]
        republish_at = wall_ms() + republish_after_s(settings.backend_timeout_s) * 1000
        existing = await self._jobs.create(
            job_id,
            fields,
            ttl_s,
            None if key is None else (key, f"{job_id} {print_}"),
            owner,
            expire_at_ms=expire_at,
            topic=names.request_topic(first.model, lane),
            request=outbox_request(first, body.inputs),  # a sweep publishes every entry step from it
            republish_at_ms=republish_at,
        )
        if existing is not None:
            return await self._replayed(key, existing, print_)
        try:
            await self._publish(requests, lane)
        except FleetError as exc:
            log.warning("pipeline job %s stays in the outbox for a sweep to publish: %s", job_id, exc.message)
        else:
            try:
                await self._jobs.published(job_id)
            except BackendDownError as exc:
                log.warning("pipeline job %s published but still in the outbox: %s", job_id, exc.message)
        return json_response(
            {"job_id": job_id, "status": "pending"}, status=202, headers={"Location": f"{JOBS_PATH}/{job_id}"}
        )

    async def _replayed(self, key: str | None, existing: str, print_: str) -> web.Response:
        """202 with the job an ``Idempotency-Key`` was first used for; 409 when that was another request."""
        other_id, _, other_print = existing.partition(" ")
        if other_print != print_:
            raise ConflictError(
                f"{IDEMPOTENCY_HEADER} {key!r} was used for a different request (job {other_id}); "
                "use a new key for a new request"
            )
        state = await self._jobs.read(other_id)
        status = JobStatus.PENDING if state is None else state.status(wall_ms())
        return json_response(
            {"job_id": other_id, "status": status.value},
            status=202,
            headers={"Location": f"{JOBS_PATH}/{other_id}", REPLAYED_HEADER: "true"},
        )
