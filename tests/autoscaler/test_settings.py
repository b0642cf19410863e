"""AutoscalerSettings: env loading, validation and static pins."""

from __future__ import annotations

import pytest

from autoscaler import AutoscalerSettings
from schemas import SettingsError, describe


def test_from_env_reads_prefixed_and_shared() -> None:
    s = AutoscalerSettings.from_env(
        {
            "FLEET_AUTOSCALER_MODELS": "a,b",
            "FLEET_AUTOSCALER_TARGET_DRAIN_S": "5",
            "FLEET_AUTOSCALER_MAX_REPLICAS": "3",
            "FLEET_AUTOSCALER_PINNED": "a=2",
            "FLEET_NAMESPACE": "prod",
            "KAFKA_BOOTSTRAP": "k:9092",
        }
    )
    assert s.models == ("a", "b") and s.target_drain_s == 5.0 and s.max_replicas == 3
    assert s.pins() == {"a": 2}
    assert s.fleet.namespace == "prod" and s.fleet.kafka.bootstrap == "k:9092"


def test_defaults() -> None:
    s = AutoscalerSettings()
    assert (s.interval_s, s.target_drain_s, s.scale_down_stabilization_s, s.idle_to_zero_s) == (1.0, 10.0, 30.0, 60.0)
    assert (s.activation_lag, s.latency_p95_target_ms, s.gpu_util_target) == (1, 0.0, 0.0)


def test_unknown_variable_is_an_error() -> None:
    with pytest.raises(SettingsError, match="FLEET_AUTOSCALER_TARGET_DRAIN"):
        AutoscalerSettings.from_env({"FLEET_AUTOSCALER_TARGET_DRAIN": "5"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"interval_s": 0.0},
        {"min_replicas": 3, "max_replicas": 2},
        {"max_replicas": 0},
        {"activation_lag": 0},
        {"gpu_util_target": -1.0},
        {"pinned": ("a",)},
        {"pinned": ("a=-1",)},
        {"pinned": ("=2",)},
    ],
)
def test_invalid(overrides: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        AutoscalerSettings(**overrides)  # type: ignore[arg-type]


def test_every_setting_is_documented() -> None:
    rows = describe(AutoscalerSettings, "FLEET_AUTOSCALER_")
    own = [r for r in rows if r[0].startswith("FLEET_AUTOSCALER_")]
    assert len(own) >= 15 and all(doc for _, _, doc in own)
