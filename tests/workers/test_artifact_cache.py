"""The worker's local artifact cache: copy once, verify on every fetch, refetch what fails verification."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ErrorCode, ModelRecord
from workers.artifact_cache import ArtifactCache
from workers.errors import ModelLoadError


@pytest.fixture
def record(tmp_path: Path) -> ModelRecord:
    return build_record("tiny", "1", tiny_mlp(tmp_path / "models" / "tiny.onnx"))


def test_first_fetch_copies_then_hits(record: ModelRecord, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    first = cache.fetch(record)
    assert not first.hit and first.path == cache.path_for(record) and first.path.suffix == ".onnx"
    assert first.path.read_bytes() == Path(record.artifact).read_bytes()
    os.unlink(record.artifact)  # the source may go away: the cache serves
    second = cache.fetch(record)
    assert second.hit and second.path == first.path
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no partial files left


def test_a_rewritten_entry_is_detected_and_fetched_again(record: ModelRecord, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    path = cache.fetch(record).path
    path.write_bytes(path.read_bytes()[:-10])  # truncated: its stamp changed, so it is hashed again
    again = cache.fetch(record)
    assert not again.hit and again.refetched
    assert again.path.read_bytes() == Path(record.artifact).read_bytes()


def test_an_entry_corrupted_while_the_worker_was_down_is_detected(record: ModelRecord, tmp_path: Path) -> None:
    path = ArtifactCache(tmp_path / "cache").fetch(record).path
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size
    restarted = ArtifactCache(tmp_path / "cache")  # a new process hashes what it has not verified itself
    again = restarted.fetch(record)
    assert not again.hit and again.refetched
    assert again.path.read_bytes() == Path(record.artifact).read_bytes()
    assert restarted.fetch(record).hit


def test_a_source_that_does_not_match_the_registry_is_refused(record: ModelRecord, tmp_path: Path) -> None:
    Path(record.artifact).write_bytes(b"swapped after registration")
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="the registry expects") as caught:
        cache.fetch(record)
    assert caught.value.code is ErrorCode.MODEL_LOAD_FAILED
    assert not cache.path_for(record).exists()


def test_a_missing_source_is_a_load_error(record: ModelRecord, tmp_path: Path) -> None:
    os.unlink(record.artifact)
    with pytest.raises(ModelLoadError, match="does not exist"):
        ArtifactCache(tmp_path / "cache").fetch(record)
