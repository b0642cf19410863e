"""`python -m gateway` settles the garbage collector once started: startup objects frozen, a higher young threshold."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.__main__ import settle_garbage_collector
from gateway.settings import GatewaySettings
from schemas import SettingsError


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_the_young_threshold_raised() -> None:
    older = gc.get_threshold()[1:]
    settle_garbage_collector(GatewaySettings.from_env({}).gc_young_threshold)
    assert gc.get_freeze_count() > 1000  # the modules and classes loaded so far
    assert gc.get_threshold() == (10_000, *older)


@pytest.mark.usefixtures("restored_gc")
def test_zero_keeps_pythons_thresholds() -> None:
    before = gc.get_threshold()
    settle_garbage_collector(0)
    assert gc.get_threshold() == before


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(SettingsError, match="gc_young_threshold"):
        GatewaySettings.from_env({"FLEET_GATEWAY_GC_YOUNG_THRESHOLD": "-1"})
