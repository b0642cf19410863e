"""Artifacts at http(s) URLs: what counts as remote, suffixes and redaction, and downloads from a real
HTTP server (success, an error status, an unreachable server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.local.servers import free_port
from schemas import ErrorCode
from schemas.artifact_source import ArtifactFetchError, artifact_suffix, download, fetch_to, is_remote, redacted
from tests.fileserver import serve_folder


def test_urls_are_remote_and_paths_are_not() -> None:
    assert is_remote("https://bucket.s3.amazonaws.com/m/model.onnx?X-Amz-Signature=abc")
    assert is_remote("HTTP://host/model.onnx")
    assert not is_remote("/models/model.onnx") and not is_remote("C:/models/model.onnx")
    assert is_remote("s3://bucket/model.onnx") and is_remote("gs://b/m/") and is_remote("file:///m.onnx")


def test_suffix_ignores_the_query_and_redaction_hides_secrets() -> None:
    url = "https://user:pw@host:9000/models/resnet.v2.onnx?X-Amz-Signature=secret"
    assert artifact_suffix(url) == ".v2.onnx"
    assert artifact_suffix("/models/model.pt") == ".pt"
    assert redacted(url) == "https://host:9000/models/resnet.v2.onnx?..."
    assert redacted("/models/model.pt") == "/models/model.pt"


def test_download_writes_the_file_and_errors_say_why(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.onnx").write_bytes(b"x" * 300_000)
    with serve_folder(served) as base:
        assert download(f"{base}/model.onnx", tmp_path / "copy") == 300_000
        assert (tmp_path / "copy").read_bytes() == b"x" * 300_000
        fetch_to(f"{base}/model.onnx", tmp_path / "again")
        assert (tmp_path / "again").stat().st_size == 300_000
        with pytest.raises(ArtifactFetchError, match=r"model-gone.onnx\?\.\.\.: HTTP 404 File not found") as missing:
            download(f"{base}/model-gone.onnx?sig=secret", tmp_path / "missing")
    assert missing.value.code is ErrorCode.MODEL_LOAD_FAILED and "secret" not in missing.value.message
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ArtifactFetchError, match="cannot download artifact"):
        download(f"http://127.0.0.1:{free_port()}/model.onnx", tmp_path / "refused", timeout_s=2)
    with pytest.raises(FileNotFoundError):
        fetch_to(str(tmp_path / "nowhere.onnx"), tmp_path / "x")
