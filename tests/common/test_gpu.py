"""GPU inventory never fails, with or without NVIDIA hardware."""

from __future__ import annotations

import pytest

from common.gpu import device_kind_of, gpu_count, gpu_stats, mean_utilization, stat_for_device


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



class _LoadingNvml(_FakeNvml):
    """The fake's two GPUs, where a load adds 3 GiB on the idle GPU-bbb (NVML index 1) once ``loaded`` is set."""

    loaded = False

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _FakeNvml._Memory:
        extra = (3 << 30) if self.loaded and handle == 1 else 0
        return self._Memory(self._GPUS[handle][2] + extra)


def test_a_models_gpu_footprint_is_read_on_the_gpu_it_loaded_on() -> None:
    """A worker pinned to GPU 1 (CUDA_VISIBLE_DEVICES=1, so cuda:0 is NVML 1) measures NVML 1, not NVML 0."""
    from workers.footprint import gpu_used_bytes, measure

    nvml = _LoadingNvml()

    def load() -> str:
        nvml.loaded = True
        return "cuda:0"

    _, size = measure(
        load, lambda device: device, 1, read_gpus=lambda: gpu_stats(nvml), visible="1", cuda_uuid=lambda i: None
    )
    assert size == 3 << 30
    assert gpu_used_bytes("cuda:0", gpu_stats(nvml), visible="1", cuda_uuid=lambda i: None) == (1 << 30) + (3 << 30)
    assert gpu_used_bytes("cpu", gpu_stats(nvml)) is None
