"""The worker's local disk cache of model artifacts, keyed by sha256.

An artifact is copied once from its registered location (a local path, or downloaded from an
``http(s)://`` URL, `schemas.artifact_source`) into ``{dir}/{sha[:2]}/{sha}{suffix}`` (the suffix keeps
runtimes that look at it happy) and verified: a copy whose sha256 differs from the
record's is refused. A cached file is hashed again whenever its (size, mtime, inode) differ from what
this process last verified -- the first read after a restart, or after anything rewrote it -- so a
corrupted or tampered entry is detected, dropped and fetched again rather than loaded; an unchanged
file is not re-hashed on every reload (hashing 10 MB costs 15-60 ms on a busy 2-core machine, a large
part of the 100 ms reload target). Blocking (file I/O, hashing): call it from a worker thread.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
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


class ArtifactCache:
    """Artifacts copied into ``directory`` once, verified against the record's sha256 on every fetch."""

    def __init__(self, directory: str | Path, *, download_timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        #: Seconds a download of a remote artifact may wait for its server between two chunks.
        self.download_timeout_s = download_timeout_s
        self._verified: dict[Path, tuple[int, int, int]] = {}  # path -> (size, mtime_ns, inode) when verified
        self._lock = threading.Lock()  # model threads fetch concurrently

    def path_for(self, record: ModelRecord) -> Path:
        """Where ``record``'s artifact lives in the cache."""
        suffix = artifact_suffix(record.artifact)
        return self.directory / record.sha256[:2] / f"{record.sha256}{suffix}"

    def fetch(self, record: ModelRecord) -> CachedArtifact:
        """A verified local copy of ``record``'s artifact; raises ModelLoadError when none can be had."""
        target = self.path_for(record)
        refetched = False
        stamp = _stamp(target)
        if stamp is not None:
            with self._lock:
                known = self._verified.get(target) == stamp
            if known:
                return CachedArtifact(target, hit=True)
            try:
                digest = sha256_file(target)
            except OSError as exc:
                digest = f"unreadable ({exc})"
            if digest == record.sha256:
                self._remember(target, stamp)
                return CachedArtifact(target, hit=True)
            log.warning("cached %s has sha256 %s, expected %s: fetching it again", target, digest, record.sha256)
            target.unlink(missing_ok=True)
            refetched = True
        self._copy(record, target)
        self._remember(target, _stamp(target))
        return CachedArtifact(target, hit=False, refetched=refetched)

    def _remember(self, target: Path, stamp: tuple[int, int, int] | None) -> None:
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
            fetch_to(record.artifact, partial, timeout_s=self.download_timeout_s)
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
            partial.unlink(missing_ok=True)
