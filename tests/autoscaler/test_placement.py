"""The placement rules (`autoscaler.placement`): fit, labels, residency preference, spread, stability, reasons."""

from __future__ import annotations

from autoscaler.placement import MB, ModelDemand, PlacementState, WorkerSlot, place


def _d(model: str, mb: int, replicas: int = 1, requires: str = "") -> ModelDemand:
    return ModelDemand(model, mb * MB, replicas, frozenset(filter(None, requires.split(","))))


def _w(worker: str, mb: int | None, labels: str = "cpu,onnx", resident: str = "") -> WorkerSlot:
    return WorkerSlot(
        worker,
        None if mb is None else mb * MB,
        frozenset(filter(None, labels.split(","))),
        frozenset(filter(None, resident.split(","))),
    )


def test_models_fit_within_the_assignable_bytes() -> None:
    out = place([_d("a", 300), _d("b", 300), _d("c", 300)], [_w("w1", 500), _w("w2", 700)], {})
    assert sum(len(m) for m in out.assignments.values()) == 3
    assert len(out.assignments["w1"]) == 1 and len(out.assignments["w2"]) == 2
    assert all(s.state is PlacementState.PLACED for s in out.status.values())


def test_a_model_too_large_for_every_worker_fails_with_the_sizes() -> None:
    out = place([_d("big", 900), _d("small", 100)], [_w("w1", 400), _w("w2", 500)], {})
    status = out.status["big"]
    assert status.state is PlacementState.SCHEDULE_FAILED
    assert status.reason == "needs 900 MB, largest free 500 MB"
    assert out.status["small"].state is PlacementState.PLACED
    assert "big" not in set().union(*out.assignments.values())


def test_largest_free_counts_what_is_already_placed() -> None:
    out = place([_d("a", 300), _d("b", 300)], [_w("w1", 400)], {})
    assert out.status["a"].state is PlacementState.PLACED
    assert out.status["b"].reason == "needs 300 MB, largest free 100 MB"


def test_labels_are_required() -> None:
    workers = [_w("cpu1", 1000), _w("gpu1", 1000, "gpu,onnx")]
    out = place([_d("g", 100, requires="gpu"), _d("t", 100, requires="torch"), _d("x", 100)], workers, {})
    assert out.assignments["gpu1"] >= {"g"}
    assert out.status["t"].state is PlacementState.SCHEDULE_FAILED
    assert out.status["t"].reason == "no worker has label torch"
    both = place([_d("gt", 100, requires="gpu,torch")], [_w("a", 100, "gpu"), _w("b", 100, "torch")], {})
    assert both.status["gt"].reason == "no worker has all the labels gpu,torch"


def test_prefers_a_worker_where_the_model_is_resident() -> None:
    workers = [_w("roomy", 1000), _w("holder", 300, resident="m")]
    out = place([_d("m", 200)], workers, {})
    assert out.status["m"].workers == ("holder",)


def test_otherwise_the_worker_with_most_room() -> None:
    out = place([_d("m", 200)], [_w("w1", 300), _w("w2", 900), _w("w3", None)], {})
    assert out.status["m"].workers == ("w3",)  # unlimited
    out = place([_d("m", 200)], [_w("w1", 300), _w("w2", 900)], {})
    assert out.status["m"].workers == ("w2",)


def test_replicas_spread_over_distinct_workers() -> None:
    out = place([_d("m", 100, replicas=3)], [_w("w1", 1000), _w("w2", 1000), _w("w3", 1000)], {})
    assert out.status["m"].workers == ("w1", "w2", "w3")
    short = place([_d("m", 100, replicas=3)], [_w("w1", 1000), _w("w2", 1000)], {})
    assert short.status["m"].state is PlacementState.PARTIAL
    assert short.status["m"].reason == "2 of 3 replicas placed: only 2 worker(s) have the labels it requires"


def test_stable_models_stay_where_they_are() -> None:
    workers = [_w("w1", 1000), _w("w2", 1000, resident="a")]
    current = {"w1": {"a"}}
    out = place([_d("a", 100), _d("b", 100)], workers, current)
    assert out.status["a"].workers == ("w1",)  # not moved to w2, where it is resident, nor elsewhere
    assert out.status["b"].workers == ("w2",)  # the most room left
    again = place([_d("a", 100), _d("b", 100)], workers, out.assignments)
    assert again.assignments == out.assignments


def test_kept_assignments_are_dropped_when_no_longer_fine() -> None:
    current = {"w1": {"a", "gone", "g"}, "w2": {"a"}}
    workers = [_w("w1", 1000), _w("w2", 1000)]
    out = place([_d("a", 100), _d("g", 100, requires="gpu")], workers, current)
    assert out.assignments == {"w1": {"a"}, "w2": set()}  # one replica wanted; unregistered and unlabelled dropped
    assert out.status["g"].state is PlacementState.SCHEDULE_FAILED


def test_a_worker_that_shrank_keeps_what_still_fits() -> None:
    out = place([_d("a", 300), _d("b", 300)], [_w("w1", 400), _w("w2", 1000)], {"w1": {"a", "b"}})
    assert out.assignments["w1"] == {"a"}
    assert out.assignments["w2"] == {"b"}


def test_zero_replicas_is_idle_and_no_worker_is_a_reason() -> None:
    out = place([_d("a", 100, replicas=0)], [_w("w1", 1000)], {"w1": {"a"}})
    assert out.status["a"].state is PlacementState.IDLE and out.assignments["w1"] == set()
    none = place([_d("a", 100)], [], {})
    assert none.status["a"].reason == "no live worker follows an assignment"


def test_a_gpu_cap_keeps_the_model_on_the_gpus_it_may_use() -> None:
    capped = ModelDemand("m", 100 * MB, 2, frozenset({"gpu"}), frozenset({1}))
    workers = [_w("g0", 1000, "gpu,cuda:0"), _w("g1", 1000, "gpu,cuda:1"), _w("c", 1000, "cpu")]
    out = place([capped], workers, {"g0": {"m"}})
    assert out.status["m"].workers == ("g1",)  # moved off GPU 0; the CPU worker lacks the gpu label
    assert out.status["m"].reason == "1 of 2 replicas placed: only 1 worker(s) have the labels it requires"
    anywhere = ModelDemand("m", 100 * MB, 1, frozenset(), frozenset({3}))
    assert place([anywhere], [_w("c", 1000, "cpu")], {}).status["m"].workers == ("c",)  # CPU is not capped
    none = place([anywhere], [_w("g0", 1000, "gpu,cuda:0")], {})
    assert none.status["m"].reason == "no worker on an allowed GPU (cuda:3)"


def test_a_model_takes_its_gpu_size_on_gpu_workers_and_its_cpu_size_elsewhere() -> None:
    # 100 MB measured in a CPU process, 600 MB in GPU memory (weights plus CUDA workspaces).
    model = ModelDemand("m", 100 * MB, 1, gpu_size_bytes=600 * MB)
    only_gpu = place([model], [_w("g1", 500, labels="gpu,cuda:0")], {})
    assert only_gpu.status["m"].state is PlacementState.SCHEDULE_FAILED
    assert only_gpu.status["m"].reason == "needs 600 MB, largest free 500 MB"
    both = place([model], [_w("g1", 500, labels="gpu,cuda:0"), _w("c1", 150)], {})
    assert both.assignments == {"g1": set(), "c1": {"m"}}
    # Largest first counts the larger of the two sizes: the 600 MB GPU model goes before a 300 MB one.
    other = _d("n", 300)
    first = place([other, model], [_w("g1", 700, labels="gpu,cuda:0")], {})
    assert first.assignments == {"g1": {"m"}} and first.status["n"].state is PlacementState.SCHEDULE_FAILED


def test_small_sizes_keep_their_precision_in_the_reason() -> None:
    small = ModelDemand("s", 5 * MB // 2, 1)
    assert place([small], [_w("w1", 2)], {}).status["s"].reason == "needs 2.5 MB, largest free 2.0 MB"
    tiny = ModelDemand("t", 12 * 1024, 1)
    slot = WorkerSlot("w1", 4 * 1024, frozenset({"cpu"}))
    assert place([tiny], [slot], {}).status["t"].reason == "needs 12 KB, largest free 4 KB"


def test_a_growing_pool_makes_a_model_short_of_room_pending_not_failed() -> None:
    # No pool worker is live yet, but the autoscaler is starting one: the gateway must not answer 503 meanwhile.
    none = place([_d("a", 100)], [], {}, growing=True)
    assert none.status["a"].state is PlacementState.PENDING
    assert none.status["a"].reason == "no live worker follows an assignment; the pool is starting more workers"
    short = place([_d("a", 100, replicas=2)], [_w("w1", 1000)], {}, growing=True)
    assert short.status["a"].state is PlacementState.PENDING and short.status["a"].workers == ("w1",)
    # Labels no pool worker has are not fixed by more of the same workers: still a failure.
    labels = place([_d("g", 100, requires="gpu")], [_w("w1", 1000)], {}, growing=True)
    assert labels.status["g"].state is PlacementState.SCHEDULE_FAILED
    # Not growing: the failure stands.
    assert place([_d("a", 100)], [], {}).status["a"].state is PlacementState.SCHEDULE_FAILED
