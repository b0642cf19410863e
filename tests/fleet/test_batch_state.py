"""Pure parts of batch runs: the reorder buffer, the checkpoint file, the writers' truncation, the readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleet.cli.batch import progress_line
from fleet.pipeline.batch import BatchProgress
from fleet.pipeline.inputs import JsonlSource, NpySource, input_format
from fleet.pipeline.outputs import JsonlWriter, NpyWriter, Outcome, failures_path, output_format
from fleet.pipeline.state import BatchError, Checkpoint, ReorderBuffer
from schemas import Framework, ModelRecord, TensorSpec

MODEL = ModelRecord(
    "tiny",
    "1",
    Framework.ONNX,
    "/nowhere.onnx",
    "0" * 64,
    (TensorSpec("x", "FP32", (-1, 4)),),
    (TensorSpec("y", "FP32", (-1, 2)),),
)


@pytest.mark.parametrize(
    ("arrivals", "released"),
    [
        ([0, 1, 2], [[0], [1], [2]]),
        ([2, 1, 0], [[], [], [0, 1, 2]]),
        ([1, 0, 3, 2, 4], [[], [0, 1], [], [2, 3], [4]]),
        ([0, 0, 1, 1], [[0], [], [1], []]),  # duplicates are ignored, never released twice
    ],
)
def test_reorder_buffer_releases_the_contiguous_prefix_once(arrivals: list[int], released: list[list[int]]) -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer()
    got = []
    for index in arrivals:
        buffer.put(index, f"r{index}")
        got.append([i for i, _ in buffer.pop_ready()])
    assert got == released
    assert len(buffer) == 0


def test_reorder_buffer_starts_at_a_resumed_index() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer(start=10)
    assert not buffer.put(9, 9)  # before the committed prefix: already written
    assert buffer.put(11, 11) and buffer.pop_ready() == []
    assert buffer.put(10, 10) and buffer.pop_ready() == [(10, 10), (11, 11)]
    assert buffer.next_index == 12


def _checkpoint(**changes: object) -> Checkpoint:
    base = Checkpoint("abc", "tiny", "1", "/data/in.jsonl", 1234, "jsonl", "jsonl")
    return base.advance(**changes)


def test_checkpoint_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    path = Checkpoint.path_for(tmp_path / "out.jsonl")
    assert path.name == "out.jsonl.ckpt"
    _checkpoint(records_done=5, output_offset=99).save(path)
    _checkpoint(records_done=7, output_offset=140, resend_until=100).save(path)
    loaded = Checkpoint.load(path)
    assert (loaded.records_done, loaded.output_offset, loaded.resend_until) == (7, 140, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl.ckpt"]  # no temporary file left


@pytest.mark.parametrize("content", ["{broken", json.dumps({"v": 99}), json.dumps({"v": 1, "run_id": "x"})])
def test_bad_checkpoints_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "out.jsonl.ckpt"
    path.write_text(content)
    with pytest.raises(BatchError):
        Checkpoint.load(path)


def test_resume_refuses_another_input_or_model() -> None:
    ckpt = _checkpoint()
    ckpt.check_same_run(model="tiny", input_path="/data/in.jsonl", input_size=1234, rows_per_request=1)
    with pytest.raises(BatchError, match="input size"):
        ckpt.check_same_run(model="tiny", input_path="/data/in.jsonl", input_size=1, rows_per_request=1)
    with pytest.raises(BatchError, match="model"):
        ckpt.check_same_run(model="other", input_path="/data/in.jsonl", input_size=1234, rows_per_request=1)


def test_jsonl_writer_truncates_to_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path)
    writer.write(0, Outcome({"y": np.array([[1.0, 2.0]], np.float32)}, squeeze=True))
    committed, _ = writer.positions()
    writer.sync()
    writer.write(1, Outcome.failure("INVALID_INPUT", "bad"))  # written after the checkpoint, then a crash
    writer.close()
    resumed = JsonlWriter(path, offset=committed)
    resumed.write(1, Outcome({"y": np.array([[3.0, 4.0]], np.float32)}))
    resumed.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"index": 0, "outputs": {"y": [1.0, 2.0]}}, {"index": 1, "outputs": {"y": [[3.0, 4.0]]}}]


def test_npy_writer_fills_failed_rows_and_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "out.npy"
    writer = NpyWriter(path, MODEL.outputs[0], rows=5, rows_per_request=2)
    writer.write(0, Outcome({"y": np.ones((2, 2), np.float32)}))
    writer.write(1, Outcome.failure("MODEL_ERROR", "boom"))
    writer.write(2, Outcome({"y": np.ones((2, 2), np.float32)}))  # the last request has one row only
    writer.close()
    y = np.load(path)
    assert y.shape == (5, 2) and np.isnan(y[2:4]).all() and (y[:2] == 1).all() and np.isnan(y[4]).all()
    failures = [json.loads(line) for line in failures_path(path).read_text().splitlines()]
    assert [(f["index"], f["rows"], f["code"]) for f in failures] == [
        (1, [2, 4], "MODEL_ERROR"),
        (2, [4, 5], "MODEL_ERROR"),
    ]


def test_npy_writer_resumes_at_the_checkpointed_offsets(tmp_path: Path) -> None:
    path = tmp_path / "out.npy"
    writer = NpyWriter(path, MODEL.outputs[0], rows=3, rows_per_request=1)
    writer.write(0, Outcome({"y": np.zeros((1, 2), np.float32)}))
    offsets = writer.positions()
    writer.write(1, Outcome({"y": np.full((1, 2), 9, np.float32)}))
    writer.close()
    with pytest.raises(BatchError, match="has"):
        NpyWriter(path, MODEL.outputs[0], rows=3, rows_per_request=1, offset=10**6, failures_offset=0)
    resumed = NpyWriter(path, MODEL.outputs[0], rows=3, rows_per_request=1, offset=offsets[0], failures_offset=0)
    for i in (1, 2):
        resumed.write(i, Outcome({"y": np.full((1, 2), i, np.float32)}))
    resumed.close()
    np.testing.assert_array_equal(np.load(path), [[0, 0], [1, 1], [2, 2]])


def test_jsonl_source_reads_both_forms_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"x": [1, 2, 3, 4]}\n{"inputs": {"x": [[1, 2, 3, 4], [5, 6, 7, 8]]}}\nnope\n{"z": 1}\n')
    source = JsonlSource(path, MODEL)
    assert source.total == 4
    first, second = source.read(2)
    assert first.squeeze and first.inputs is not None and first.inputs["x"].shape == (1, 4)
    assert not second.squeeze and second.inputs is not None and second.inputs["x"].dtype == np.float32
    bad, missing = source.read(10)
    assert bad.inputs is None and "JSON" in (bad.error or "")
    assert missing.inputs is None and "missing input 'x'" in (missing.error or "")
    assert source.read(10) == []
    source.close()
    resumed = JsonlSource(path, MODEL, start=2, offset=second.end_offset)
    assert resumed.read(1)[0].index == 2
    resumed.close()


def test_npy_source_slices_requests_from_a_memory_map(tmp_path: Path) -> None:
    path = tmp_path / "in.npy"
    np.save(path, np.arange(28, dtype=np.float64).reshape(7, 4))
    source = NpySource(path, MODEL, rows_per_request=3, start=1)
    assert source.total == 3
    records = source.read(10)
    assert [r.index for r in records] == [1, 2]
    assert records[1].inputs is not None and records[1].inputs["x"].shape == (1, 4)
    assert records[0].inputs is not None and records[0].inputs["x"].dtype == np.float32
    source.close()


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.jsonl", "jsonl"), ("a.NPY", "npy"), ("a.parquet", "parquet"), ("a.csv", None)]
)
def test_formats_come_from_the_file_name(name: str, fmt: str | None) -> None:
    if fmt is None:
        with pytest.raises(BatchError):
            input_format(Path(name))
        with pytest.raises(BatchError):
            output_format(Path(name))
    else:
        assert input_format(Path(name)) == fmt


def test_progress_line_shows_rate_and_eta() -> None:
    progress = BatchProgress(total=1000, done=300, failed=2, resumed_from=100, started=0.0)
    assert progress_line(progress, now=10.0) == "300/1,000  30.0%  20 rec/s  ETA 35s  failed 2"
    assert "ETA ?" in progress_line(BatchProgress(total=10, started=0.0), now=1.0)


def test_npy_source_reads_correctly_while_releasing_read_pages(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    rows = np.arange(200_000 * 4, dtype=np.float32).reshape(200_000, 4)  # 3.2 MB: crosses the 4 MiB release step
    np.save(path, np.concatenate([rows, rows]))
    source = NpySource(path, MODEL, rows_per_request=1000)
    seen = 0
    while chunk := source.read(37):
        for record in chunk:
            assert record.inputs is not None
            start = record.index * 1000 % 200_000
            np.testing.assert_array_equal(record.inputs["x"], rows[start : start + 1000])
            seen += 1
    assert seen == source.total == 400
    source.close()
