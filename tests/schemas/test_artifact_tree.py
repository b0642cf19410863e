"""Directory artifacts: the manifest hash (the same for a directory and its archives), safe extraction (traversal,
links out, devices and size caps refused, nothing written outside), and records with the new optional fields."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from schemas import Framework, ModelRecord, TensorSpec
from schemas.artifact_tree import ArchiveError, extract_archive, is_archive, manifest_sha256, tree_bytes
from schemas.codec import pack, unpack_envelope
from schemas.registry import DIRECTORY, FILE


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"graph")
    (root / "sub" / "weights.bin").write_bytes(b"\0" * 100)
    return root


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_a_directory_and_its_archives_hash_the_same(tmp_path: Path) -> None:
    root = _tree(tmp_path / "model")
    digest = manifest_sha256(root)
    assert tree_bytes(root) == 105
    with tarfile.open(tmp_path / "flat.tar.gz", "w:gz") as tar:
        tar.add(root, arcname=".")
    with tarfile.open(tmp_path / "nested.tar", "w") as tar:
        tar.add(root, arcname="model")  # one top-level folder stands for the artifact
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zipped:
        for path in sorted(root.rglob("*")):
            zipped.write(path, path.relative_to(root).as_posix())
    for name in ("flat.tar.gz", "nested.tar", "m.zip"):
        assert is_archive(name)
        extracted = extract_archive(tmp_path / name, tmp_path / f"x-{name}")
        assert manifest_sha256(extracted) == digest, name
    (root / "sub" / "weights.bin").write_bytes(b"\1" * 100)
    assert manifest_sha256(root) != digest  # a changed file changes the hash
    (root / "sub" / "weights.bin").rename(root / "weights.bin")
    assert manifest_sha256(root) != manifest_sha256(_tree(tmp_path / "other"))  # so does a moved one


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([(_member("../evil.txt"), b"x")], "'../evil.txt' is not a relative path"),
        ([(_member("/tmp/evil.txt"), b"x")], "'/tmp/evil.txt' is not a relative path"),
        ([(_member("a/../../evil.txt"), b"x")], "is not a relative path"),
        ([(_member("link", tarfile.SYMTYPE, "../../etc/passwd"), b"")], "link 'link' points outside"),
        ([(_member("link", tarfile.SYMTYPE, "/etc/passwd"), b"")], "link 'link' points outside"),
        ([(_member("hard", tarfile.LNKTYPE, "../x"), b"")], "link 'hard' points outside"),
        ([(_member("dev", tarfile.CHRTYPE), b"")], "'dev' is a device or FIFO"),
        ([(_member("big.bin"), b"x" * 600)], "extracts to more than 500 bytes"),
    ],
)
def test_an_unsafe_tar_is_refused_and_writes_nothing(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], why: str
) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", [(_member("ok.txt"), b"fine"), *members])
    target = tmp_path / "deep" / "target"
    with pytest.raises(ArchiveError, match="archive bad.tar.gz: .*" + why.replace("(", r"\(")):
        extract_archive(archive, target, max_bytes=500)
    assert not target.exists()  # removed again, ok.txt included
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.tar.gz", "deep"]


def test_a_link_inside_the_archive_is_kept(tmp_path: Path) -> None:
    link = _member("a/b/link", tarfile.SYMTYPE, "../data")
    archive = _tar(tmp_path / "ok.tar", [(_member("a/data"), b"d"), (link, b"")])
    root = extract_archive(archive, tmp_path / "t")
    assert (root / "b" / "link").read_bytes() == b"d"


@pytest.mark.parametrize(
    ("name", "why"), [("../evil.txt", "not a relative path"), ("/abs.txt", "not a relative path"), ("c:/x", "not")]
)
def test_an_unsafe_zip_is_refused(tmp_path: Path, name: str, why: str) -> None:
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zipped:
        zipped.writestr("ok.txt", b"fine")
        zipped.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(ArchiveError, match=why):
        extract_archive(tmp_path / "bad.zip", tmp_path / "t")
    assert not (tmp_path / "t").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_a_zip_bomb_is_stopped_at_the_cap(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("zeros", b"\0" * 100_000)
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        extract_archive(tmp_path / "bomb.zip", tmp_path / "t", max_bytes=1000)


def test_not_an_archive_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ArchiveError, match="not a tar archive"):
        extract_archive(tmp_path / "m.tar.gz", tmp_path / "t")


def _record(**fields: object) -> ModelRecord:
    return ModelRecord(
        name="m", version="1", framework=Framework.TRANSFORMERS, artifact="s3://b/m/", sha256="0" * 64,
        inputs=(TensorSpec("text", "BYTES", (-1,)),), outputs=(TensorSpec("embedding", "FP32", (-1, 32)),),
        **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_new_record_fields_round_trip_and_old_records_still_decode() -> None:
    record = _record(layout=DIRECTORY, task="feature-extraction", options={"pooling": "cls"})
    assert ModelRecord.from_bytes(record.to_bytes()) == record
    old = unpack_envelope(record.to_bytes(), "model record")
    for key in ("layout", "task", "options"):
        del old[key]
    old["framework"] = "onnx"
    decoded = ModelRecord.from_bytes(pack(old))
    assert (decoded.layout, decoded.task, decoded.options) == (FILE, None, {})
    with pytest.raises(Exception, match="needs a task"):
        _record()
