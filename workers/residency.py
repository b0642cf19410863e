"""Which models a worker holds in memory: least-recently-used order under a memory budget (pure logic).

A worker may be *assigned* models whose sizes add up to ``budget x (1 + overcommit/100)`` but only
holds what fits ``budget`` at once. :class:`Residency` keeps the resident models ordered by last use
and, for a model to load, plans which ones to evict: the least recently used first, never one that is
*pinned* (a batch is running on it). No I/O and no clock of its own: callers pass the time, so the
rules are tested with tables (``tests/workers/test_residency.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: A resident model version: (model, version).
Key = tuple[str, str]

MB = 1 << 20


def megabytes(size_bytes: int | float) -> str:
    """``size_bytes`` as MB with one decimal, for messages."""
    return f"{size_bytes / MB:.1f}"


@dataclass(frozen=True, slots=True)
class Capacity:
    """A worker's memory budget (``None`` = unlimited) and its overcommit percentage."""

    budget_bytes: int | None
    overcommit_pct: float = 10.0

    @property
    def assignable_bytes(self) -> int | None:
        """Most the sizes of the models assigned to the worker may add up to (budget x (1 + overcommit))."""
        if self.budget_bytes is None:
            return None
        return int(self.budget_bytes * (1 + self.overcommit_pct / 100))

    def too_large(self, size_bytes: int) -> str | None:
        """Why a model of ``size_bytes`` can never be resident here, or None when it can."""
        if self.budget_bytes is not None and size_bytes > self.budget_bytes:
            return f"needs {megabytes(size_bytes)} MB, budget {megabytes(self.budget_bytes)} MB"
        return None

    def overcommitted(self, sizes: dict[str, int]) -> str | None:
        """Why the models of ``sizes`` (name -> bytes) cannot all be assigned here, or None when they can."""
        limit = self.assignable_bytes
        total = sum(sizes.values())
        if limit is None or total <= limit:
            return None
        return (
            f"the models need {megabytes(total)} MB together, more than the budget "
            f"{megabytes(self.budget_bytes or 0)} MB + {self.overcommit_pct:g}% overcommit = {megabytes(limit)} MB"
        )


@dataclass(slots=True)
class Resident:
    """One resident model version."""

    size_bytes: int
    loaded_ms: float
    last_used_ms: float
    pins: int = 0


class Residency:
    """Resident models by last use (oldest first) against a budget; plans evictions."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Key, Resident] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: Key) -> Resident | None:
        """The entry of ``key`` or None."""
        return self._entries.get(key)

    @property
    def keys(self) -> list[Key]:
        """Resident keys, least recently used first."""
        return list(self._entries)

    @property
    def used_bytes(self) -> int:
        """Sum of the resident sizes."""
        return sum(entry.size_bytes for entry in self._entries.values())

    def free_bytes(self) -> int | None:
        """Room left under the budget (None = unlimited; negative when over it)."""
        budget = self.capacity.budget_bytes
        return None if budget is None else budget - self.used_bytes

    def plan(self, size_bytes: int) -> list[Key] | None:
        """Keys to evict (LRU first) so that ``size_bytes`` more fit; None when the pinned ones leave no room.

        Raises ValueError when ``size_bytes`` exceeds the whole budget (see ``Capacity.too_large``).
        """
        reason = self.capacity.too_large(size_bytes)
        if reason is not None:
            raise ValueError(reason)
        free = self.free_bytes()
        if free is None or free >= size_bytes:
            return []
        victims: list[Key] = []
        for key, entry in self._entries.items():
            if free >= size_bytes:
                break
            if entry.pins == 0:
                victims.append(key)
                free += entry.size_bytes
        return victims if free >= size_bytes else None

    def add(self, key: Key, size_bytes: int, now_ms: float) -> None:
        """``key`` is resident (most recently used), pinned once by the caller that loads it."""
        self._entries[key] = Resident(size_bytes, now_ms, now_ms, pins=1)
        self._entries.move_to_end(key)

    def resize(self, key: Key, size_bytes: int) -> None:
        """Replace the size of ``key`` (the measured footprint replaces the estimate)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.size_bytes = size_bytes

    def pin(self, key: Key, now_ms: float) -> bool:
        """Mark ``key`` used now and in use (not evictable); False when it is not resident."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.pins += 1
        entry.last_used_ms = now_ms
        self._entries.move_to_end(key)
        return True

    def unpin(self, key: Key) -> None:
        """The use of ``key`` is over."""
        entry = self._entries.get(key)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1

    def remove(self, key: Key) -> Resident | None:
        """Forget ``key`` (evicted or failed); its entry, or None."""
        return self._entries.pop(key, None)

    def snapshot(self) -> list[tuple[Key, Resident]]:
        """(key, copy of entry) pairs, least recently used first."""
        return [(key, Resident(e.size_bytes, e.loaded_ms, e.last_used_ms, e.pins)) for key, e in self._entries.items()]
