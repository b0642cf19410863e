"""Lag collector: per model and partition, the log-end offset, the worker group's committed offset, the lag
and smoothed arrival and completion rates, for both lanes (request topic and bulk topic, each with its group).
Retries are counted once they are due: until then they wait on the namespace's shared retry topics, which no
model's workers could serve yet, and the gateways' relay then puts each on its model's request topic, where it
is lag like any request (so a model with no worker is scaled up for its retries too).

Only standard Kafka requests are used, chosen so the numbers are right on Apache Kafka and on the local
broker alike (see KAFKA_LOCAL.md):

* partitions: Metadata (``list_topics`` first, because describing a missing topic can auto-create it; the list
  is read again only for topics not asked before, every ``missing_refresh_s`` while some are missing (a bulk
  topic comes with a model's first bulk request; most never exist) or as soon as a wake note names a missing
  one (`topic_written`), and every ``metadata_refresh_s``);
* log-end offsets (``LagMethod``, chosen once at start from ``FLEET_KAFKA_BROKER``, with ``auto`` from the
  cluster id the cluster reports): on Kafka, ListOffsets(latest) for every partition in one batched call
  (one request per leader broker; when it fails, one call per topic, so a topic without a leader fails only
  its own partitions). On the embedded broker ListOffsets answers the start of the last batch, so the log
  end is the high watermark that every Fetch response carries instead: a group-less consumer is assigned
  every partition, seeks to the last known log end (always inside the log), fetches at most one byte with a
  short wait, and reads ``highwater()``; between rounds its partitions are paused so it fetches nothing;
* committed offsets: OffsetFetch with an explicit partition list (``list_consumer_group_offsets``);
* log start: ListOffsets(earliest), so a partition without a commit counts its whole retained log as lag.

Lag = log end - max(committed, log start), clamped at 0; a commit beyond the log end is reported as an
anomaly and counts as no lag (it must never look like a huge backlog).

Cost per round, so that idle models cost almost nothing: no Metadata request (topic partitions are
described once, and again every ``metadata_refresh_s``; the topic list as above), one ListOffsets (or on the
embedded broker one Fetch) per broker for every partition, and ListOffsets(earliest) and OffsetFetch only for
partitions that may have moved: one whose log end did not move and that had no lag keeps its committed offset
and log start from the last round. A partition without a fresh log end within ``probe_timeout_s`` keeps its last
known one (a warning says how many), and one never answered is left out of its model's load: the round decides
on the partitions it has data for instead of failing as a whole (it fails only when no partition answered).

A quiet partition (no lag, its log end where it was, its smoothed rates decayed to zero: below ``RATE_FLOOR``
they are taken as zero) needs nothing computed: a model whose partitions are all quiet and did not move gets the
same `ModelLoad` object as last round, so the rest of a round (the policy, the metrics) can tell it apart at no
cost, and a round's work beyond the log-end probe follows the partitions that moved. The probe itself covers a
quiet partition of a model that has workers (``relax``: they consume it whatever the autoscaler measures) only
every ``quiet_probe_rounds`` rounds, a share of them each round; every other partition (lag or arrivals, never
measured, or of a model at zero, whose first request must wake it within a round) is probed every round. A
record arriving on a partition that is not probed this round is seen up to ``quiet_probe_rounds`` rounds later;
its arrival rate is reckoned over the time since the partition's last fresh log end.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from common.fetch_wake import SLEEPING_ROUTINE_WAKE_MS, guard_fetch_routine
from schemas import FleetError, FleetSettings, KafkaSettings, Lane, Names
from schemas.eventloop import AsyncService
from schemas.topics import cluster_info

from .errors import CollectorError
from .signals import ModelLoad, PartitionLoad, ewma

log = logging.getLogger("fleet.autoscaler")

#: Records/s below which a smoothed rate of a partition that did not move is taken as zero (it decays
#: geometrically, never reaching zero by itself).
RATE_FLOOR = 1e-3


class LagMethod(enum.Enum):
    """How the collector reads log-end offsets."""

    #: Batched ListOffsets(latest): right on Kafka and compatible brokers.
    LIST_OFFSETS = "list_offsets"
    #: The high watermark of a one-byte Fetch per partition: the embedded broker, whose ListOffsets is wrong.
    FETCH_PROBE = "fetch_probe"


def lag_method(kafka: KafkaSettings, cluster_id: str | None) -> LagMethod:
    """The log-end method for a cluster that reports ``cluster_id`` (``FLEET_KAFKA_BROKER`` decides unless auto)."""
    return LagMethod.FETCH_PROBE if kafka.embedded(cluster_id) else LagMethod.LIST_OFFSETS


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True)
class _Sample:
    at: float
    log_end: int
    consumed: int
    arrival: float | None
    completion: float | None
    committed: int | None = None
    log_start: int = 0

    @property
    def settled(self) -> bool:
        """No lag: while the log end stays, the committed offset cannot move either."""
        return self.consumed >= self.log_end

    @property
    def quiet(self) -> bool:
        """Settled with both rates known and zero: sampling it again while its log end stays changes nothing."""
        return self.consumed >= self.log_end and self.arrival == 0.0 and self.completion == 0.0


@dataclass(frozen=True)
class RoundCost:
    """What one `LagCollector.collect` asked the brokers (for tests and the autoscaler's logs)."""

    #: Partitions whose log end was asked (one ListOffsets or Fetch per broker).
    partitions: int = 0
    #: Partitions whose log end or lag may have moved: their log start and committed offsets were read.
    moving: int = 0
    #: OffsetFetch requests sent (one per model and lane with a moving partition).
    offset_fetches: int = 0
    #: Partitions without a fresh log end (their last known one was used, or they were left out).
    stale: int = 0
    #: How the log ends were read.
    method: LagMethod = LagMethod.FETCH_PROBE
    #: Partitions sampled again (not quiet, or their log end moved); the others kept their last sample.
    sampled: int = 0
    #: Models whose load was made again (the others' is last round's object).
    rebuilt: int = 0


class LagCollector(AsyncService):
    """Measures the request topics of models; one instance per autoscaler (``async with`` or start/stop)."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        half_life_s: float = 5.0,
        probe_timeout_s: float = 3.0,
        metadata_refresh_s: float = 30.0,
        missing_refresh_s: float = 5.0,
        quiet_probe_rounds: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_waiting: Callable[[str, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.half_life_s = half_life_s
        self.probe_timeout_s = probe_timeout_s
        self.metadata_refresh_s = metadata_refresh_s
        self.missing_refresh_s = missing_refresh_s
        #: A quiet partition of a relaxed model (`relax`) has its log end probed every this many rounds.
        self.quiet_probe_rounds = max(1, quiet_probe_rounds)
        self._relaxed: frozenset[str] = frozenset()
        #: Called with (topic, partition) of each partition whose records arrived since its last sample while its
        #: committed offset stayed, or first measured with lag (`common.wake.WakeNotes.note`: a pool worker may have
        #: left it out of its fetches, and records from raw Kafka producers come with no other note).
        self._on_waiting = on_waiting
        self._round = 0
        self._clock = clock
        self._described: dict[str, list[int]] = {}
        self._described_at = -float("inf")
        self._existing: frozenset[str] = frozenset()  # the cluster's topics, as last listed
        self._listed: frozenset[str] = frozenset()  # every topic asked for since then
        self._listed_at = -float("inf")
        self._written_missing = False  # a wake note named a topic asked for and not found: list them again
        #: What the last `collect` asked the brokers.
        self.last_round = RoundCost()
        self._stale = 0
        self._state = _State.NEW
        self._admin: AIOKafkaAdminClient | None = None
        self._probe: AIOKafkaConsumer | None = None
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._assigned_from: list[TopicPartition] | None = None  # the list ``_assigned`` was last checked against
        self._known_end: dict[TopicPartition, int] = {}
        self._fresh_at: dict[TopicPartition, float] = {}  # the last round that had a fresh log end of it
        self._samples: dict[TopicPartition, _Sample] = {}
        self._anomalies: dict[TopicPartition, str] = {}
        # What a round over the same models reuses: their topics, partitions and loads.
        self._models: list[str] = []
        self._topics: list[str] = []
        self._topic_model: dict[str, str] = {}
        self._layout: dict[str, list[int]] | None = None  # the partitions kept (None: work them out again)
        self._tps_of: dict[str, list[int]] | None = None  # the partitions ``_tps`` and ``_loads`` are of
        self._tps: list[TopicPartition] = []
        self._loads: dict[str, ModelLoad] = {}
        self._fresh: frozenset[TopicPartition] = frozenset()  # the partitions with a fresh log end this round
        #: How log ends are read (decided in ``start``).
        self.method = LagMethod.FETCH_PROBE

    async def start(self) -> None:
        """Connect the admin client and the probe consumer."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"LagCollector cannot start from state {self._state.value}")
        self._state = _State.STARTED
        kafka = self.settings.kafka
        try:
            self._admin = AIOKafkaAdminClient(**kafka.client_kwargs())
            await self._admin.start()
            self._probe = AIOKafkaConsumer(
                **kafka.client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                # A seek outside the log (topic recreated or trimmed) resets to its start: always valid.
                auto_offset_reset="earliest",
                # 0 would return no data and, on the local broker, no answer worth having.
                fetch_max_wait_ms=max(1, min(kafka.fetch_max_wait_ms, 50)),
                fetch_max_bytes=1,
                max_partition_fetch_bytes=1,
                # Its partitions sit paused between rounds: aiokafka's default 200 ms timer walked every partition
                # of every model 5 times a second (a third of an idle autoscaler's CPU with 1,000 models).
                consumer_timeout_ms=SLEEPING_ROUTINE_WAKE_MS,
            )
            await self._probe.start()
            guard_fetch_routine(self._probe)  # no 30 s sleep on a fetch already answered (see common.fetch_wake)
            cluster_id = (await cluster_info(kafka)).cluster_id if kafka.broker == "auto" else None
        except (KafkaError, FleetError) as exc:
            await self.stop()
            raise CollectorError("connect", exc) from exc
        self.method = lag_method(kafka, cluster_id)
        log.info("lag collector reads log ends by %s", self.method.value, extra={"cluster_id": cluster_id})

    async def stop(self) -> None:
        """Close both clients; idempotent."""
        self._state = _State.STOPPED
        probe, admin = self._probe, self._admin
        self._probe = self._admin = None
        if probe is not None:
            await probe.stop()
        if admin is not None:
            await admin.close()

    def relax(self, models: Iterable[str]) -> None:
        """From the next round on, probe the quiet partitions of ``models`` only every ``quiet_probe_rounds``
        rounds (each round takes its share of them): models that have workers, which consume their partitions
        whatever the autoscaler measures. A partition with lag or arrivals, one never measured and every
        partition of another model (at zero: its first request must wake it) is probed every round."""
        self._relaxed = frozenset(models)

    def topic_written(self, topic: str) -> None:
        """A fleet publisher wrote to ``topic`` (its wake note): when this collector asked for it and did not find
        it (a bulk-lane topic created by its first request), the next round lists the topics again instead of
        waiting for ``missing_refresh_s``."""
        if topic in self._listed and topic not in self._existing:
            self._written_missing = True

    async def collect_one(self, model: str) -> ModelLoad:
        """The load of one model (see `collect`)."""
        return (await self.collect([model]))[model]

    async def collect(self, models: Sequence[str]) -> dict[str, ModelLoad]:
        """The load of each model; a model whose topic does not exist gets an empty load."""
        admin, probe = self._admin, self._probe
        if admin is None or probe is None or self._state is not _State.STARTED:
            raise RuntimeError("LagCollector is not started")
        if list(models) != self._models:
            self._models = list(models)
            self._topics = [self.names.request_topic(m, lane) for m in models for lane in Lane]
            self._topic_model = {t: m for m in models for t in (self.names.request_topic(m, lane) for lane in Lane)}
            self._loads, self._layout = {}, None
        try:
            partitions = await self._partitions(admin, self._topics)
            if partitions is not self._tps_of:
                self._tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
                self._tps_of, self._loads = partitions, {}
            tps = self._tps
            due = self._due(tps)
            log_ends = await self._log_ends(probe, tps, due)
            samples = self._samples
            # Partitions to sample again: all but the quiet ones whose log end stayed.
            touched = [
                tp
                for tp, end in log_ends.items()
                if (sample := samples.get(tp)) is None or sample.log_end != end or not sample.quiet
            ]
            # Partitions that may have moved; the others keep last round's committed offset and log start.
            moving = [tp for tp in touched if not self._unchanged(tp, log_ends[tp])]
            starts: dict[TopicPartition, int] = {tp: samples[tp].log_start for tp in touched if tp in samples}
            committed: dict[TopicPartition, int | None] = {tp: samples[tp].committed for tp in touched if tp in samples}
            if moving:
                starts.update(await probe.beginning_offsets(moving))
            by_topic: dict[str, list[TopicPartition]] = {}
            for tp in moving:
                by_topic.setdefault(tp.topic, []).append(tp)
            by_lane = {
                (m, lane): by_topic[self.names.request_topic(m, lane)]
                for m in dict.fromkeys(self._topic_model[t] for t in by_topic)
                for lane in Lane
                if self.names.request_topic(m, lane) in by_topic
            }
            for offsets in await asyncio.gather(
                *(self._committed(admin, m, lane, wanted) for (m, lane), wanted in by_lane.items())
            ):
                committed.update(offsets)
        except KafkaError as exc:
            raise CollectorError(f"models {list(models)}", exc) from exc
        now = self._clock()
        rebuild = {self._topic_model[tp.topic] for tp in touched}
        if len(self._loads) < len(self._models):
            rebuild.update(m for m in self._models if m not in self._loads)
        for model in rebuild:
            self._loads[model] = self._model_load(model, partitions, log_ends, committed, starts, now)
        for tp in self._fresh:
            self._fresh_at[tp] = now
        self._round += 1
        self.last_round = RoundCost(
            len(due), len(moving), len(by_lane), self._stale, self.method, len(touched), len(rebuild)
        )
        return dict(self._loads)

    def _model_load(
        self,
        model: str,
        partitions: dict[str, list[int]],
        log_ends: dict[TopicPartition, int],
        committed: dict[TopicPartition, int | None],
        starts: dict[TopicPartition, int],
        now: float,
    ) -> ModelLoad:
        """Sample every partition of ``model`` (a quiet one's committed offset and log start are its sample's)."""
        samples, fresh = self._samples, self._fresh

        def sampled(tp: TopicPartition) -> PartitionLoad:
            sample = samples.get(tp)
            if sample is not None and sample.quiet and tp not in fresh and tp not in committed:
                # Not probed this round: as of its last probe it was quiet, and its sample stays that of then.
                return PartitionLoad(
                    tp.partition, sample.log_end, sample.committed, 0, 0.0, 0.0, True, self._anomalies.get(tp, "")
                )
            if tp not in committed and sample is not None:
                return self._partition_load(tp, log_ends[tp], sample.committed, sample.log_start, now)
            return self._partition_load(tp, log_ends[tp], committed.get(tp), starts.get(tp, 0), now)

        topic = self.names.request_topic(model)
        parts, bulk = (
            tuple(
                sampled(tp)
                for tp in (TopicPartition(lane_topic, p) for p in partitions.get(lane_topic, ()))
                if tp in log_ends
            )
            for lane_topic in (topic, self.names.bulk_topic(model))
        )
        return ModelLoad(
            model=model,
            topic=topic,
            group=self.names.worker_group(model),
            partitions=parts,
            at=now,
            rates_known=all(p.rates_known for p in parts + bulk) if parts else False,
            topic_exists=topic in partitions,
            bulk_partitions=bulk,
        )

    def _due(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """The partitions whose log end this round probes: all but the quiet ones of relaxed models that are
        not in this round's share (index modulo ``quiet_probe_rounds``)."""
        every, relaxed = self.quiet_probe_rounds, self._relaxed
        if every <= 1 or not relaxed:
            return tps
        phase, samples, owner = self._round % every, self._samples, self._topic_model
        return [
            tp
            for i, tp in enumerate(tps)
            if i % every == phase
            or owner[tp.topic] not in relaxed
            or (sample := samples.get(tp)) is None
            or not sample.quiet
        ]

    def _unchanged(self, tp: TopicPartition, log_end: int) -> bool:
        """True when ``tp`` had no lag last round and its log end has not moved since."""
        sample = self._samples.get(tp)
        return sample is not None and sample.log_end == log_end and sample.settled

    async def _partitions(self, admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, list[int]]:
        """Partitions of the existing ``topics``: the same object as last time while none was listed, described
        or asked for anew (``_layout``, kept once every existing topic was described)."""
        # Describing a missing topic may auto-create it (with the broker's default partition count):
        # only describe the ones that exist. Known topics are described again every metadata_refresh_s.
        listed_before, existing = self._existing, await self._topic_list(admin, topics)
        kept = self._layout
        if self._clock() - self._described_at >= self.metadata_refresh_s:
            self._described, self._described_at = {}, self._clock()
        elif kept is not None and existing is listed_before:
            return kept
        wanted = [t for t in topics if t in existing]
        self._described = {t: ps for t, ps in self._described.items() if t in existing}
        unknown = [t for t in wanted if t not in self._described]
        if unknown:
            for entry in await admin.describe_topics(unknown):
                if entry["error_code"] == 0 and entry["topic"] in unknown:
                    self._described[entry["topic"]] = sorted(p["partition"] for p in entry["partitions"])
        found = {t: self._described[t] for t in wanted if t in self._described}
        # One left undescribed is described again next round: nothing is kept then.
        complete = len(found) == len(wanted)
        if kept is not None and complete and found == kept:
            return kept
        self._layout = found if complete else None
        return found

    async def _topic_list(self, admin: AIOKafkaAdminClient, topics: list[str]) -> frozenset[str]:
        """The cluster's topics, listed again only when ``topics`` has one not asked for before, some are missing
        and the list is ``missing_refresh_s`` old, or it is ``metadata_refresh_s`` old (a Metadata request
        naming every topic of the cluster: its cost grows with the models)."""
        now, asked = self._clock(), frozenset(topics)
        age = now - self._listed_at
        if (
            not asked <= self._listed
            or age >= self.metadata_refresh_s
            or (not asked <= self._existing and (self._written_missing or age >= self.missing_refresh_s))
        ):
            self._written_missing = False
            self._existing = frozenset(await admin.list_topics())
            self._listed, self._listed_at = asked, now
        return self._existing

    async def _log_ends(
        self, probe: AIOKafkaConsumer, tps: list[TopicPartition], due: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """A log end for every partition of ``tps``: fresh (``self.method``) for those ``due``, the last known one
        for the others; a partition without a fresh answer in ``probe_timeout_s`` gets its last known log end, or
        is left out when it has none. CollectorError when no partition due at all answered."""
        self._fresh = frozenset()
        if not tps:
            return {}
        if tps is not self._assigned_from and frozenset(tps) != self._assigned:
            if self.method is LagMethod.FETCH_PROBE:
                probe.assign(tps)
            self._assigned = frozenset(tps)
            # Forget partitions no longer measured (deleted topics, removed models).
            for table in (self._known_end, self._samples, self._anomalies, self._fresh_at):
                for gone in [tp for tp in table if tp not in self._assigned]:
                    del table[gone]
        self._assigned_from = tps
        if not due:
            self._stale = 0
            return self._known_end
        if self.method is LagMethod.LIST_OFFSETS:
            fresh = await self._list_offsets(probe, due)
        else:
            fresh = await self._fetch_highwaters(probe, due)
        pending = [tp for tp in due if tp not in fresh] if len(fresh) < len(due) else []
        if pending and len(pending) == len(due):
            raise CollectorError(f"no log end within {self.probe_timeout_s}s for {pending[:5]}")
        self._stale = len(pending)
        if pending:
            log.warning(
                "no fresh log end within %gs for %d of %d partitions (e.g. %s): their last known log "
                "end is used, those never measured are left out this round",
                self.probe_timeout_s,
                len(pending),
                len(due),
                pending[:3],
            )
        self._known_end.update(fresh)
        self._fresh = frozenset(fresh)
        return self._known_end  # only assigned partitions are in it (the others were forgotten above)

    async def _list_offsets(self, probe: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """ListOffsets(latest) for ``tps`` in one batched call; when that fails or times out, one call per topic
        (a topic whose leader is gone fails only its partitions, which are left out of the answer)."""
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                return {tp: int(end) for tp, end in (await probe.end_offsets(tps)).items()}
        except (KafkaError, TimeoutError) as exc:
            log.debug("batched ListOffsets failed (%s); asking per topic", exc)
        by_topic: dict[str, list[TopicPartition]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, []).append(tp)

        async def one(topic_tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            try:
                async with asyncio.timeout(self.probe_timeout_s):
                    return {tp: int(end) for tp, end in (await probe.end_offsets(topic_tps)).items()}
            except (KafkaError, TimeoutError):
                return {}

        fresh: dict[TopicPartition, int] = {}
        for answer in await asyncio.gather(*(one(group) for group in by_topic.values())):
            fresh.update(answer)
        return fresh

    async def _fetch_highwaters(
        self, probe: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """High watermark of a fresh Fetch response for every partition that answers within ``probe_timeout_s``
        (one Fetch per broker for all of them)."""
        probe.resume(*tps)
        for tp in tps:
            probe.seek(tp, self._known_end.get(tp, 0))
        # Fetch responses stamp the partition with wall-clock ms; a stamp at or after this instant belongs
        # to a fetch sent after the seeks above (responses to older fetch offsets are discarded).
        since_ms = int(time.time() * 1000)
        deadline = time.monotonic() + self.probe_timeout_s
        wait_ms = max(5, 2 * self.settings.kafka.fetch_max_wait_ms)
        pending = list(tps)
        try:
            while True:
                await probe.getmany(*tps, timeout_ms=wait_ms, max_records=1)  # records themselves are not used
                # Only those still waiting are looked at again (a fresh stamp stays fresh).
                pending = [tp for tp in pending if (probe.last_poll_timestamp(tp) or -1) < since_ms]
                if not pending or time.monotonic() > deadline:
                    break
        finally:
            probe.pause(*tps)  # no background fetching between rounds
        stale = set(pending)
        fresh: dict[TopicPartition, int] = {}
        for tp in tps:
            if tp not in stale:
                end = probe.highwater(tp)
                fresh[tp] = int(end) if end is not None else 0
        return fresh

    async def _committed(
        self, admin: AIOKafkaAdminClient, model: str, lane: Lane, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        if not tps:
            return {}
        # The explicit partition list matters: without it some brokers drop the connection.
        offsets: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(
            self.names.worker_group(model, lane), partitions=tps
        )
        result: dict[TopicPartition, int | None] = {}
        for tp in tps:
            meta = offsets.get(tp)
            result[tp] = int(meta.offset) if meta is not None and meta.offset >= 0 else None
        return result

    def _partition_load(
        self, tp: TopicPartition, log_end: int, committed: int | None, log_start: int, now: float
    ) -> PartitionLoad:
        log_start = min(max(0, log_start), log_end)
        consumed = log_start if committed is None else max(committed, log_start)
        anomalies: list[str] = []
        if consumed > log_end:
            anomalies.append(f"committed {consumed} beyond log end {log_end}; lag taken as 0")
            consumed = log_end
        previous = self._samples.get(tp)
        arrival = completion = None
        # A quiet partition was not sampled again in the rounds since its sample: as of the last round that had a
        # fresh log end of it, it was the same sample (its rates zero) taken then.
        since = -math.inf if previous is None else max(previous.at, self._fresh_at.get(tp, previous.at))
        if previous is not None and now > since:
            dt = now - since
            grown, done = log_end - previous.log_end, consumed - previous.consumed
            if grown < 0:
                anomalies.append(f"log end went back {previous.log_end} -> {log_end} (topic recreated?)")
            if done < 0:
                anomalies.append(f"committed offset went back {previous.consumed} -> {consumed}")
            arrival = ewma(previous.arrival, max(0, grown) / dt, dt, self.half_life_s)
            completion = ewma(previous.completion, max(0, done) / dt, dt, self.half_life_s)
            if grown == 0 and arrival < RATE_FLOOR:
                arrival = 0.0
            if done == 0 and completion < RATE_FLOOR:
                completion = 0.0
        elif previous is not None:
            arrival, completion = previous.arrival, previous.completion
        self._samples[tp] = _Sample(now, log_end, consumed, arrival, completion, committed, log_start)
        if self._on_waiting is not None and log_end > consumed:
            if previous is None or (log_end > previous.log_end and consumed == previous.consumed):
                self._on_waiting(tp.topic, tp.partition)
        anomaly = "; ".join(anomalies)
        if anomaly != self._anomalies.get(tp, ""):
            if anomaly:
                log.warning("lag anomaly on %s[%d]: %s", tp.topic, tp.partition, anomaly)
            self._anomalies[tp] = anomaly
        return PartitionLoad(
            partition=tp.partition,
            log_end=log_end,
            committed=committed,
            lag=max(0, log_end - consumed),
            arrival_rate=arrival or 0.0,
            completion_rate=completion or 0.0,
            anomaly=anomaly,
            rates_known=arrival is not None,
        )
