"""The public surface of the autoscaler package is deliberate."""

import autoscaler


def test_exported_members() -> None:
    assert sorted(autoscaler.__all__) == autoscaler.__all__
    for name in autoscaler.__all__:
        assert getattr(autoscaler, name) is not None
    assert set(autoscaler.__all__) >= {"LagCollector", "ScalingPolicy", "AutoscalerSettings", "publish_service_stats"}
