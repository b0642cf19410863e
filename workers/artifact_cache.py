"""The worker's local disk cache of model artifacts, keyed by sha256.

An artifact is copied once from its registered location (a local path, or fetched from a URL:
``http(s)://``, ``s3://``, ``gs://``, ``az://``, ``file://``, `schemas.artifact_source`) into
``{dir}/{sha[:2]}/{sha}{suffix}`` (the suffix keeps runtimes that look at it happy) and verified: a copy
whose sha256 differs from the record's is refused. A DIRECTORY artifact (a directory, a store prefix, or
an archive, extracted safely: `schemas.artifact_tree`) is cached as the directory ``{dir}/{sha[:2]}/{sha}``
and verified by its manifest sha256. A cached entry is hashed again whenever its (size, mtime, inode), of
each file for a directory, differ from what
this process last verified -- the first read after a restart, or after anything rewrote it -- so a
corrupted or tampered entry is detected, dropped and fetched again rather than loaded; an unchanged
file is not re-hashed on every reload (hashing 10 MB costs 15-60 ms on a busy 2-core machine, a large
part of the 100 ms reload target). Blocking (file I/O, hashing): call it from a worker thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from schemas import ModelRecord, sha256_file
from schemas.artifact_source import (
    DOWNLOAD_TIMEOUT_S,
    ArtifactFetchError,
    artifact_suffix,
    fetch_to,
    is_remote,
    redacted,
)
from schemas.artifact_tree import (
    MAX_EXTRACTED_BYTES,
    ArchiveError,
    extract_archive,
    is_archive,
    manifest_sha256,
    tree_bytes,
    tree_stamp,
)
from schemas.registry import DIRECTORY

from .errors import ModelLoadError

log = logging.getLogger("fleet.workers")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a regular file, None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/inference-fleet/artifacts`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inference-fleet" / "artifacts"


@dataclass(frozen=True, slots=True)
class CachedArtifact:
    """A verified local copy of an artifact and how it was obtained."""

    path: Path
    hit: bool  # True: read from the cache; False: fetched (copied) now
    refetched: bool = False  # True: a cached copy failed verification and was replaced
    size_bytes: int = 0  # the file's size, or the summed size of the directory's files


class ArtifactCache:
    """Artifacts copied into ``directory`` once, verified against the record's sha256 on every fetch."""

    def __init__(
        self,
        directory: str | Path,
        *,
        download_timeout_s: float = DOWNLOAD_TIMEOUT_S,
        max_extracted_bytes: int = MAX_EXTRACTED_BYTES,
    ) -> None:
        self.directory = Path(directory)
        #: Seconds a download of a remote artifact may wait for its server between two chunks.
        self.download_timeout_s = download_timeout_s
        #: The most an archive artifact may extract to.
        self.max_extracted_bytes = max_extracted_bytes
        self._verified: dict[Path, Hashable] = {}  # path -> its stamp when verified
        self._lock = threading.Lock()  # model threads fetch concurrently

    def path_for(self, record: ModelRecord) -> Path:
        """Where ``record``'s artifact lives in the cache."""
        if record.layout == DIRECTORY:
            return self.directory / record.sha256[:2] / record.sha256
        suffix = artifact_suffix(record.artifact)
        return self.directory / record.sha256[:2] / f"{record.sha256}{suffix}"

    def fetch(self, record: ModelRecord) -> CachedArtifact:
        """A verified local copy of ``record``'s artifact; raises ModelLoadError when none can be had."""
        target = self.path_for(record)
        tree = record.layout == DIRECTORY
        refetched = False
        stamp = tree_stamp(target) if tree else _stamp(target)
        if stamp is not None:
            with self._lock:
                known = self._verified.get(target) == stamp
            if known:
                return CachedArtifact(target, hit=True, size_bytes=_size(target, tree))
            try:
                digest = manifest_sha256(target) if tree else sha256_file(target)
            except OSError as exc:
                digest = f"unreadable ({exc})"
            if digest == record.sha256:
                self._remember(target, stamp)
                return CachedArtifact(target, hit=True, size_bytes=_size(target, tree))
            log.warning("cached %s has sha256 %s, expected %s: fetching it again", target, digest, record.sha256)
            _remove(target)
            refetched = True
        if tree:
            self._copy_tree(record, target)
        else:
            self._copy(record, target)
        self._remember(target, tree_stamp(target) if tree else _stamp(target))
        return CachedArtifact(target, hit=False, refetched=refetched, size_bytes=_size(target, tree))

    def _remember(self, target: Path, stamp: Hashable | None) -> None:
        with self._lock:
            if stamp is None:
                self._verified.pop(target, None)
            else:
                self._verified[target] = stamp

    def _copy(self, record: ModelRecord, target: Path) -> None:
        source = redacted(record.artifact)
        if not is_remote(record.artifact) and not os.path.isfile(record.artifact):
            raise ModelLoadError(record.name, record.version, f"artifact {source!r} does not exist")
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if fetch_to(record.artifact, partial, timeout_s=self.download_timeout_s):
                raise ModelLoadError(
                    record.name, record.version, f"artifact {source!r} is a directory, the registry expects a file"
                )
            digest = sha256_file(partial)
            if digest != record.sha256:
                raise ModelLoadError(
                    record.name,
                    record.version,
                    f"artifact {source!r} has sha256 {digest}, the registry expects {record.sha256}",
                )
            os.replace(partial, target)
        except ArtifactFetchError as exc:
            raise ModelLoadError(record.name, record.version, exc.message) from None
        except OSError as exc:
            raise ModelLoadError(record.name, record.version, f"cannot cache artifact {source!r}: {exc}") from exc
        finally:
            _remove(partial)

    def _copy_tree(self, record: ModelRecord, target: Path) -> None:
        """Fetch a directory, store prefix or archive (extracted) into ``target``, checked against its manifest."""
        source = redacted(record.artifact)
        if not is_remote(record.artifact) and not os.path.exists(record.artifact):
            raise ModelLoadError(record.name, record.version, f"artifact {source!r} does not exist")
        scratch = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            _remove(scratch)
            scratch.mkdir(parents=True)
            if is_archive(artifact_suffix(record.artifact)):
                archive = scratch / f"archive{artifact_suffix(record.artifact)}"
                if fetch_to(record.artifact, archive, timeout_s=self.download_timeout_s):
                    raise ModelLoadError(record.name, record.version, f"artifact {source!r} is not an archive")
                root = extract_archive(archive, scratch / "tree", max_bytes=self.max_extracted_bytes)
            else:
                root = scratch / "tree"
                if not fetch_to(record.artifact, root, timeout_s=self.download_timeout_s):
                    raise ModelLoadError(
                        record.name, record.version, f"artifact {source!r} is a file, the registry expects a directory"
                    )
            digest = manifest_sha256(root)
            if digest != record.sha256:
                raise ModelLoadError(
                    record.name,
                    record.version,
                    f"artifact {source!r} has manifest sha256 {digest}, the registry expects {record.sha256}",
                )
            if not target.exists():  # else another model thread cached the same (verified) artifact meanwhile
                os.rename(root, target)
        except (ArtifactFetchError, ArchiveError) as exc:
            raise ModelLoadError(record.name, record.version, exc.message) from None
        except OSError as exc:
            raise ModelLoadError(record.name, record.version, f"cannot cache artifact {source!r}: {exc}") from exc
        finally:
            _remove(scratch)


def _remove(path: Path) -> None:
    """Remove a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path, tree: bool) -> int:
    return tree_bytes(path) if tree else path.stat().st_size
