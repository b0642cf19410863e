"""Per-model limits from labels (`schemas.limits`), and the registry refusing a bad limit label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ErrorCode, ModelRegistry, Names, SchemaError
from schemas.limits import MB, ModelLimits


def test_limits_from_labels() -> None:
    assert ModelLimits.from_labels({}) == ModelLimits()
    limits = ModelLimits.from_labels({"requires": "gpu, onnx,", "max_replicas": "3", "memory_cap_mb": "1.5"})
    assert limits == ModelLimits(frozenset({"gpu", "onnx"}), 3, int(1.5 * MB))
    gpus = ModelLimits.from_labels({"gpus": "1, 2"})
    assert gpus.gpus == {1, 2}
    assert [gpus.allows_device(d) for d in ("cpu", "cuda", "cuda:1", "cuda:2", "cuda:3")] == [
        True, False, True, True, False,
    ]  # fmt: skip
    assert ModelLimits().allows_device("cuda:7")


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"max_replicas": "-1"}, "max_replicas='-1' must be a non-negative integer"),
        ({"max_replicas": "two"}, "max_replicas='two'"),
        ({"memory_cap_mb": "0"}, "memory_cap_mb='0' must be a number of MB > 0"),
        ({"memory_cap_mb": "nan"}, "memory_cap_mb='nan'"),
        ({"memory_cap_mb": "inf"}, "memory_cap_mb='inf'"),
        ({"memory_cap_mb": "lots"}, "memory_cap_mb='lots'"),
        ({"gpus": ""}, "gpus='' must be a comma list of GPU indices"),
        ({"gpus": "0,x"}, "gpus='0,x'"),
    ],
)
def test_bad_limit_labels_are_refused(labels: dict[str, str], fragment: str) -> None:
    with pytest.raises(SchemaError, match=fragment) as caught:
        ModelLimits.from_labels(labels)
    assert caught.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.integration
async def test_the_registry_refuses_a_bad_limit_label(redis_client: Any, names: Names, tmp_path: Path) -> None:
    registry = ModelRegistry(redis_client, names)
    record = build_record("m", "1", tiny_mlp(tmp_path / "m.onnx"), labels={"memory_cap_mb": "-5"})
    with pytest.raises(SchemaError, match="memory_cap_mb"):
        await registry.register(record)
    assert not await registry.exists("m")
