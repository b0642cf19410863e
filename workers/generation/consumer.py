"""One text-generation model's consumers: Kafka records in, sequences on the engine, text out as it is decoded.

It stands where a tensor model's ``ModelConsumer`` stands in the worker (same lifecycle and heartbeat sources),
with its own admission: records are taken from Kafka only while the engine holds fewer than
``FLEET_WORKER_MAX_SEQUENCES`` sequences (interactive lane first), so the rest wait in Kafka, where the
autoscaler sees them as lag. One task hands the engine's events on in order: stream chunks of a step in one
pipelined ``XADD`` round trip to their reply streams (``schemas.generation``), then the final responses through
the worker's ``ReplyWriter`` (so every reply kind works: a gateway's stream, an async job's result, a topic),
then the commits. Offsets are committed in order: a partition's offset moves past a record only once it and
every record before it on that partition is answered, so a crash redelivers exactly what was not answered.
Every ``_CANCEL_POLL_S`` one pipelined round trip reads the cancel markers of the running sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from schemas import (
    DeadLetter,
    ErrorCode,
    FleetError,
    InferenceResponse,
    Names,
    ReplyKind,
    SchemaError,
    Tensor,
    now_ms,
)
from schemas.constants import REPLY_STREAM_MAXLEN, REPLY_STREAM_TTL_S
from schemas.generation import (
    CHUNK_FIELD,
    OUTPUT_COMPLETION_TOKENS,
    OUTPUT_FINISH_REASON,
    OUTPUT_PROMPT_TOKENS,
    OUTPUT_TEXT,
    SamplingParams,
    StreamChunk,
    cancel_key,
)
from schemas.registry import ModelRecord
from schemas.tensors import decode_bytes_elements, element_count

from ..artifact_cache import ArtifactCache
from ..handler import Fetched
from ..lanes import LaneConsumer
from ..metrics import WorkerMetrics
from ..model_serving import ModelLanes, WorkerBackends, model_thread
from ..residency_manager import ResidencyManager
from ..round import retrying
from ..runtimes.generative import GenerationBackend
from ..settings import WorkerSettings
from ..stats import ModelStats
from .engine import Event, Finished, GenerationEngine, Piece

log = logging.getLogger("fleet.workers")

_CANCEL_POLL_S = 0.1
_FETCH_WAIT_MS = 20


@dataclass
class _Flight:
    """A record on the engine: where it came from and how to answer it."""

    item: Fetched
    lane: LaneConsumer
    record: ModelRecord


@dataclass
class _Offsets:
    """A partition's records in flight, in offset order: the commit moves past the answered prefix only."""

    pending: dict[int, bool] = field(default_factory=dict)  # offset -> answered

    def add(self, offset: int) -> None:
        self.pending[offset] = False

    def answer(self, offset: int) -> int | None:
        """Mark ``offset`` answered; the offset to commit when the answered prefix grew, else None."""
        if offset in self.pending:
            self.pending[offset] = True
        commit = None
        for first in sorted(self.pending):
            if not self.pending[first]:
                break
            del self.pending[first]
            commit = first + 1
        return commit


class GenerationConsumer:
    """Serves one text-generation model (the worker uses it where it would use a ``ModelConsumer``)."""

    def __init__(
        self,
        model: str,
        settings: WorkerSettings,
        names: Names,
        redis: Any,
        producer: Any,
        metrics: WorkerMetrics,
        residency: ResidencyManager,
        artifacts: ArtifactCache,
    ) -> None:
        self.model = model
        self._settings = settings
        self._names = names
        self._redis = redis
        self._executor = model_thread(model)
        backends = WorkerBackends.create(settings, names, redis, producer, metrics, residency, artifacts)
        self.cache = backends.model_cache(model, self._executor)
        self.stats = ModelStats()
        self.stats.max_sequences = settings.max_sequences
        self._replies = backends.replies
        self._dead_letters = backends.dead_letters
        self._lanes = ModelLanes(model, names, settings.fleet.kafka)
        self._interactive, self._bulk = self._lanes.interactive, self._lanes.bulk
        self.assigned = self._lanes.assigned
        self._closing = asyncio.Event()
        self._engines: dict[str, GenerationEngine] = {}
        self._flights: dict[str, _Flight] = {}
        self._offsets: dict[TopicPartition, _Offsets] = {}
        self._events: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # the worker's interface (as ModelConsumer) -------------------------------------------------------------
    @property
    def task(self) -> asyncio.Task[None] | None:
        """The consume routine (done early only when it crashed)."""
        return self._task

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of both lanes' assignments."""
        return self._lanes.partitions

    @property
    def in_flight(self) -> int:
        """Sequences taken from Kafka and not answered yet."""
        return len(self._flights)

    async def preload(self) -> None:
        """Load the default version now (failures only log)."""
        try:
            await self._engine(await self.cache.default_record())
        except (FleetError, SchemaError) as exc:
            log.warning("model %s not preloaded: %s", self.model, exc)

    async def start(self) -> None:
        """Join both lanes' groups and start the routines."""
        await self._lanes.start(self.finish_round)
        self._tasks = [
            asyncio.create_task(self._emit_routine(), name=f"generate-emit-{self.model}"),
            asyncio.create_task(self._cancel_routine(), name=f"generate-cancel-{self.model}"),
        ]
        self._task = asyncio.create_task(self._consume_routine(), name=f"generate-{self.model}")

    def request_stop(self) -> None:
        """Stop taking records; the sequences in flight still finish."""
        self._closing.set()
        self._room.set()

    async def stop(self, timeout_s: float) -> None:
        """Let the sequences in flight finish within ``timeout_s`` (the rest are redelivered), leave the groups."""
        self.request_stop()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        if self._flights:
            log.warning("model %s: %d sequence(s) unfinished at stop (redelivered)", self.model, len(self._flights))
        for routine in self._tasks:
            routine.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await asyncio.to_thread(engine.stop)
        await self._lanes.stop()
        await self.cache.close()
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def finish_round(self, timeout_s: float) -> None:
        """Before partitions move: wait (bounded) until every sequence in flight is answered and committed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                for lane in self._lanes:
                    await lane.flush_commits()
        self._flights.clear()
        self._offsets.clear()
        self._idle.set()

    # taking records ------------------------------------------------------------------------------------
    async def _consume_routine(self) -> None:
        await self._lanes.wait_assigned(self._closing)
        while not self._closing.is_set():
            room = self._settings.max_sequences - len(self._flights)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                fetched = await self._interactive.take(0, room)
                lane = self._interactive
                if not fetched:
                    fetched, lane = await self._bulk.take(_FETCH_WAIT_MS, room), self._bulk
                if not fetched:
                    fetched, lane = await self._interactive.take(_FETCH_WAIT_MS, room), self._interactive
            except KafkaError as exc:
                log.warning("model %s: fetch failed (%s); retrying", self.model, exc)
                await asyncio.sleep(0.5)
                continue
            for item in fetched:
                await self._admit(item, lane)

    async def _admit(self, item: Fetched, lane: LaneConsumer) -> None:
        tp = TopicPartition(item.record.topic, item.record.partition)
        self._offsets.setdefault(tp, _Offsets()).add(item.record.offset)
        request = item.request
        if request is None:
            letter = DeadLetter(
                ErrorCode.UNDECODABLE,
                str(item.error.message if item.error else "undecodable"),
                item.record.topic,
                item.record.partition,
                item.record.offset,
                item.record.value,
                item.record.key,
                worker=self._settings.worker_id,
            )
            await retrying(self.model, "dead letter", lambda: self._dead_letters.send(self.model, [letter]))
            await self._answered(lane, item)
            return
        self._idle.clear()
        try:
            record = await self.cache.record(request.version)
            self._flights[request.id] = _Flight(item, lane, record)
            self.stats.sequences = len(self._flights)
            prompt, params = _read_request(record, request)
            engine = await self._engine(record)
        except (FleetError, SchemaError) as exc:
            code = getattr(exc, "code", ErrorCode.INVALID_INPUT)
            self._flights.setdefault(request.id, _Flight(item, lane, None))  # type: ignore[arg-type]
            self._events.put_nowait([Finished(request.id, error=(code, exc.message))])
            return
        engine.submit(request, prompt, params)

    async def _engine(self, record: ModelRecord) -> GenerationEngine:
        engine = self._engines.get(record.version)
        if engine is None:
            runtime = await self.cache.acquire(record)  # kept pinned: the engine holds it while it serves
            if not isinstance(runtime, GenerationBackend):
                self.cache.release(record)
                raise SchemaError(f"{record.name}:{record.version} is not a text-generation model")
            loop = asyncio.get_running_loop()

            def hand_on(events: list[Event]) -> None:
                loop.call_soon_threadsafe(self._events.put_nowait, events)

            engine = GenerationEngine(runtime, self._settings.max_sequences, hand_on, f"{record.name}:{record.version}")
            engine.start()
            self._engines[record.version] = engine
        return engine

    # handing results on ---------------------------------------------------------------------------------
    async def _emit_routine(self) -> None:
        while True:
            events = await self._events.get()
            while not self._events.empty():  # whatever piled up goes out in the same round trips
                events.extend(self._events.get_nowait())
            pieces = [e for e in events if isinstance(e, Piece)]
            finished = [e for e in events if isinstance(e, Finished)]
            if pieces:
                await retrying(self.model, "stream chunks", lambda p=pieces: self._send_pieces(p))  # type: ignore[misc]
            if finished:
                replies = [self._reply(done) for done in finished if done.key in self._flights]
                await retrying(self.model, "generation replies", lambda r=replies: self._replies.deliver(r))  # type: ignore[misc]
                for done in finished:
                    flight = self._flights.pop(done.key, None)
                    if flight is not None:
                        self._observe(flight, done)
                        await self._answered(flight.lane, flight.item)
            if len(self._flights) < self._settings.max_sequences:
                self._room.set()
            if not self._flights:
                self._idle.set()

    async def _send_pieces(self, pieces: Sequence[Piece]) -> None:
        worker = self._settings.worker_id
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for piece in pieces:
                    flight = self._flights.get(piece.key)
                    if flight is None or flight.item.request is None:
                        continue
                    reply = flight.item.request.reply
                    if reply.kind is not ReplyKind.STREAM or not reply.target:
                        continue
                    chunk = StreamChunk(piece.key, piece.seq, piece.text, piece.tokens, worker)
                    pipe.xadd(
                        reply.target, {CHUNK_FIELD: chunk.to_bytes()}, maxlen=REPLY_STREAM_MAXLEN, approximate=True
                    )
                    pipe.expire(reply.target, REPLY_STREAM_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            from ..errors import BackendDownError

            raise BackendDownError(f"Redis unavailable, stream chunks not sent: {exc}") from exc

    def _reply(self, done: Finished) -> tuple[Any, InferenceResponse]:
        flight = self._flights[done.key]
        request = flight.item.request
        assert request is not None
        worker = self._settings.worker_id
        if done.error is not None:
            return request.reply, InferenceResponse.failure(request, done.error[0], done.error[1], worker)
        outputs = (
            Tensor.from_numpy(OUTPUT_TEXT, _texts([done.text])),
            Tensor.from_numpy(OUTPUT_PROMPT_TOKENS, np.array([done.prompt_tokens], dtype=np.int64)),
            Tensor.from_numpy(OUTPUT_COMPLETION_TOKENS, np.array([done.completion_tokens], dtype=np.int64)),
            Tensor.from_numpy(OUTPUT_FINISH_REASON, _texts([done.finish_reason])),
        )
        wanted = set(request.outputs)
        response = InferenceResponse(
            request.id,
            request.model,
            request.version,
            tuple(t for t in outputs if not wanted or t.name in wanted),
            worker=worker,
            batch_size=1,
            queue_ms=max(0.0, now_ms() - request.created_ms - done.compute_ms),
            compute_ms=done.compute_ms,
        )
        return request.reply, response

    def _observe(self, flight: _Flight, done: Finished) -> None:
        request = flight.item.request
        latency = now_ms() - request.created_ms if request is not None else 0.0
        self.stats.observe_round(1, done.compute_ms / 1000.0, [latency])
        if done.error is None:
            self.stats.observe_batch(1, done.compute_ms / 1000.0)
            self.stats.observe_tokens(done.completion_tokens)
        self.stats.in_hand = self.stats.sequences = len(self._flights)

    async def _answered(self, lane: LaneConsumer, item: Fetched) -> None:
        tp = TopicPartition(item.record.topic, item.record.partition)
        offsets = self._offsets.get(tp)
        commit = offsets.answer(item.record.offset) if offsets is not None else None
        if commit is not None:
            try:
                await lane.consumer.commit({tp: commit})
            except (KafkaError, FleetError) as exc:
                log.warning("model %s: commit failed (%s); the records will be redelivered", self.model, exc)

    async def _cancel_routine(self) -> None:
        while True:
            await asyncio.sleep(_CANCEL_POLL_S)
            running = [key for key, f in self._flights.items() if f.item.request is not None]
            if not running:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in running:
                        pipe.exists(cancel_key(self._names, key))
                    found = await pipe.execute()
            except RedisError as exc:
                log.debug("cancel markers unread: %s", exc)
                continue
            for key, hit in zip(running, found, strict=True):
                flight = self._flights.get(key)
                if hit and flight is not None and flight.record is not None:
                    engine = self._engines.get(flight.record.version)
                    if engine is not None:
                        engine.cancel(key, ErrorCode.CANCELLED, "the caller went away")


def _texts(items: list[str]) -> Any:
    array = np.empty(len(items), dtype=object)
    array[:] = [item.encode() for item in items]
    return array


def _read_request(record: ModelRecord, request: Any) -> tuple[str, SamplingParams]:
    """The prompt and sampling settings of ``request``; SchemaError(INVALID_INPUT) naming what is wrong."""
    if len(request.inputs) != 1:
        raise SchemaError("a text-generation request has one input, text", code=ErrorCode.INVALID_INPUT)
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES" or element_count(tensor.shape) != 1:
        problem = "input 'text' must be BYTES with exactly one element (one prompt)"
        raise SchemaError(problem, code=ErrorCode.INVALID_INPUT)
    raw = decode_bytes_elements(tensor.data, 1)[0]
    try:
        prompt = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError("input 'text' is not UTF-8", code=ErrorCode.INVALID_INPUT) from None
    try:
        params = SamplingParams.from_parameters(dict(request.parameters))
    except SchemaError as exc:
        raise SchemaError(exc.message, code=ErrorCode.INVALID_INPUT) from None
    if params.chat:
        try:
            messages = json.loads(prompt)
        except ValueError:
            messages = None
        if not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
            raise SchemaError("a chat prompt must be a JSON list of messages", code=ErrorCode.INVALID_INPUT)
    return prompt, params
