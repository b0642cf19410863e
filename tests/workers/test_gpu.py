"""GPU inventory never fails, with or without NVIDIA hardware."""

from __future__ import annotations

from workers.gpu import device_kind_of, gpu_count, gpu_stats, mean_utilization


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
