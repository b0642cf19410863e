"""The pool mode: one worker serves many models with a fixed set of Kafka clients and no idle per-model cost.

Three Kafka clients whatever the number of models (plus the worker's producer): an interactive-lane consumer and
a bulk-lane consumer, both in no group with a manual assignment over the partitions this worker owns (separate
clients, since aiokafka stops fetching a connection while its prefetched records wait), and
`workers.group_offsets` to commit and read offsets under each model's own group. Ownership comes from Redis
leases (`workers.leases`), recomputed every heartbeat from the assignment and the models' replicas, and at once
when placement news names the worker (`workers.assignment`; a claim the old owner still holds is tried again
every 0.1-0.2 s for up to a beat, until it let go): adding, moving or removing a model changes only its
partitions, never a group rebalance, so the other models never pause. An idle beat costs a few Redis commands
whatever the number of models: leases live as long as the worker's liveness key, replicas are read again when
the placement epoch moves, claims and releases follow ownership changes; the held leases are checked (batched
MGETs) every ``LEASE_CHECK_BEATS`` beats and after the liveness lapsed: a lost one is let go of. A fenced worker
(`PartitionLeases.fenced`: liveness about to lapse, or a lapse not checked yet) fetches nothing and starts no
round.

Fetched records are sorted into per-model in-memory queues (bounded: a full queue pauses that model's
partitions of that lane, so the others keep flowing). A scheduler starts rounds: interactive before bulk
(the oldest waiting record first, across models), on at most ``pool_threads`` models at once, with one
slot kept for interactive work. Each model's rounds go through its own `workers.round.RoundPipeline`, as
in the per-model worker (``pipeline_depth``): while a round runs on the model, the next one is collected
(its batching window kept open while the model is busy, one model batch per round) and the round before
delivers its replies; a bulk round is collected only while the model is idle, so an interactive record
waits behind at most one bulk round. The model's calls run on the shared thread pool through its
`workers.serial.SerialExecutor` (one at a time per model; no thread per idle model). Models load on first
use under the LRU residency budget; their requests wait in the queue meanwhile (deadlines still apply in
the handler). Offsets are committed per round, in order, only after the round's replies are stored (and
every earlier round of the model committed); on a move the old owner stops fetching, drops what it had
not started, finishes the rounds in hand that hold records of the partitions and commits them, then
releases the lease, and the new owner starts at the committed offset. A stop drains every round in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from common import Backoff, BackoffPolicy, supervise
from common.channel import listen_routine
from common.fetch_wake import guard_fetch_routine
from schemas import Lane, Names
from schemas.wake_notes import read_wake_note

from .artifact_cache import ArtifactCache
from .dormancy import Dormancy, consumer_options
from .errors import BackendDownError, start_kafka_client
from .group_offsets import GroupOffsets
from .handler import Fetched, decode
from .lane_scheduler import IDLE_AFTER_S, IDLE_POLL_MS
from .leases import PartitionLeases, PlacementReplicas, owned_partitions
from .metrics import WorkerMetrics
from .model_serving import WorkerBackends
from .pacing import BulkPacer
from .partition_counts import PartitionCounts
from .pool_state import LANES, OwnedPartition, PoolModel, QueuedRecord
from .residency_manager import ResidencyManager
from .round import BACKEND_RETRY, RoundPipeline
from .serial import SerialExecutor
from .settings import WorkerSettings
from .stats import ModelStats
from .window import fill_window, one_batch, while_busy

log = logging.getLogger("fleet.workers")

#: Longest idle fetch wait of a lane with many partitions (see ``PoolConsumer._set_idle``).
_IDLE_WAIT_CAP_MS = 500
#: Every this many heartbeats the worker checks that it still holds each lease it consumes (batched MGETs).
LEASE_CHECK_BEATS = 30
#: A claim refused (the old owner has not let go yet: it finishes its round in hand first, then releases) is
#: tried again after these pauses rather than a heartbeat later, for up to ``CLAIM_RETRY_WINDOW_S`` after the
#: refusal (a round in hand can outlast a heartbeat; a try is one small script call); then once a beat.
CLAIM_RETRY = BackoffPolicy(first_s=0.1, max_s=0.2, factor=1.5)
CLAIM_RETRY_WINDOW_S = 10.0


class PoolConsumer:
    """Serves every assigned model of a worker through one multiplexed consumer per lane."""

    def __init__(
        self,
        settings: WorkerSettings,
        names: Names,
        redis: Any,
        producer: Any,
        metrics: WorkerMetrics,
        residency: ResidencyManager,
        artifacts: ArtifactCache,
    ) -> None:
        self._settings = settings
        self._names = names
        self._redis = redis
        self._producer = producer
        self._metrics = metrics
        self._residency = residency
        self._artifacts = artifacts
        self.id = settings.worker_id
        kafka = settings.fleet.kafka
        kwargs = {**kafka.consumer_kwargs(""), "group_id": None, **consumer_options(settings.pool_dormant_after_s)}
        self._consumers = {lane: AIOKafkaConsumer(**kwargs) for lane in LANES}
        self._offsets = GroupOffsets(kafka)
        self._leases = PartitionLeases(redis, names, self.id, int(3 * settings.heartbeat_interval_s * 1000))
        self._placements = PlacementReplicas(redis, names, self.id)
        self._wanted: dict[TopicPartition, OwnedPartition] = {}
        self._wanted_from: tuple[object, ...] | None = None  # (models, replicas, counts) it was computed from
        self._beats = 0
        self._unclaimed: frozenset[TopicPartition] = frozenset()  # wanted, but held by another worker
        self._refused_at = 0.0  # when these claims were first refused (monotonic)
        self._claim_retry = Backoff(CLAIM_RETRY)
        self._recheck = asyncio.Event()  # wakes the lease routine: a lapse (see _lapsed) or claims newly refused
        self._lapsed = False  # the liveness lapsed: take ownership again now
        self._threads = ThreadPoolExecutor(settings.pool_threads, thread_name_prefix="models")
        self._backends = WorkerBackends.create(settings, names, redis, producer, metrics, residency, artifacts)
        self.models: dict[str, PoolModel] = {}
        self._owned: dict[TopicPartition, OwnedPartition] = {}
        self._assigned: dict[Lane, frozenset[TopicPartition]] = {lane: frozenset() for lane in LANES}
        self._pos: dict[TopicPartition, int] = {}  # next offset to fetch, once known
        self._full: set[TopicPartition] = set()  # paused: their model's queue is full
        self._dormancy = {
            lane: Dormancy(
                self._consumers[lane],
                settings.pool_dormant_after_s,
                settings.pool_dormant_sweep_ms / 1000,
                self._full.__contains__,
            )
            for lane in LANES
        }
        self._counts = PartitionCounts(self._offsets.partitions, missing_s=settings.pool_missing_topic_recheck_s)
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
        self._rounds: set[asyncio.Task[None]] = set()  # the rounds being collected (one per model at most)
        self._tasks: list[asyncio.Task[None]] = []
        self._crash: BaseException | None = None
        self._last_records = {lane: time.monotonic() for lane in LANES}
        self._idle = dict.fromkeys(LANES, False)
        #: Set after the first ownership round (the partitions this worker could claim are being fetched).
        self.ready = asyncio.Event()

    # what the worker reads -----------------------------------------------------------------------------------------
    @property
    def kafka_clients(self) -> list[Any]:
        """The Kafka clients this pool owns (fixed, whatever the number of models; the producer is the worker's)."""
        return [*self._consumers.values(), self._offsets.client]

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The routines (done early only when they crashed)."""
        return list(self._tasks)

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of every owned partition."""
        return sorted(f"{tp.topic}:{tp.partition}" for tp in self._owned)

    def stats(self) -> dict[str, ModelStats]:
        """Service stats per served model."""
        return {name: model.stats for name, model in self.models.items()}

    def devices(self) -> list[str]:
        """Devices of the loaded runtimes."""
        return sorted({d for model in self.models.values() for d in model.cache.devices})

    # lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self, models: Iterable[str]) -> None:
        """Connect the clients, take the first ownership round and start the routines."""
        await self._offsets.start()
        for consumer in self._consumers.values():
            await start_kafka_client(consumer, self._settings.fleet.kafka.bootstrap)
            guard_fetch_routine(consumer)  # no sleep on a fetch already answered (see common.fetch_wake)
        for model in sorted(models):
            self.models[model] = self._new_model(model)
        await self.refresh()
        self.ready.set()
        self._tasks = [
            *(asyncio.create_task(self._fetch_routine(lane), name=f"pool-fetch-{lane.value}") for lane in LANES),
            asyncio.create_task(self._schedule_routine(), name="pool-scheduler"),
            asyncio.create_task(self._lease_routine(), name="pool-leases"),
            asyncio.create_task(
                self._leases.keep_alive_routine(self._settings.heartbeat_interval_s, self._on_lapse),
                name="pool-alive",
            ),
        ]
        if any(d.enabled for d in self._dormancy.values()):  # gateways name the partitions requests land on
            listen = functools.partial(
                listen_routine, self._redis, self._names.wake_channel, self._on_wake_note, log, stop=self._closing
            )
            self._tasks.append(
                asyncio.create_task(supervise("wake notes", listen, log, stop=self._closing), name="pool-wake-notes")
            )

    async def stop(self, timeout_s: float) -> None:
        """Stop fetching, finish (within ``timeout_s``) and commit the rounds in hand, release the leases."""
        self._closing.set()
        self._wake.set()
        # The liveness routine runs on until the rounds in hand are done: their leases must not lapse meanwhile.
        alive = [t for t in self._tasks if t.get_name() == "pool-alive"]
        routines = [t for t in self._tasks if t not in alive]
        for task in routines:
            if task.get_name() != "pool-scheduler":
                task.cancel()
        await asyncio.gather(*routines, return_exceptions=True)
        await self._drain(timeout_s)
        for task in alive:
            task.cancel()
        await asyncio.gather(*alive, return_exceptions=True)
        self._tasks = []
        owned, self._owned = list(self._owned), {}
        try:
            await self._leases.release([(tp.topic, tp.partition) for tp in owned])
            await self._leases.retire()
        except RedisError as exc:
            log.warning("pool: leases not released (taken over once the liveness lapses): %s", exc)
        for consumer in self._consumers.values():
            with contextlib.suppress(KafkaError):
                await consumer.stop()
        await self._offsets.close()
        for model in self.models.values():
            await model.cache.close()
        # Off the event loop: a batch still on a thread must not stop the loop.
        await asyncio.to_thread(self._threads.shutdown, wait=True)

    async def _drain(self, timeout_s: float) -> None:
        """Finish the rounds being collected, then deliver and commit every round in flight, within ``timeout_s``;
        what is left then is cancelled (its records are redelivered)."""
        deadline = time.monotonic() + timeout_s
        collecting = set(self._rounds)
        if collecting:
            await asyncio.wait(collecting, timeout=timeout_s)  # the closing flag ends their batching windows
        pipelines = [m.pipeline for m in self.models.values() if m.pipeline is not None and m.pipeline.in_flight]
        flights = [asyncio.ensure_future(p.wait_idle()) for p in pipelines]
        if flights:
            await asyncio.wait(flights, timeout=max(0.0, deadline - time.monotonic()))
        late = [t for t in collecting if not t.done()] + [p for p in pipelines if p.in_flight]
        if late:
            log.warning("pool: %d round(s) not finished after %.1fs; cancelled (redelivered)", len(late), timeout_s)
        for task in collecting:
            task.cancel()
        await asyncio.gather(*collecting, *(p.cancel() for p in pipelines), return_exceptions=True)
        for future in flights:
            future.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    def _new_model(self, name: str) -> PoolModel:
        executor = SerialExecutor(self._threads)
        serving = self._backends.serve(name, executor)
        model = PoolModel(
            name, executor, serving.cache, serving.stats, serving.rounds, BulkPacer(self._settings.bulk_share)
        )
        model.pipeline = RoundPipeline(
            serving.rounds, self._settings.pipeline_depth, functools.partial(self._pipeline_changed, model)
        )
        return model

    def _pipeline_changed(self, model: PoolModel) -> None:
        """A round of ``model`` left the model or finished: another may start; a crashed one stops the worker."""
        failure = model.pipeline.failure if model.pipeline is not None else None
        if failure is not None and self._crash is None:
            self._crash = failure
        self._wake.set()

    async def set_models(self, wanted: frozenset[str]) -> frozenset[str]:
        """Serve ``wanted`` from now on (the assignment changed); returns the models served afterwards."""
        for name in sorted(wanted - set(self.models)):
            self.models[name] = self._new_model(name)
            log.info("worker %s serves %s (assigned)", self.id, name)
        await self.refresh(wanted)
        for name in sorted(set(self.models) - wanted):
            model = self.models.pop(name)
            if model.pipeline is not None and model.pipeline.in_flight:
                # Left after the let-go's wait (its partitions are released): redelivered to the new owner.
                await model.pipeline.cancel()
            await model.cache.close()
            log.info("worker %s stopped serving %s (unassigned)", self.id, name)
        return frozenset(self.models)

    # ownership -----------------------------------------------------------------------------------------------------
    async def _replicas(self, models: Sequence[str]) -> dict[str, list[str]]:
        """Workers serving each model, from its placement status (this worker alone when it has none)."""
        if not self._settings.follow_assignment or not models:
            return {m: [self.id] for m in models}
        return await self._placements.read(models)

    def _topics(self, models: Iterable[str]) -> dict[str, tuple[str, Lane]]:
        """Request topic -> (model, lane) of each lane of ``models`` (retries come back on the request topics)."""
        return {self._names.request_topic(model, lane): (model, lane) for model in models for lane in LANES}

    async def refresh(self, models: Iterable[str] | None = None) -> None:
        """One ownership round: claim the partitions this worker should own and does not, let go of the
        others (and of those found held by another worker)."""
        async with self._refresh_lock:
            try:
                await self._refresh(sorted(self.models if models is None else models))
            except (RedisError, KafkaError) as exc:
                log.warning("pool: ownership not refreshed (kept as is): %s", exc)

    async def _refresh(self, models: list[str]) -> None:
        replicas = await self._replicas(models)
        topics = self._topics(models)
        counts = await self._partition_counts(topics)
        wanted = self._wanted_partitions(models, replicas, topics, counts)
        if self._leases.lapsed or self._beats >= LEASE_CHECK_BEATS:
            await self._check_held()
        leaving = [tp for tp in self._owned if tp not in wanted]
        if leaving:
            await self._let_go(leaving)
        new = [tp for tp in wanted if tp not in self._owned]
        if not new:
            self._note_unclaimed(frozenset())
            return
        held = await self._leases.claim([(tp.topic, tp.partition) for tp in new])
        gained = [tp for tp, ok in zip(new, held, strict=True) if ok]
        self._note_unclaimed(frozenset(tp for tp, ok in zip(new, held, strict=True) if not ok))
        if gained:
            await self._start_at_committed(gained, wanted)
            log.info("pool: worker %s now owns %d more partition(s)", self.id, len(gained))
            self._reassign()

    def _wanted_partitions(
        self,
        models: list[str],
        replicas: dict[str, list[str]],
        topics: dict[str, tuple[str, Lane]],
        counts: dict[str, int],
    ) -> dict[TopicPartition, OwnedPartition]:
        """The partitions this worker should own (computed again only when one of its inputs changed)."""
        inputs = (models, replicas, counts)
        if inputs == self._wanted_from:
            return self._wanted
        wanted: dict[TopicPartition, OwnedPartition] = {}
        for topic, (model, lane) in topics.items():
            for p in owned_partitions(self.id, replicas[model], counts.get(topic, 0)):
                group = self._names.worker_group(model, lane)
                wanted[TopicPartition(topic, p)] = OwnedPartition(model, lane, group)
        self._wanted, self._wanted_from = wanted, (list(models), dict(replicas), dict(counts))
        return wanted

    async def _check_held(self) -> None:
        """Let go of the partitions whose lease someone else holds now (taken over while this worker's liveness
        had lapsed, or deleted by hand); one still ours was touched by nobody meanwhile."""
        lapses, self._beats = self._leases.lapses, 0
        owned = list(self._owned)
        holders = await self._leases.holders([(tp.topic, tp.partition) for tp in owned])
        lost = [tp for tp, holder in zip(owned, holders, strict=True) if holder != self.id]
        if lost:
            log.warning("pool: leases lost to another worker: %s", ",".join(f"{t.topic}:{t.partition}" for t in lost))
            await self._let_go(lost, release=False)
        self._leases.checked(lapses)  # fenced until now, after a lapse

    async def _partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        """Partition counts of the topics the broker has: a new topic is asked at once, every one again every
        minute, and a missing one (a bulk topic not created yet) every ``pool_missing_topic_recheck_s``
        (`PartitionCounts`)."""
        return await self._counts.get(topics)

    async def _start_at_committed(
        self, gained: Sequence[TopicPartition], wanted: dict[TopicPartition, OwnedPartition]
    ) -> None:
        by_group: dict[str, list[TopicPartition]] = {}
        for tp in gained:
            by_group.setdefault(wanted[tp].group, []).append(tp)
        for group, tps in by_group.items():
            committed = await self._offsets.committed(group, tps)
            fresh = [tp for tp in tps if committed.get(tp) is None]
            # Nothing committed: the log start, asked here once, so that a later assign() (any model added,
            # moved or removed) seeks every partition instead of the consumer resetting each one it never
            # fetched from, which held up the fetches of every other model for 0.3-1.3 s per change.
            starts = await self._consumers[Lane.INTERACTIVE].beginning_offsets(fresh) if fresh else {}
            for tp in tps:
                offset = committed.get(tp)
                if offset is None:
                    offset = starts.get(tp)
                if offset is None:
                    self._pos.pop(tp, None)  # not known: the consumer resets it (auto_offset_reset=earliest)
                else:
                    self._pos[tp] = offset
                self._owned[tp] = wanted[tp]

    async def _let_go(self, tps: Sequence[TopicPartition], *, release: bool = True) -> None:
        """Stop fetching ``tps``, drop their records not started, let the rounds in hand that took records of
        them (being collected or in the model's pipeline) finish and commit, then delete the leases
        (``release``). A round in hand that holds none of them (only other partitions of the model) is not
        waited for: the new owner cannot redo any of its records."""
        gone = set(tps)
        keys = _keys(gone)
        models = {self._owned[tp].model for tp in gone}
        for tp in gone:
            del self._owned[tp]
            self._pos.pop(tp, None)
            self._full.discard(tp)
        self._reassign()
        for name in models:
            model = self.models.get(name)
            if model is None:
                continue
            for lane in LANES:
                queue = model.queues[lane]
                kept = [q for q in queue if (q.item.record.topic, q.item.record.partition) not in keys]
                queue.clear()
                queue.extend(kept)
            deadline = time.monotonic() + self._settings.drain_timeout_s
            if model.round is not None and model.round_holds(keys):
                await asyncio.wait({model.round}, timeout=self._settings.drain_timeout_s)
            # Collected rounds commit in order: those holding the partitions (and so every round before them).
            holding = model.pipeline.holding(keys) if model.pipeline is not None else []
            if holding:
                await asyncio.wait(holding, timeout=max(0.0, deadline - time.monotonic()))
        if release:
            await self._leases.release([(tp.topic, tp.partition) for tp in gone])

    def _reassign(self) -> None:
        """Give each lane's consumer the owned partitions, at their positions, paused where they should be."""
        for lane in LANES:
            tps = frozenset(tp for tp, owned in self._owned.items() if owned.lane is lane)
            if tps == self._assigned[lane]:
                continue
            consumer = self._consumers[lane]
            consumer.assign(list(tps))  # every partition's fetch state starts over: seek them all
            for tp in tps:
                position = self._pos.get(tp)
                if position is not None:
                    consumer.seek(tp, position)
            paused = [tp for tp in tps if tp in self._full]
            if paused:
                consumer.pause(*paused)
            self._dormancy[lane].assigned(tps)
            self._assigned[lane] = tps
            self._wake.set()

    @property
    def fenced(self) -> bool:
        """True while this worker may not consume (its liveness may lapse, or a lapse is not checked yet)."""
        return self._leases.fenced

    def _note_unclaimed(self, unclaimed: frozenset[TopicPartition]) -> None:
        """Claims refused this round: a new refusal starts the quick retries over (`CLAIM_RETRY`)."""
        if not unclaimed or unclaimed != self._unclaimed:
            self._claim_retry.reset()
            self._refused_at = time.monotonic()
            if unclaimed:
                self._recheck.set()  # the lease routine may be waiting for a beat: it waits the first pause now
        self._unclaimed = unclaimed

    def _on_lapse(self) -> None:
        self._lapsed = True
        self._recheck.set()

    def _claim_pause(self) -> float | None:
        """The pause before trying refused claims again, or None when none is due before the next beat."""
        if not self._unclaimed or time.monotonic() - self._refused_at >= CLAIM_RETRY_WINDOW_S:
            return None
        return self._claim_retry.next()

    async def _lease_routine(self) -> None:
        interval = self._settings.heartbeat_interval_s
        while not self._closing.is_set():
            retry = self._claim_pause()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), interval if retry is None else min(retry, interval))
            woken, lapsed = self._recheck.is_set(), self._lapsed
            self._recheck.clear()
            self._lapsed = False
            if woken and not lapsed:
                continue  # claims newly refused: try them again after the first pause
            if not self._closing.is_set():
                if retry is None:  # a quick retry of refused claims is no heartbeat
                    self._beats += 1
                await self.refresh()

    # fetching ------------------------------------------------------------------------------------------------------
    async def _fetch_routine(self, lane: Lane) -> None:
        consumer = self._consumers[lane]
        backoff = Backoff(BACKEND_RETRY)
        while not self._closing.is_set():
            if not self._assigned[lane] or self._leases.fenced:
                await asyncio.sleep(IDLE_POLL_MS / 1000)
                continue
            try:
                data = await consumer.getmany(
                    timeout_ms=self._dormancy[lane].poll_timeout_ms(IDLE_POLL_MS),
                    max_records=self._settings.max_fetch_records,
                )
            except KafkaError as exc:
                pause = backoff.next()
                log.warning("pool %s lane: fetch failed (%s); retrying in %.2fs", lane.value, exc, pause)
                await asyncio.sleep(pause)
                continue
            backoff.reset()
            if data:
                self._route(lane, data)
                self._note_records(lane)
            elif not self._idle[lane] and time.monotonic() - self._last_records[lane] > IDLE_AFTER_S:
                self._set_idle(lane, True)
            self._dormancy[lane].step(self._pos)

    def _route(self, lane: Lane, data: dict[TopicPartition, list[Any]]) -> None:
        """Sort fetched records into their models' queues."""
        arrived = time.monotonic()
        touched: set[str] = set()
        for tp, records in data.items():
            owned = self._owned.get(tp)
            model = self.models.get(owned.model) if owned is not None else None
            if owned is None or model is None or not records:
                continue  # let go meanwhile: its new owner reads it from the committed offset
            model.queues[lane].extend(QueuedRecord(arrived, item) for record in records for item in decode(record))
            self._pos[tp] = records[-1].offset + 1
            touched.add(model.name)
        self._dormancy[lane].seen(tp for tp, records in data.items() if records)
        cap = self._settings.pool_queue_records
        for name in touched:
            model = self.models[name]
            model.more.set()
            if len(model.queues[lane]) >= cap:
                self._pause_full(model, lane)
        self._wake.set()

    def _model_partitions(self, model: str, lane: Lane) -> list[TopicPartition]:
        return [tp for tp, o in self._owned.items() if o.model == model and o.lane is lane]

    def _pause_full(self, model: PoolModel, lane: Lane) -> None:
        tps = [tp for tp in self._model_partitions(model.name, lane) if tp not in self._full]
        if tps:
            self._full.update(tps)
            self._consumers[lane].pause(*tps)
            log.info(
                "pool: model %s %s lane: %d records queued; its partitions pause",
                model.name,
                lane.value,
                len(model.queues[lane]),
            )

    def _resume_drained(self, model: PoolModel, lane: Lane) -> None:
        if not self._full or len(model.queues[lane]) > self._settings.pool_queue_records // 2:
            return  # (called for every round: the owned partitions are looked through only when some are paused)
        tps = [tp for tp in self._model_partitions(model.name, lane) if tp in self._full]
        if tps:
            self._full.difference_update(tps)
            awake = [tp for tp in tps if self._dormancy[lane].may_resume(tp)]  # a dormant one waits for a sweep
            if awake:
                self._consumers[lane].resume(*awake)

    def _on_wake_note(self, raw: bytes) -> None:
        """A publisher says a record landed on ``topic:partition``: fetch it now if this worker let it sleep."""
        named = read_wake_note(raw)
        if named is None:
            return
        tp = TopicPartition(*named)
        owned = self._owned.get(tp)
        if owned is not None:
            self._dormancy[owned.lane].wake(tp)

    def _note_records(self, lane: Lane) -> None:
        self._last_records[lane] = time.monotonic()
        if self._idle[lane]:
            self._set_idle(lane, False)

    def _set_idle(self, lane: Lane, idle: bool) -> None:
        """The longer fetch wait while a lane is idle (see `workers.lane_scheduler`), scaled with its partitions.

        An idle fetch costs the worker (and the broker) per partition it names, so with hundreds of models the
        idle wait grows with the partitions (half a millisecond each, at most ``_IDLE_WAIT_CAP_MS``) to keep
        the idle cost flat. Only a broker that does not wake a waiting fetch on new data (the local Tansu)
        turns that wait into latency for the first request after a quiet spell; Kafka answers at once.
        """
        self._idle[lane] = idle
        idle_wait = self._settings.idle_fetch_wait_ms
        if idle_wait <= 0:
            return
        busy_wait = self._settings.fleet.kafka.fetch_max_wait_ms
        # With dormancy the idle lane's fetches name few partitions, and a sweep's fetch should come back at once.
        named = 0 if self._dormancy[lane].enabled else len(self._assigned[lane])
        scaled = max(busy_wait, idle_wait, min(_IDLE_WAIT_CAP_MS, named // 2))
        fetcher = getattr(self._consumers[lane], "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = scaled if idle else busy_wait

    # scheduling ----------------------------------------------------------------------------------------------------
    async def _schedule_routine(self) -> None:
        while not self._closing.is_set():
            if self._crash is not None:
                raise self._crash
            self._wake.clear()
            self._start_rounds()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_MS / 1000):  # no task per wait (wait_for makes one)
                    await self._wake.wait()
        if self._crash is not None:
            raise self._crash

    def _pick(self) -> tuple[PoolModel, Lane] | None:
        """The next round: the oldest interactive record's model, else (within the bulk slots) the oldest bulk.

        A model holds a slot (of ``pool_threads``) while a round of it is being collected, on the model or waiting
        for it; a model holding one may collect its next round while the one before runs (its pipeline says when).
        A bulk round starts only on an idle model and within ``pool_threads - 1`` slots.

        A pick runs on every fetch and every round's end, over every assigned model: one with nothing queued and
        nothing in hand is passed over at once (`PoolModel.settled`; the full look cost ~1.5 us a model, ~0.4 ms of
        the event loop per pick at 250 models, most of them idle).
        """
        active = bulk = 0
        free: list[tuple[PoolModel, bool]] = []  # (model, whether it holds a slot already: a round on the model)
        for m in self.models.values():
            pipeline = m.pipeline
            assert pipeline is not None
            if m.settled():
                continue  # counts for no slot and has nothing to start
            on_model = pipeline.before_model()
            if m.round is not None or on_model:
                active += 1
                if m.round_lane is Lane.BULK or pipeline.before_model(Lane.BULK):
                    bulk += 1
            if m.round is None and pipeline.may_collect():
                free.append((m, on_model > 0))
        threads = self._settings.pool_threads
        waiting = [
            (head, m)
            for m, holds in free
            if (head := m.head(Lane.INTERACTIVE)) is not None and (holds or active < threads)
        ]
        if waiting:
            return min(waiting, key=lambda pair: pair[0])[1], Lane.INTERACTIVE
        if bulk >= max(1, threads - 1) or active >= threads:
            return None  # a slot stays free for interactive work
        now = time.monotonic()
        waiting = [
            (head, m)
            for m, holds in free
            if not holds and (head := m.head(Lane.BULK)) is not None and m.pacer.rest_ms(now) == 0
        ]
        if waiting:
            return min(waiting, key=lambda pair: pair[0])[1], Lane.BULK
        return None

    def _start_rounds(self) -> None:
        if self._leases.fenced:
            return  # another worker may take these partitions over soon: start nothing it would redo
        while not self._closing.is_set():
            picked = self._pick()
            if picked is None:
                return
            model, lane = picked
            task = asyncio.create_task(self._collect(model, lane), name=f"collect-{model.name}-{lane.value}")
            model.round, model.round_lane = task, lane
            self._rounds.add(task)
            task.add_done_callback(functools.partial(self._round_done, model=model))

    def _round_done(self, task: asyncio.Task[None], *, model: PoolModel) -> None:
        self._rounds.discard(task)
        if model.round is task:
            model.round, model.round_lane = None, None
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()
        self._wake.set()

    async def _collect(self, model: PoolModel, lane: Lane) -> None:
        """Collect a round of ``model``'s queued ``lane`` records and hand it to the model's pipeline."""
        settings = self._settings
        pipeline = model.pipeline
        assert pipeline is not None
        limit = (
            settings.max_fetch_records
            if lane is Lane.INTERACTIVE
            else min(settings.max_fetch_records, settings.bulk_max_batch)
        )
        opened = model.head(lane)
        fetched = model.take(lane, limit)
        if not fetched:
            return
        if lane is Lane.INTERACTIVE:
            model.pacer.note_interactive(time.monotonic())
            version = next((f.request.version for f in fetched if f.request is not None), None)

            async def take(timeout_ms: int, max_records: int) -> list[Fetched]:
                if not model.queues[lane]:
                    model.more.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout_ms / 1000):
                            await model.more.wait()
                return model.take(lane, max_records)

            batching = model.cache.batching_hint(version)
            closing = self._closing.is_set
            fetched = await fill_window(fetched, batching, limit, take, closing=closing, opened=opened)
            if pipeline.depth > 1:  # the model is still busy with the round before: records arriving meanwhile join
                fetched = await while_busy(
                    fetched, batching, limit, take, pipeline.model_idle, closing=closing, poll_ms=IDLE_POLL_MS
                )
            fetched, rest = one_batch(fetched, batching)
            self._put_back(model, lane, rest, opened)
        self._resume_drained(model, lane)
        retry_topic = self._names.retry_topic(lane)
        group = self._names.worker_group(model.name, lane)
        on_done = functools.partial(self._bulk_done, model) if lane is Lane.BULK else None
        pipeline.submit(fetched, lane, retry_topic, functools.partial(self._commit, model.name, group), on_done)

    def _put_back(self, model: PoolModel, lane: Lane, rest: Sequence[Fetched], arrived: float | None) -> None:
        """Queue ``rest`` (records past one model batch) first again, those of partitions still owned (a partition
        let go meanwhile is read again by its new owner from the committed offset)."""
        owned = self._owned
        at = time.monotonic() if arrived is None else arrived
        model.queues[lane].extendleft(
            QueuedRecord(at, item)
            for item in reversed(rest)
            if TopicPartition(item.record.topic, item.record.partition) in owned
        )
        if rest:
            self._wake.set()

    @staticmethod
    def _bulk_done(model: PoolModel, busy_s: float) -> None:
        model.pacer.note_bulk_round(busy_s, time.monotonic())

    async def _commit(self, model: str, group: str, fetched: Sequence[Fetched]) -> None:
        """Commit the offsets just past ``fetched`` under the model's group; a failed commit only logs."""
        offsets: dict[TopicPartition, int] = {}
        for item in fetched:
            tp = TopicPartition(item.record.topic, item.record.partition)
            offsets[tp] = max(offsets.get(tp, 0), item.next_offset)
        if not offsets:
            return
        try:
            await self._offsets.commit(group, offsets)
        except (KafkaError, BackendDownError) as exc:
            log.warning("pool: model %s: commit failed (%s); the records will be redelivered", model, exc)


def _keys(tps: Iterable[TopicPartition]) -> set[tuple[str, int]]:
    return {(tp.topic, tp.partition) for tp in tps}
