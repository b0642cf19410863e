"""Bulk pacing: while interactive traffic flows, bulk rounds take at most ``bulk_share`` of a model's time.

After a bulk round that took ``spent`` seconds while interactive traffic was seen in the last
``active_s``, bulk rests ``spent * (1 - share) / share`` seconds (an interactive record ends the rest
at once: the scheduler waits on the interactive lane meanwhile). Pure: the clock is passed in.
"""

from __future__ import annotations

#: Interactive traffic counts as flowing for this long after its last round (FLEET_WORKER_BULK_SHARE).
INTERACTIVE_ACTIVE_S = 1.0


class BulkPacer:
    """When the next bulk round may start, given the interactive rounds seen (monotonic seconds)."""

    def __init__(self, share: float, active_s: float = INTERACTIVE_ACTIVE_S) -> None:
        self.share = share
        self._active_s = active_s
        self._last_interactive = -1e9
        self._rest_until = 0.0

    def note_interactive(self, now: float) -> None:
        """An interactive round started at ``now``."""
        self._last_interactive = now

    def note_bulk_round(self, spent_s: float, now: float) -> None:
        """A bulk round of ``spent_s`` seconds ended at ``now``: rest bulk if interactive traffic flows."""
        if self.share < 1.0 and now - self._last_interactive < self._active_s:
            self._rest_until = now + spent_s * (1.0 - self.share) / max(self.share, 1e-6)

    def rest_ms(self, now: float) -> int:
        """Milliseconds before the next bulk round may start (0: now)."""
        return max(0, int((self._rest_until - now) * 1000))
