"""A guard for aiokafka's fetch routine: it must not go to sleep on a fetch that has already come back.

aiokafka's background fetch routine (``Fetcher._fetch_requests_routine``) marks a broker "in flight" while a fetch
to it is pending and clears the mark in a done-callback of the fetch task. It waits for the first of: a pending
fetch, a resume of a paused partition, a consumed buffer, a new assignment, or its timer (``consumer_timeout_ms``).
When something else wakes it (a resume, say) in the same event-loop turn as a fetch finishes, it sees the fetch
done before that callback has run: it then plans its next round with the broker still marked in flight, so it
sends no fetch, waits on no resume (it skips every partition of a broker in flight) and sleeps until its timer.
Records then sit unfetched for up to ``consumer_timeout_ms`` (30 s for a pool consumer with dormancy or the
autoscaler's lag probe, 200 ms with aiokafka's default). The guard sees that stale mark (more brokers marked than
fetches pending) and has that round wait no time: the loop runs the callback, and the routine plans again with the
mark cleared.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("fleet.kafka")

#: ``consumer_timeout_ms`` for a consumer holding many paused partitions (a pool lane with dormancy, the autoscaler's
#: lag probe): the longest its fetch routine sleeps with nothing to do. The routine walks every assigned partition
#: (paused ones too) each time it wakes, and aiokafka's default timer (200 ms) woke it 5 times a second over hundreds
#: of sleeping partitions; a resume, seek, new assignment or fetch answer wakes it anyway, and the guard below keeps
#: it from sleeping through a fetch already answered.
SLEEPING_ROUTINE_WAKE_MS = 30_000


def _stale_in_flight(fetcher: Any) -> bool:
    """Whether a broker is marked in flight with no fetch to it pending (each pending task is one broker's)."""
    in_flight = fetcher._in_flight
    if not in_flight:
        return False
    return len(in_flight) > sum(1 for task in fetcher._pending_tasks if not task.done())


def guard_fetch_routine(consumer: Any) -> bool:
    """Install the guard on a started ``AIOKafkaConsumer``'s fetch routine; False (and a warning) when this
    aiokafka lacks the internals it relies on (the routine then behaves as aiokafka's own)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    plan = getattr(fetcher, "_get_actions_per_node", None)
    if (
        plan is None
        or not isinstance(getattr(fetcher, "_in_flight", None), set)
        or not isinstance(getattr(fetcher, "_pending_tasks", None), set)
    ):
        log.warning("aiokafka's fetcher changed: its fetch routine is not guarded against a stale in-flight mark")
        return False
    stale_before = False

    def guarded(assignment: Any) -> Any:
        nonlocal stale_before
        fetches, resets, timeout, invalid_metadata, resume_futures = plan(assignment)
        stale = _stale_in_flight(fetcher)
        if stale and not stale_before:
            # One loop turn runs the pending done-callback; still stale after that is not this race (no busy loop).
            timeout = 0
        stale_before = stale
        return fetches, resets, timeout, invalid_metadata, resume_futures

    fetcher._get_actions_per_node = guarded  # the routine looks it up on the instance every round
    return True
