"""GPU inventory never fails, with or without NVIDIA hardware."""

from __future__ import annotations

import pytest

from workers.gpu import device_kind_of, gpu_count, gpu_stats, mean_utilization, stat_for_device


def test_gpu_stats_never_raise() -> None:
    stats = gpu_stats()
    assert gpu_count() == len(stats)
    for stat in stats:
        assert 0 <= stat.utilization <= 100 and stat.memory_total >= stat.memory_used >= 0
    assert mean_utilization("cpu") is None


def test_cpu_box_has_zero_gpus() -> None:
    import shutil

    if shutil.which("nvidia-smi"):  # pragma: no cover - only on GPU machines
        return
    assert gpu_stats() == [] and gpu_count() == 0 and mean_utilization("cuda:0") is None


def test_device_kind_of_names_where_sizes_are_measured() -> None:
    assert device_kind_of("cpu") == "cpu"
    assert device_kind_of("cuda") == device_kind_of("cuda:1") == "gpu"
    # auto: a GPU when NVML sees one
    assert device_kind_of("auto") == ("gpu" if gpu_stats() else "cpu")


class _FakeNvml:
    """Two GPUs as NVML (PCI order) sees them: index 0 is GPU-aaa (busy), index 1 is GPU-bbb (idle)."""

    class _Util:
        def __init__(self, gpu: int) -> None:
            self.gpu = gpu

    class _Memory:
        def __init__(self, used: int) -> None:
            self.used, self.total = used, 16 << 30

    _GPUS = ((b"GPU-aaaaaaaa-0000", 90, 10 << 30), (b"GPU-bbbbbbbb-1111", 5, 1 << 30))

    def nvmlDeviceGetCount(self) -> int:
        return len(self._GPUS)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake GPU"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Util:
        return self._Util(self._GPUS[handle][1])

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        return self._Memory(self._GPUS[handle][2])

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return self._GPUS[handle][0]

    def nvmlShutdown(self) -> None:
        pass


@pytest.mark.parametrize(
    ("device", "visible", "torch_uuid", "expected_uuid"),
    [
        ("cuda:0", "1", None, "GPU-bbbbbbbb-1111"),  # pinned to GPU 1: cuda:0 is NVML 1
        ("cuda", "1,0", None, "GPU-bbbbbbbb-1111"),
        ("cuda:1", "1,0", None, "GPU-aaaaaaaa-0000"),
        ("cuda:0", "GPU-bbbbbbbb-1111", None, "GPU-bbbbbbbb-1111"),  # UUIDs in CUDA_VISIBLE_DEVICES
        ("cuda:0", "GPU-bbbb", None, "GPU-bbbbbbbb-1111"),  # a UUID prefix, as CUDA accepts
        ("cuda:0", "", "bbbbbbbb-1111", "GPU-bbbbbbbb-1111"),  # torch's UUID wins (fastest-first order)
        ("cuda:1", "", None, None),  # nothing visible
        ("cuda:3", "1,0", None, None),
        ("cpu", "1", None, None),
    ],
)
def test_a_cuda_device_maps_to_its_nvml_gpu_by_uuid(
    device: str, visible: str, torch_uuid: str | None, expected_uuid: str | None
) -> None:
    stats = gpu_stats(_FakeNvml())
    assert [s.index for s in stats] == [0, 1] and stats[0].uuid == "GPU-aaaaaaaa-0000"
    stat = stat_for_device(device, stats, visible=visible, cuda_uuid=lambda i: torch_uuid)
    assert (stat.uuid if stat else None) == expected_uuid

