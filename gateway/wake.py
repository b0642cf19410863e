"""Wake notes (`common.wake`): after a request record lands, the gateway names its partition on
``Names.wake_channel`` (``FLEET_GATEWAY_WAKE_INTERVAL_S``), so a pool worker that let it sleep fetches it at once."""

from __future__ import annotations

from common.wake import WakeNotes

__all__ = ["WakeNotes"]
