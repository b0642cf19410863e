"""``fleet dlq list`` and ``fleet dlq replay`` through ``main`` against the real broker, Redis and a worker."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from fleet.cli.dlq_entries import replayed_request
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import DeadLetter, ErrorCode, FleetSettings, InferenceRequest, ModelRegistry, Names, now_ms
from schemas.constants import HEADER_MODEL
from schemas.topics import ensure_model_topics
from tests.workers.conftest import make_request, read_replies
from workers import Worker, WorkerSettings

from .cli_util import connection_args, run_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_args(fleet_settings: FleetSettings, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace (redis_client cleans its keys afterwards)."""
    return connection_args(fleet_settings, tmp_path / "home", no_gateway=True)


async def fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and everything ``fleet argv`` printed."""
    code, out, err = await run_fleet(capsys, *argv)
    return code, out + err


async def test_list_and_replay(
    fleet_args: list[str],
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny")
    stream = names.reply_stream("dlq-test")
    created = now_ms() - 60_000  # it failed a minute ago, with a 30 s budget
    failed = dataclasses.replace(
        make_request(stream, np.ones((1, 16), np.float32), rid="lost-1"),
        attempt=3,
        created_ms=created,
        deadline_ms=created + 30_000,
    )
    letter = DeadLetter(
        ErrorCode.MODEL_ERROR,
        "failed on all 3 tries: RuntimeError: boom",
        names.bulk_topic("tiny"),
        0,
        7,
        failed.to_bytes(),
    )
    bad_request = DeadLetter(ErrorCode.UNDECODABLE, "not msgpack", names.request_topic("tiny"), 1, 3, b"\xc1")
    other = dataclasses.replace(letter, topic=names.request_topic("other"), value=b"other's request")
    lost2 = dataclasses.replace(failed, id="lost-2")
    untagged = DeadLetter(ErrorCode.MODEL_ERROR, "no header", names.request_topic("tiny"), 1, 4, lost2.to_bytes())
    tiny, tagged_other = [(HEADER_MODEL, b"tiny")], [(HEADER_MODEL, b"other")]
    producer = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await producer.start()
    try:  # one shared topic: the dead letters of both models, interleaved
        for value, headers in (
            (letter.to_bytes(), tiny),
            (other.to_bytes(), tagged_other),
            (b"\x93not a dead letter", tiny),
            (bad_request.to_bytes(), tiny),
            (b"\x93no header, no model", []),
        ):
            await producer.send_and_wait(names.dlq_topic, value, partition=0, headers=headers)
        # a record without the header counts for the model of its request
        await producer.send_and_wait(names.dlq_topic, untagged.to_bytes(), partition=1)
    finally:
        await producer.stop()
    await redis_client.set(names.result_key("lost-1"), b"the error reply")

    code, out = await fleet(capsys, "dlq", "list", "tiny", *fleet_args)
    assert code == 0, out
    lines = out.splitlines()
    row = next(line for line in lines if "lost-1" in line)
    assert "MODEL_ERROR" in row and " 3 " in row and "RuntimeError: boom" in row and row.startswith("0:0 ")
    assert any(line.startswith("0:2 ") and "undecodable dead letter" in line for line in lines)
    assert any(line.startswith("0:3 ") and "undecodable request" in line and "UNDECODABLE" in line for line in lines)
    assert any(line.startswith("1:0 ") and "no header" in line for line in lines)
    assert not any(line.startswith(("0:1 ", "0:4 ")) for line in lines)  # another model's; nobody's
    assert "4 dead letter(s) of tiny" in out
    code, out = await fleet(capsys, "dlq", "list", "other", *fleet_args)
    assert code == 0 and "1 dead letter(s) of other" in out and "0:1 " in out and "0:0 " not in out, out

    settings = WorkerSettings(models=("tiny",), fleet=fleet_settings, heartbeat_interval_s=0.5)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        code, out = await fleet(capsys, "dlq", "replay", "tiny", "--id", "lost-1", *fleet_args)
        assert code == 0 and f"-> {names.bulk_topic('tiny')} (replay #1)" in out, out
        (reply,) = await read_replies(redis_client, stream, 1)
        assert reply.id == "lost-1" and reply.error is None, reply.error
        assert await redis_client.get(names.result_key("lost-1")) != b"the error reply"

        code, out = await fleet(capsys, "dlq", "replay", "tiny", "--id", "lost-1", *fleet_args)
        assert code == 1 and "replayed 1x already" in out, out
        code, out = await fleet(capsys, "dlq", "replay", "tiny", "--all", "--force", *fleet_args)
        assert code == 0 and "(replay #2)" in out and out.count("skipped") == 2, out
        replies = await read_replies(redis_client, stream, 3)  # 0:0 again and 1:0
        assert sorted(r.id for r in replies) == ["lost-1", "lost-1", "lost-2"]
        assert all(r.error is None for r in replies), [r.error for r in replies]
    assert await redis_client.hgetall(names.dlq_replays_key("tiny")) == {b"0:0": b"2", b"1:0": b"1"}
    assert await redis_client.exists(names.dlq_replays_key("other")) == 0

    code, out = await fleet(capsys, "dlq", "list", "tiny", "--limit", "1", *fleet_args)
    assert code == 0 and "newest 1 shown" in out
    code, out = await fleet(capsys, "dlq", "list", "tiny", *fleet_args)
    row = next(line for line in out.splitlines() if "lost-1" in line)
    assert row.split()[4] == "2", row  # REPLAYED column
    code, out = await fleet(capsys, "dlq", "replay", "tiny", "--id", "nope", *fleet_args)
    assert code == 1 and "not found: nope" in out


def test_replay_resets_the_try_and_keeps_the_time_budget() -> None:
    request = InferenceRequest("r", "m", "1", (), attempt=3, not_before_ms=5.0, created_ms=1000.0, deadline_ms=1500.0)
    again = replayed_request(request, at_ms=9000.0)
    assert (again.attempt, again.not_before_ms, again.created_ms, again.deadline_ms) == (1, None, 9000.0, 9500.0)
    assert replayed_request(dataclasses.replace(request, deadline_ms=None), 9000.0).deadline_ms is None


async def test_list_of_a_model_without_dead_letters(
    fleet_args: list[str], capsys: pytest.CaptureFixture[str], names: Names
) -> None:
    code, out = await fleet(capsys, "dlq", "list", "nothing-here", *fleet_args)
    assert code == 0 and f"nothing-here: no dead letters on {names.dlq_topic}" in out
