"""bench.compare's pure parts: the interleaved order, which figures it reads and the ratio table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import env_pairs, figures_of, order, side_env, table


def test_sides_alternate_which_goes_first() -> None:
    assert list(order(3)) == [
        (0, "baseline"),
        (0, "current"),
        (1, "current"),
        (1, "baseline"),
        (2, "baseline"),
        (2, "current"),
    ]


def test_figures_are_named_by_list_model_and_concurrency() -> None:
    report = {
        "commit": "abc",
        "runs": [
            {"model": "tiny", "concurrency": 64, "req_per_s": 100.0, "errors": 0, "ok": True},
            {"model": "tiny", "concurrency": 1, "req_per_s": 10, "p50_ms": None},
        ],
        "soak": [{"req_per_s": 5.0}],
    }
    assert figures_of(report, ["req_per_s", "errors", "ok", "p50_ms"]) == {
        "runs model=tiny concurrency=64: req_per_s": 100.0,
        "runs model=tiny concurrency=64: errors": 0.0,
        "runs model=tiny concurrency=1: req_per_s": 10.0,
        "soak #0: req_per_s": 5.0,
    }


def test_the_table_holds_medians_and_the_ratio_current_over_baseline() -> None:
    def run(rps: float) -> dict[str, object]:
        return {"runs": [{"model": "m", "concurrency": 8, "req_per_s": rps, "errors": 0}]}

    rows = table({"baseline": [run(100), run(300), run(200)], "current": [run(400), run(350)]}, ["req_per_s", "errors"])
    assert rows[0] == {
        "figure": "runs model=m concurrency=8: req_per_s",
        "baseline": 200.0,
        "current": 375.0,
        "ratio": 1.875,
        "baseline_rounds": [100.0, 300.0, 200.0],
        "current_rounds": [400.0, 350.0],
    }
    assert rows[1]["ratio"] is None  # 0 errors on both sides: no ratio


def test_the_bench_package_comes_before_the_sides_tree(tmp_path: Path) -> None:
    env = side_env(tmp_path / "tree", tmp_path / "overlay")
    assert env["PYTHONPATH"].split(":") == [str(tmp_path / "overlay"), str(tmp_path / "tree")]


def test_a_sides_own_variables_join_its_environment(tmp_path: Path) -> None:
    extra = env_pairs(["FLEET_WORKER_PIPELINE_DEPTH=1", "EMPTY="])
    assert extra == {"FLEET_WORKER_PIPELINE_DEPTH": "1", "EMPTY": ""}
    env = side_env(tmp_path / "tree", tmp_path / "overlay", extra)
    assert env["FLEET_WORKER_PIPELINE_DEPTH"] == "1" and env["EMPTY"] == ""
    with pytest.raises(SystemExit, match="'DEPTH' is not KEY=VALUE"):
        env_pairs(["DEPTH"])
