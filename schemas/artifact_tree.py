"""Artifacts that are directories (a Hugging Face model, an ONNX file with its external data) or archives of one.

A directory is identified by the sha256 of its manifest: one line ``{relative path}\\0{file sha256}\\n`` per
regular file, sorted by path (POSIX separators), so the same files hash the same wherever they sit and
whether they arrive as a directory, a ``.tar``/``.tar.gz``/``.tgz``/``.zip`` archive or an object-store prefix.
Symbolic links inside a local directory are followed (a Hugging Face cache snapshot links its files to blobs
elsewhere); directory links are not descended. An archive is extracted only when every member stays inside
the target (no absolute path, no ``..``, no link pointing out, no device or FIFO) and the whole fits
:data:`MAX_EXTRACTED_BYTES`; otherwise :class:`ArchiveError` says which member and why. An archive holding
one top-level directory and nothing else stands for that directory. Blocking (file I/O): call from a thread.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import ErrorCode, SchemaError

#: Archive suffixes served as directories (case-insensitive).
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
#: The most an archive may extract to (bytes), and the most members it may have.
MAX_EXTRACTED_BYTES = 64 << 30
MAX_MEMBERS = 100_000
_CHUNK = 1 << 20


class ArchiveError(SchemaError):
    """An archive that cannot be extracted safely (the message names the member and why)."""

    def __init__(self, archive: str | Path, why: str) -> None:
        super().__init__(f"archive {Path(archive).name}: {why}", code=ErrorCode.INVALID_REQUEST)


def is_archive(name: str | Path) -> bool:
    """True when ``name`` (a path or a URL's path) ends with an archive suffix."""
    return str(name).lower().endswith(ARCHIVE_SUFFIXES)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(directory: str | Path) -> list[tuple[str, Path]]:
    """Every regular file under ``directory`` (file links followed) as (relative POSIX path, path), sorted."""
    root = Path(directory)
    found: list[tuple[str, Path]] = []
    for current, _dirs, files in os.walk(root):
        for name in files:
            path = Path(current) / name
            if path.is_file():  # follows a link; a dangling link or a FIFO is left out
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def manifest_sha256(directory: str | Path) -> str:
    """The sha256 of ``directory``'s manifest (sorted relative paths, each with its file's sha256)."""
    digest = hashlib.sha256()
    for relative, path in tree_files(directory):
        digest.update(f"{relative}\0{_sha256(path)}\n".encode())
    return digest.hexdigest()


def tree_bytes(directory: str | Path) -> int:
    """The summed size of ``directory``'s files."""
    return sum(path.stat().st_size for _relative, path in tree_files(directory))


def tree_stamp(directory: str | Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """(relative path, size, mtime_ns, inode) of each file under ``directory``; None when it is not a directory."""
    if not Path(directory).is_dir():
        return None
    stamps = []
    for relative, path in tree_files(directory):
        st = path.stat()
        stamps.append((relative, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamps)


def artifact_sha256(path: str | Path) -> str:
    """A file's sha256, or a directory's manifest sha256."""
    return manifest_sha256(path) if Path(path).is_dir() else _sha256(Path(path))


def artifact_bytes(path: str | Path) -> int:
    """A file's size, or the summed size of a directory's files."""
    return tree_bytes(path) if Path(path).is_dir() else Path(path).stat().st_size


def safe_relative(name: str) -> PurePosixPath | None:
    """``name`` as a relative path that stays inside its root, or None (absolute, ``..``, a drive, empty)."""
    path = PurePosixPath(name)
    if not path.parts or name.startswith(("/", "\\")) or "\\" in name or ":" in path.parts[0]:
        return None
    if any(part == ".." for part in path.parts):
        return None
    parts = [part for part in path.parts if part != "."]
    return PurePosixPath(*parts) if parts else None


def extract_archive(archive: str | Path, target: str | Path, *, max_bytes: int = MAX_EXTRACTED_BYTES) -> Path:
    """Extract ``archive`` into the new directory ``target``; returns the directory that stands for the artifact.

    Raises ArchiveError for an archive that is not one, or a member that would land outside ``target``,
    a link pointing outside it, a device or FIFO, more than MAX_MEMBERS members or more than ``max_bytes``.
    ``target`` is removed again on failure.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, target, max_bytes)
        else:
            _extract_tar(archive, target, max_bytes)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    entries = list(target.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


def _extract_tar(archive: Path, target: Path, max_bytes: int) -> None:
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(archive, f"not a tar archive ({exc})") from None
    with tar:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise ArchiveError(archive, f"{len(members)} members, more than {MAX_MEMBERS}")
        total = 0
        for member in members:
            if member.isdir() and PurePosixPath(member.name).parts in ((), (".",)):
                continue  # the archive's root itself
            relative = safe_relative(member.name)
            if relative is None:
                raise ArchiveError(archive, f"member {member.name!r} is not a relative path inside the archive")
            if member.issym() or member.islnk():
                base = relative.parent if member.issym() else PurePosixPath()
                pointed = posixpath.normpath(str(base / member.linkname))
                if member.linkname.startswith("/") or pointed == ".." or pointed.startswith("../"):
                    raise ArchiveError(archive, f"link {member.name!r} points outside the archive ({member.linkname})")
            elif not (member.isfile() or member.isdir()):
                raise ArchiveError(archive, f"member {member.name!r} is a device or FIFO")
            total += max(member.size, 0)
            if total > max_bytes:
                raise ArchiveError(archive, f"extracts to more than {max_bytes} bytes")
        try:
            tar.extractall(target, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(archive, f"cannot extract ({type(exc).__name__}: {exc})") from None


def _extract_zip(archive: Path, target: Path, max_bytes: int) -> None:
    try:
        zipped = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(archive, f"not a zip archive ({exc})") from None
    with zipped:
        infos = zipped.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveError(archive, f"{len(infos)} members, more than {MAX_MEMBERS}")
        total = 0
        for info in infos:
            relative = safe_relative(info.filename)
            if relative is None:
                raise ArchiveError(archive, f"member {info.filename!r} is not a relative path inside the archive")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ArchiveError(archive, f"member {info.filename!r} is a symbolic link")
            destination = target / relative
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zipped.open(info) as source, open(destination, "wb") as out:
                    # Counted as written, not as declared: a member's declared size can lie.
                    for chunk in iter(lambda: source.read(_CHUNK), b""):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ArchiveError(archive, f"extracts to more than {max_bytes} bytes")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ArchiveError(archive, f"cannot extract {info.filename!r} ({exc})") from None
