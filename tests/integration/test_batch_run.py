"""``fleet batch run`` end to end: JSONL and .npy inputs, per-record failures, resume after SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from fleet.pipeline.batch import BatchOptions, BatchRun
from fleet.pipeline.outputs import failures_path
from fleet.pipeline.state import BatchError, Checkpoint
from schemas import BatchingConfig, FleetSettings, ModelRecord
from workers import Worker, WorkerSettings

from .module_stack import ModuleStack, module_settings, module_stack


@pytest.fixture(scope="module")
async def served(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModuleStack]:
    """One worker serving ``tiny`` for the tests that run batches against a live worker (each run has its own
    random run id, so request ids and reply streams never meet). A namespace of its own, so the test that
    resumes with no worker running is not served by this one."""
    path = tiny_mlp(tmp_path_factory.mktemp("batchrun") / "tiny.onnx")
    record = build_record("tiny", "1", path, batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5))
    settings = module_settings(kafka_bootstrap, redis_url, "batchrun")
    async with module_stack(settings, [record], gateway=False) as stack:
        yield stack


def _reference(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def _write_jsonl(path: Path, rows: np.ndarray, broken: dict[int, str]) -> None:
    with open(path, "w") as fh:
        for i, row in enumerate(rows):
            if i in broken:
                fh.write(broken[i] + "\n")
            elif i % 2:
                fh.write(json.dumps({"inputs": {"x": row.tolist()}}) + "\n")  # wrapped form
            else:
                fh.write(json.dumps({"x": row.tolist()}) + "\n")  # plain form


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_jsonl_outputs_in_input_order_with_failures(served: ModuleStack, tmp_path: Path) -> None:
    fleet_settings, tiny_model = served.settings, served.records["tiny"]
    rows = np.random.default_rng(5).standard_normal((500, 16)).astype(np.float32)
    broken = {
        17: json.dumps({"x": [1.0] * 15}),  # wrong shape: refused at the client
        250: "{not json",
        300: json.dumps({"y": [1.0] * 16}),  # missing input
        301: json.dumps({"x": ["a"] * 16}),  # not numbers
    }
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(source, rows, broken)
    summary = await BatchRun(fleet_settings, BatchOptions("tiny", source, output, window=64, read_chunk=50)).run()

    assert (summary.done, summary.failed) == (500, 4)
    lines = _read_jsonl(output)
    assert [line["index"] for line in lines] == list(range(500))
    expected = _reference(tiny_model, rows)
    for i, line in enumerate(lines):
        if i in broken:
            assert line["error"]["code"] == "INVALID_INPUT" and line["error"]["message"], line
            continue
        # a single row given without its batch dimension comes back without it
        np.testing.assert_allclose(np.array(line["outputs"]["y"]), expected[i], rtol=1e-5, atol=1e-6)
    assert "shape" in lines[17]["error"]["message"] and "JSON" in lines[250]["error"]["message"]
    assert Checkpoint.load(Checkpoint.path_for(output)).complete

    again = await BatchRun(fleet_settings, BatchOptions("tiny", source, output, resume=True)).run()
    assert again.already_complete and output.read_text().count("\n") == 500
    with pytest.raises(BatchError, match="--resume"):
        await BatchRun(fleet_settings, BatchOptions("tiny", source, output)).run()


@pytest.mark.parametrize("per_request", [1, 7])
async def test_npy_outputs_match_the_model(served: ModuleStack, tmp_path: Path, per_request: int) -> None:
    fleet_settings, tiny_model = served.settings, served.records["tiny"]
    rows = np.random.default_rng(6).standard_normal((500, 16)).astype(np.float32)
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, rows)
    options = BatchOptions("tiny", source, output, rows_per_request=per_request, window=128)
    summary = await BatchRun(fleet_settings, options).run()
    assert summary.done == -(-500 // per_request) and summary.failed == 0
    y = np.load(output)
    assert y.shape == (500, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(tiny_model, rows), rtol=1e-5, atol=1e-6)
    assert failures_path(output).read_text() == ""


async def test_npy_input_of_the_wrong_width_fails_every_record(served: ModuleStack, tmp_path: Path) -> None:
    fleet_settings = served.settings
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.ones((10, 15), np.float32))
    summary = await BatchRun(fleet_settings, BatchOptions("tiny", source, output)).run()
    assert (summary.done, summary.failed) == (10, 10)
    assert np.isnan(np.load(output)).all()
    failures = _read_jsonl(failures_path(output))
    assert [f["index"] for f in failures] == list(range(10))
    assert {f["code"] for f in failures} == {"INVALID_INPUT"} and failures[3]["rows"] == [3, 4]


def _batch_command(settings: FleetSettings, source: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fleet.cli",
        "batch",
        "run",
        "--model",
        "tiny",
        "--input",
        str(source),
        "--output",
        str(output),
        "--kafka",
        settings.kafka.bootstrap,
        "--redis",
        settings.redis.url,
        "--namespace",
        settings.namespace,
        "--quiet",
        *extra,
    ]


async def test_resume_after_sigkill_has_no_duplicate_and_no_missing_row(served: ModuleStack, tmp_path: Path) -> None:
    fleet_settings, tiny_model = served.settings, served.records["tiny"]
    count = 8_000
    rows = np.random.default_rng(8).standard_normal((count, 16)).astype(np.float32)
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(source, rows, {})
    ckpt_path = Checkpoint.path_for(output)
    command = _batch_command(fleet_settings, source, output, "--checkpoint-interval", "0.2", "--window", "256")
    first = await asyncio.create_subprocess_exec(*command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once a checkpoint with part of the output exists
        if ckpt_path.exists() and 0 < Checkpoint.load(ckpt_path).records_done < count // 2:
            break
        assert first.returncode is None, "the run ended before it could be killed"
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    await asyncio.wait_for(first.wait(), 10)
    killed_at = Checkpoint.load(ckpt_path)
    assert not killed_at.complete and killed_at.records_done < count

    second = await asyncio.create_subprocess_exec(
        *_batch_command(fleet_settings, source, output, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(second.communicate(), 90)
    assert second.returncode == 0, err.decode()
    assert "resumed at" in out.decode()

    lines = _read_jsonl(output)
    assert [line["index"] for line in lines] == list(range(count))  # no duplicate, no gap, in order
    got = np.array([line["outputs"]["y"] for line in lines], dtype=np.float32)
    np.testing.assert_allclose(got, _reference(tiny_model, rows), rtol=1e-5, atol=1e-6)
    assert Checkpoint.load(ckpt_path).complete


async def test_parquet_input_gives_jsonl_output(served: ModuleStack, tmp_path: Path) -> None:
    fleet_settings, tiny_model = served.settings, served.records["tiny"]
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = np.random.default_rng(9).standard_normal((300, 16)).astype(np.float32)
    source, output = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    pq.write_table(pa.table({"x": [row.tolist() for row in rows]}), source, row_group_size=64)
    summary = await BatchRun(fleet_settings, BatchOptions("tiny", source, output, read_chunk=50)).run()
    assert (summary.done, summary.failed) == (300, 0)
    lines = _read_jsonl(output)
    assert [line["index"] for line in lines] == list(range(300))
    got = np.array([line["outputs"]["y"] for line in lines], dtype=np.float32)
    np.testing.assert_allclose(got, _reference(tiny_model, rows), rtol=1e-5, atol=1e-6)


async def test_resume_takes_stored_results_instead_of_running_records_again(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, tmp_path: Path
) -> None:
    """Records past the checkpoint that were answered before the interruption are not sent again:
    the resumed run below finishes with no worker running at all."""
    rows = np.random.default_rng(10).standard_normal((300, 16)).astype(np.float32)
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(source, rows, {})
    async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as w:
        await w.wait_ready(30)
        await BatchRun(fleet_settings, BatchOptions("tiny", source, output)).run()
    complete = output.read_bytes()
    ckpt_path = Checkpoint.path_for(output)
    # as if the run had been killed with 120 records checkpointed and more written after that
    prefix = b"".join(complete.splitlines(keepends=True)[:120])
    source_prefix = b"".join(source.read_bytes().splitlines(keepends=True)[:120])
    Checkpoint.load(ckpt_path).advance(
        complete=False,
        records_done=120,
        output_offset=len(prefix),
        input_offset=len(source_prefix),
        resend_until=300,
    ).save(ckpt_path)
    # a line written after the checkpoint, before the crash: the resumed run cuts it off
    output.write_bytes(prefix + b'{"index": 120, "outputs": {"y": [0.0]}}\n')

    options = BatchOptions("tiny", source, output, resume=True, timeout_s=5)
    summary = await asyncio.wait_for(BatchRun(fleet_settings, options).run(), 30)
    assert (summary.done, summary.failed, summary.resumed_from) == (300, 0, 120)
    assert output.read_bytes() == complete
