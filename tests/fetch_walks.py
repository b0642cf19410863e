"""A spy on aiokafka's fetch routine: how often each consumer's fetcher walked its assigned partitions.

The routine (``Fetcher._get_actions_per_node``) walks every assigned partition, paused ones included, each time it
wakes; tests of consumers that hold many sleeping partitions count those walks over a quiet window.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher


def count_fetch_walks(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """Count every fetcher's walks from now on, by ``id(fetcher)`` (undone with ``monkeypatch``)."""
    walks: dict[int, int] = {}
    original = Fetcher._get_actions_per_node

    def counted(fetcher: Any, assignment: Any) -> Any:
        walks[id(fetcher)] = walks.get(id(fetcher), 0) + 1
        return original(fetcher, assignment)

    monkeypatch.setattr(Fetcher, "_get_actions_per_node", counted)
    return walks
