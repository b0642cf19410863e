"""The assignment watcher against real Redis: news on ``Names.assignments_channel`` naming the worker makes it
read and apply its assignment at once (or take ownership again when the assignment did not change), news for
garbage is skipped, and with the channel silent the poll still applies a change."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from schemas import Names, SchemaError
from schemas.assignment_news import AssignmentNews, NewsKind
from workers.assignment import AssignmentWatcher

#: Long enough that the poll cannot explain anything a test sees (each test ends well before it).
NO_POLL_S = 30.0


class Recorder:
    """The worker side of the watcher: what it was asked to apply and how often to refresh ownership."""

    def __init__(self) -> None:
        self.applied: list[tuple[float, frozenset[str]]] = []
        self.refreshes = 0

    async def apply(self, wanted: frozenset[str]) -> frozenset[str]:
        self.applied.append((time.monotonic(), wanted))
        return wanted

    async def refresh(self) -> None:
        self.refreshes += 1


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s}s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def news(redis_client: Any, names: Names) -> AsyncIterator[list[AssignmentNews]]:
    """Every message published on the channel while the test runs."""
    seen: list[AssignmentNews] = []
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(names.assignments_channel)

    async def read() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                with contextlib.suppress(SchemaError):  # the garbage a test publishes
                    seen.append(AssignmentNews.from_bytes(message["data"]))

    task = asyncio.create_task(read())
    yield seen
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pubsub.aclose()


async def _publish(redis: Any, names: Names, payload: bytes) -> None:
    await redis.publish(names.assignments_channel, payload)


async def test_news_naming_the_worker_applies_its_changed_assignment_before_the_poll_could_run(
    redis_client: Any, names: Names, news: list[AssignmentNews]
) -> None:
    key = names.assignment_key("w1")
    await redis_client.sadd(key, "ma")
    worker = Recorder()
    watcher = AssignmentWatcher(redis_client, names, "w1", NO_POLL_S, worker.apply, refresh=worker.refresh)
    started = time.monotonic()
    watcher.start(frozenset())  # serves nothing yet: the read once subscribed applies {ma}
    try:
        await _until(lambda: len(worker.applied) == 1, "the first read applied")
        assert worker.applied[0][1] == {"ma"}
        assert AssignmentNews.joined("w1") in news  # it announced itself once subscribed, before that read

        await redis_client.sadd(key, "mb")
        await _publish(redis_client, names, AssignmentNews.assigned(["w0", "w1"]).to_bytes())
        await _until(lambda: len(worker.applied) == 2, "the changed assignment applied")
        at, wanted = worker.applied[1]
        assert wanted == {"ma", "mb"}
        assert at < started + NO_POLL_S  # the poll's first turn is NO_POLL_S after the start: only news explains it
        assert worker.refreshes == 0 and watcher.applied == {"ma", "mb"}
    finally:
        await watcher.stop()
    assert watcher.task is None


async def test_news_with_the_assignment_unchanged_refreshes_ownership_and_garbage_is_ignored(
    redis_client: Any, names: Names, news: list[AssignmentNews]
) -> None:
    await redis_client.sadd(names.assignment_key("w1"), "ma")
    worker = Recorder()
    watcher = AssignmentWatcher(redis_client, names, "w1", NO_POLL_S, worker.apply, refresh=worker.refresh)
    watcher.start(frozenset({"ma"}))
    try:
        await _until(lambda: worker.refreshes == 1, "the read once subscribed")  # nothing changed: a refresh
        for payload in (b"\xff\xfe", b"bogus", b"placed:w1"):  # logged and skipped: the listener goes on
            await _publish(redis_client, names, payload)
        # The replicas of ma moved while w1 keeps it: news naming w1 refreshes its ownership.
        await _publish(redis_client, names, AssignmentNews.assigned(["w1", "w2"]).to_bytes())
        await _until(lambda: worker.refreshes == 2, "a refresh on news naming w1")
        assert worker.applied == []
        assert [n.kind for n in news].count(NewsKind.JOINED) == 1
    finally:
        await watcher.stop()


async def test_the_poll_applies_a_change_with_the_channel_silent(redis_client: Any, names: Names) -> None:
    worker = Recorder()
    watcher = AssignmentWatcher(redis_client, names, "w1", 0.2, worker.apply)
    watcher.start(frozenset())
    try:
        await redis_client.sadd(names.assignment_key("w1"), "ma")  # no news published
        await _until(lambda: bool(worker.applied), "the change applied by the poll")
        assert worker.applied[-1][1] == {"ma"}
    finally:
        await watcher.stop()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"assigned:w1,w2", AssignmentNews(NewsKind.ASSIGNED, frozenset({"w1", "w2"}))),
        (b"assigned:", AssignmentNews(NewsKind.ASSIGNED, frozenset())),
        ("joined:pool-1a", AssignmentNews.joined("pool-1a")),
    ],
)
def test_news_decodes(raw: bytes | str, expected: AssignmentNews) -> None:
    assert AssignmentNews.from_bytes(raw) == expected
    assert AssignmentNews.from_bytes(expected.to_bytes()) == expected
