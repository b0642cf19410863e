"""`PoolConsumer._let_go`: the old owner waits for its model's rounds in hand (being collected, or collected and
in the model's pipeline) only when they took records of the partitions being released (real Redis leases; the
rounds are stand-ins, no Kafka client)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition

from schemas import Lane, Names
from workers.handler import Fetched, RoundOutcome, Turn
from workers.leases import PartitionLeases
from workers.pool import PoolConsumer
from workers.pool_state import OwnedPartition, PoolModel, QueuedRecord
from workers.round import RoundPipeline, RoundRunner
from workers.stats import ModelStats

TOPIC = "m-requests"
LANE = Lane.INTERACTIVE
KEPT, RELEASED = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def _record(tp: TopicPartition) -> Fetched:
    return cast(Fetched, SimpleNamespace(record=SimpleNamespace(topic=tp.topic, partition=tp.partition)))


async def _pool_holding_a_round(
    redis: Any, names: Names, taken: TopicPartition
) -> tuple[Any, PoolModel, asyncio.Event]:
    """A pool consumer (only what `_let_go` uses) owning partitions 0 and 1 of one model, whose round in hand
    took the queued record of ``taken`` and waits for the returned event; a record of each partition is queued."""
    leases = PartitionLeases(redis, names, "w1", 10_000)
    assert await leases.claim([(KEPT.topic, KEPT.partition), (RELEASED.topic, RELEASED.partition)]) == [True, True]
    pool: Any = PoolConsumer.__new__(PoolConsumer)
    pool._settings = SimpleNamespace(drain_timeout_s=60.0)
    pool._leases = leases
    pool._reassign = lambda: None  # no Kafka clients here
    pool._pos, pool._full = {}, set()
    pool._owned = {tp: OwnedPartition("m", LANE, "group") for tp in (KEPT, RELEASED)}
    nothing = cast(Any, None)
    model = PoolModel("m", nothing, nothing, nothing, nothing, nothing)
    pool.models = {"m": model}
    model.queues[LANE].append(QueuedRecord(0.0, _record(taken)))
    finish = asyncio.Event()

    async def round_in_hand() -> None:
        assert [f.record.partition for f in model.take(LANE, 1)] == [taken.partition]
        await finish.wait()

    model.round = asyncio.create_task(round_in_hand())
    await asyncio.sleep(0)  # it takes its record
    model.queues[LANE].extend(QueuedRecord(1.0, _record(tp)) for tp in (KEPT, RELEASED))  # fetched meanwhile
    return pool, model, finish


async def _holders(pool: Any) -> list[str | None]:
    return cast(list[str | None], await pool._leases.holders([(tp.topic, tp.partition) for tp in (KEPT, RELEASED)]))


async def test_a_round_of_another_partition_is_not_waited_for(redis_client: Any, names: Names) -> None:
    pool, model, finish = await _pool_holding_a_round(redis_client, names, taken=KEPT)
    await asyncio.wait_for(pool._let_go([RELEASED]), 10)  # before the fix: waited for the round (60 s)
    assert model.round is not None and not model.round.done()
    assert await _holders(pool) == ["w1", None]
    assert [q.item.record.partition for q in model.queues[LANE]] == [KEPT.partition]  # the released one dropped
    assert list(pool._owned) == [KEPT]
    finish.set()
    await asyncio.wait_for(model.round, 10)


async def test_a_round_holding_a_released_partition_is_waited_for(redis_client: Any, names: Names) -> None:
    pool, model, finish = await _pool_holding_a_round(redis_client, names, taken=RELEASED)
    letting_go = asyncio.create_task(pool._let_go([RELEASED]))
    done, _ = await asyncio.wait({letting_go}, timeout=0.5)
    assert not done  # still waiting for the round: its records of the partition are not committed yet
    assert await _holders(pool) == ["w1", "w1"]
    finish.set()
    await asyncio.wait_for(letting_go, 10)
    assert model.round is not None and model.round.done()
    assert await _holders(pool) == ["w1", None]


class _DeliveringRunner(RoundRunner):
    """A round runner whose rounds leave the model at once and are delivered when the test says."""

    def __init__(self, delivered: asyncio.Event) -> None:
        nothing = cast(Any, None)
        super().__init__("m", nothing, nothing, nothing, nothing, nothing, ModelStats())
        self._delivered = delivered

    async def handle(self, fetched: Sequence[Fetched], lane: Lane, turn: Turn | None = None) -> RoundOutcome:
        if turn is not None:
            await turn()
        return RoundOutcome()

    async def deliver_outcome(self, outcome: RoundOutcome, retry_topic: str) -> float:
        await self._delivered.wait()
        return 0.0

    def observe(self, fetched: Sequence[Fetched], delivered_ms: float, busy_s: float) -> None:
        pass


async def test_a_collected_round_in_delivery_holding_a_released_partition_is_waited_for(
    redis_client: Any, names: Names
) -> None:
    """With pipelined rounds, the round holding the partition may have left the model (no round being collected):
    the lease is released only once that round in the model's pipeline has committed."""
    pool, model, finish = await _pool_holding_a_round(redis_client, names, taken=KEPT)
    finish.set()
    await asyncio.wait_for(model.round, 10)  # nothing being collected
    delivered, committed = asyncio.Event(), []

    async def commit(fetched: Sequence[Fetched]) -> None:
        committed.extend(f.record.partition for f in fetched)

    model.pipeline = RoundPipeline(_DeliveringRunner(delivered), 2)
    model.pipeline.submit([_record(RELEASED)], LANE, "retry", commit)
    letting_go = asyncio.create_task(pool._let_go([RELEASED]))
    done, _ = await asyncio.wait({letting_go}, timeout=0.5)
    assert not done and committed == []  # the round is still delivering
    assert await _holders(pool) == ["w1", "w1"]
    delivered.set()
    await asyncio.wait_for(letting_go, 10)
    assert committed == [RELEASED.partition]
    assert await _holders(pool) == ["w1", None]
