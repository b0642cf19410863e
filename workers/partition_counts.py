"""A pool worker's view of its topics' partition counts, asked of the broker as seldom as will do.

A topic not seen yet is asked at once (a model just assigned); every count is asked again after ``ttl_s``
(partitions can be added). A topic the broker does not have is asked again only every ``missing_s``: most
models' bulk-lane topics never exist (they are created with a model's first bulk request), and asking for
hundreds of them every heartbeat was a Metadata request naming every one. So a bulk topic created meanwhile is
consumed within ``missing_s`` of its creation (its requests wait on the topic meanwhile;
``FLEET_WORKER_POOL_MISSING_TOPIC_RECHECK_S``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable

#: Seconds a topic's partition count is trusted before it is asked again (partitions can be added).
COUNTS_TTL_S = 60.0
#: Seconds before a topic the broker did not have is asked for again (a bulk topic comes on first use; the
#: worker setting ``pool_missing_topic_recheck_s`` sets it).
MISSING_TOPIC_RECHECK_S = 10.0


class PartitionCounts:
    """Partition counts of topics, asked through ``ask`` (topics -> {topic: count}, missing ones left out)."""

    def __init__(
        self,
        ask: Callable[[list[str]], Awaitable[dict[str, int]]],
        *,
        ttl_s: float = COUNTS_TTL_S,
        missing_s: float = MISSING_TOPIC_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self.ttl_s = ttl_s
        self.missing_s = missing_s
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._counts_at = clock()
        self._missing: dict[str, float] = {}  # topic -> when the broker last said it has no such topic

    async def get(self, topics: Iterable[str]) -> dict[str, int]:
        """The partition count of each of ``topics`` the broker has (as last asked); raises what ``ask`` raises."""
        topics = list(topics)
        now = self._clock()
        if now - self._counts_at > self.ttl_s:
            self._counts, self._counts_at = {}, now
            wanted = set(topics)
            self._missing = {t: at for t, at in self._missing.items() if t in wanted}
        due = [
            t for t in topics if t not in self._counts and now - self._missing.get(t, -math.inf) >= self.missing_s
        ]
        if due:
            found = await self._ask(due)
            self._counts.update(found)
            for topic in due:
                if topic in found:
                    self._missing.pop(topic, None)
                else:
                    self._missing[topic] = now
        return {t: self._counts[t] for t in topics if t in self._counts}
