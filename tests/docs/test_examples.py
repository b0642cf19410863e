"""Every example in examples/ runs against a real `fleet up` stack, as the docs' `run: examples` blocks say."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .markdown_blocks import ROOT, command_lines, marked
from .stack_util import run_shell, start_stack, stop, user_env, workdir

pytestmark = pytest.mark.integration

REGISTER = "bash examples/register.sh"
#: Each command after REGISTER, with what its output must show. Rollout last: it adds version 2 (the pipeline
#: example pins tiny 1).
COMMANDS = {
    "python examples/sync_infer.py": ["FleetClient.infer: tiny v1 -> y[2, 4]", "infer_sync: tiny v1 -> y[2, 4]"],
    "python examples/async_job.py": ["status right after submit: ", "(same job)", "final status: done"],
    "python examples/producer.py": ["infer: y[1, 4]", "submitted 200, answered 200, failed 0"],
    "bash examples/batch_run.sh": [
        "out.npy: 1000 rows of 4, 0 failed", "out.jsonl: 21 lines, errors ['INVALID_INPUT']",
    ],
    "bash examples/pipeline.sh": [
        "pipeline classify applied as version 1", "sync: classify v1 -> probs[3, 4]",
        "matches the steps run one after another: True", ": done, logits[3, 4]",
    ],
    "bash examples/rollout.sh": [
        "registered: tiny version 2", "PASS tiny v2", "tiny: 1=90 2=10 (default 1)",
        "split cleared; all unversioned traffic goes to the default version 1", "answered by version: v1 50\n",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], str]]:
    """`fleet up` in a scratch directory; tiny registered by examples/register.sh (its output is the third item)."""
    tmp = tmp_path_factory.mktemp("examples")
    cwd = workdir(tmp)
    env = user_env(tmp / ".fleet")
    # The pool worker looks for a bulk topic it did not find (batch_run.sh's first bulk request creates it) after
    # 1 s instead of the default 10 s: the examples' outputs are the same, their first bulk records wait less.
    env["FLEET_WORKER_POOL_MISSING_TOPIC_RECHECK_S"] = "1"
    up, _ = start_stack("fleet up", cwd, env)
    try:
        yield cwd, env, run_shell(REGISTER, cwd, env)
    finally:
        stop(up, env, cwd)


def test_register_example(stack: tuple[Path, dict[str, str], str]) -> None:
    output = stack[2]
    assert "registered: tiny version 1" in output and "PASS tiny v1" in output


@pytest.mark.parametrize("command", list(COMMANDS))
def test_example(stack: tuple[Path, dict[str, str], str], command: str) -> None:
    cwd, env, _ = stack
    output = run_shell(command, cwd, env)
    for expected in COMMANDS[command]:
        assert expected in output, f"{command}: {expected!r} not in\n{output}"
    if command.endswith("rollout.sh"):
        split = re.search(r"answered by version: v1 (\d+), v2 (\d+)", output)
        assert split is not None, output
        assert int(split.group(1)) + int(split.group(2)) == 200 and 0 < int(split.group(2)) < 60  # ~10 %


def test_docs_run_only_commands_this_module_runs() -> None:
    lines = [line for block in marked("examples") for line in command_lines(block)]
    assert lines, "no `run: examples` block found"
    assert set(lines) <= {REGISTER, *COMMANDS}, set(lines) - {REGISTER, *COMMANDS}


def test_every_example_file_is_run() -> None:
    scripts = {REGISTER, *COMMANDS}
    run_text = " ".join(scripts) + "".join((ROOT / cmd.split()[1]).read_text() for cmd in scripts)
    files = [p.name for p in (ROOT / "examples").iterdir() if p.suffix in (".py", ".sh")]
    assert files and [name for name in files if name not in run_text] == []


def test_make_model_writes_an_onnx_model(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f"python examples/make_model.py {tmp_path}/m.onnx --seed 3"], cwd=ROOT,
        env=user_env(tmp_path), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.startswith("wrote ") and (tmp_path / "m.onnx").stat().st_size > 0
