"""Where a registered artifact lives: a local path, or an ``http(s)://`` URL the workers download from.

A URL lets workers on many machines load a model without a shared volume: any HTTP server, or an
object store through a pre-signed or public URL (S3, GCS, Azure Blob, MinIO). The registry keeps the URL
and the artifact's sha256; ``fleet models register`` downloads it once to read its hash, size and
signature, and every worker downloads it once into its disk cache (``workers.artifact_cache``) and
refuses a copy whose sha256 differs. Blocking (network and file I/O): call it from a thread.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .errors import ErrorCode, SchemaError

REMOTE_SCHEMES = ("http", "https")
#: Seconds a download may wait for the server between two chunks.
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class ArtifactFetchError(SchemaError):
    """The artifact at a URL could not be downloaded (the message says why)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot download artifact {redacted(url)}: {why}", code=ErrorCode.MODEL_LOAD_FAILED)


def is_remote(artifact: str) -> bool:
    """True for an ``http://`` or ``https://`` URL."""
    return urlsplit(artifact).scheme.lower() in REMOTE_SCHEMES


def artifact_suffix(artifact: str) -> str:
    """The file suffixes of a path or of a URL's path (``.onnx``, ``.pt``), without any query string."""
    path = urlsplit(artifact).path if is_remote(artifact) else artifact
    return "".join(PurePosixPath(path).suffixes)[-16:]


def redacted(url: str) -> str:
    """``url`` without its query string and credentials (a pre-signed URL's signature is a secret)."""
    parts = urlsplit(url)
    if not is_remote(url):
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


def download(url: str, target: Path, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> int:
    """Stream ``url`` into ``target`` (created or replaced); returns the bytes written.

    Raises ArtifactFetchError for an HTTP error status, an unreachable server, a timeout or a body
    shorter than its Content-Length; a partial ``target`` is removed.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "inference-fleet"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
            written = out.tell()
            expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != written:
            raise ArtifactFetchError(url, f"got {written} of {expected} bytes")
        return written
    except urllib.error.HTTPError as exc:
        target.unlink(missing_ok=True)
        raise ArtifactFetchError(url, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        target.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise ArtifactFetchError(url, str(reason) or type(exc).__name__) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def fetch_to(artifact: str, target: Path, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Copy a local artifact, or download a remote one, to ``target``; ArtifactFetchError, or OSError
    (FileNotFoundError for a local path that does not exist)."""
    if is_remote(artifact):
        download(artifact, target, timeout_s=timeout_s)
    else:
        shutil.copyfile(artifact, target)
