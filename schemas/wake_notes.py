"""Messages on ``Names.wake_channel``: a publisher names the partition a record just landed on, so a pool worker
that left that partition out of its fetches (dormant) fetches it at once. Text, readable with
``redis-cli SUBSCRIBE``::

    fleet.requests.iris:1    a record landed on partition 1 of topic fleet.requests.iris

Fire and forget: a lost note costs only the wait for the worker's next sweep.
"""

from __future__ import annotations


def wake_note(topic: str, partition: int) -> str:
    """The note naming ``topic``'s ``partition``."""
    return f"{topic}:{partition}"


def read_wake_note(raw: bytes | str) -> tuple[str, int] | None:
    """The (topic, partition) a note names; None for anything else (a receiver ignores it)."""
    note = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    topic, _, partition = note.rpartition(":")
    if not topic or not partition.isdigit():
        return None
    return topic, int(partition)
