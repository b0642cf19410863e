"""The worker's process title (`workers.proctitle`): the text, pure."""

from __future__ import annotations

from workers.proctitle import MAX_TITLE, title


def test_pool_title_counts_models_and_resident() -> None:
    assert title("pool-3f2a", "pool", ["b", "a", "c"], 2) == "fleet-worker pool-3f2a pool: 3 models, 2 resident"


def test_models_title_lists_them_and_cuts_a_long_list() -> None:
    assert title("w1", "models", ["tiny", "resnet"], 1) == "fleet-worker w1 model=resnet,tiny"
    assert title("w1", "models", [], 0) == "fleet-worker w1 model=-"
    many = title("w1", "models", [f"model-{i:03d}" for i in range(100)], 0)
    assert len(many) <= MAX_TITLE and many.endswith(",... (100 models)")
