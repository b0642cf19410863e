"""The README's five-minute tour, block by block, against a real `fleet up` stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from .markdown_blocks import marked
from .stack_util import run_shell, start_stack, stop, user_env, workdir

pytestmark = pytest.mark.integration


def only(name: str) -> str:
    (block,) = marked(name)
    return block.text


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    env = user_env(tmp_path / ".fleet")
    up, url = start_stack(only("tour-up").split("#")[0].strip(), cwd, env)
    port = url.rsplit(":", 1)[1]
    try:
        # The stack listens on a free port instead of 8000; nothing else in the blocks is changed.
        tour = run_shell(only("tour").replace("localhost:8000", f"localhost:{port}"), cwd, env)
        assert "registered: tiny version 1" in tour
        assert "PASS tiny v1" in tour
        assert '"model_name":"tiny"' in tour and '"shape":[1,4]' in tour  # the curl answer
        assert "FleetClient.infer: tiny v1 -> y[2, 4]" in tour and "infer_sync: tiny v1" in tour
        assert "autoscaler leader" in tour

        script = tmp_path / "tour.py"
        script.write_text(only("tour-python").replace("http://127.0.0.1:8000", url))
        python = run_shell(f"python {script}", cwd, env)
        assert "1 (2, 4)" in python

        down = run_shell(only("tour-down"), cwd, env)
        assert "stack stopped" in down
        assert up.wait(60) == 0
    finally:
        stop(up, env, cwd)
