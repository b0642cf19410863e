"""Where a registered artifact lives: a local path, or a URL the workers fetch from.

A URL lets workers on many machines load a model without a shared volume: ``http(s)://`` (any HTTP
server, a public object), and through fsspec ``s3://``, ``gs://`` (``gcs://``), ``az://`` (``abfs://``) and
``file://``, each store with the platform's own credential chain (environment, config files, instance or
workload identity: nothing is stored in the registry) and its optional extra (``inference-fleet[s3]``,
``[gcs]``, ``[azure]``). An object-store URL may name one object or a prefix (a directory of files). The
registry keeps the URL and the artifact's sha256; ``fleet models register`` fetches it once to read its
hash, size and signature, and every worker fetches it once into its disk cache (``workers.artifact_cache``)
and refuses a copy whose sha256 differs. A pre-signed URL is refused at registration
(:func:`expiring_reason`): it would expire before a later worker fetches it. Blocking (network and file
I/O): call it from a thread.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .artifact_tree import safe_relative
from .errors import ErrorCode, SchemaError

HTTP_SCHEMES = ("http", "https")
#: URL schemes fetched through fsspec, each with the extra that installs its filesystem.
STORE_SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "file": "",
}
REMOTE_SCHEMES = (*HTTP_SCHEMES, *STORE_SCHEMES)
#: Query parameters of pre-signed URLs (S3 v4 and v2, GCS, Azure SAS): they expire.
_SIGNATURE_PARAMS = frozenset(
    {"x-amz-signature", "x-amz-credential", "x-goog-signature", "x-goog-credential", "sig", "signature"}
)
#: Seconds a download may wait for the server between two chunks.
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class ArtifactFetchError(SchemaError):
    """The artifact at a URL could not be downloaded (the message says why)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot download artifact {redacted(url)}: {why}", code=ErrorCode.MODEL_LOAD_FAILED)


def is_remote(artifact: str) -> bool:
    """True for a URL of a scheme the fleet fetches (http(s), s3, gs, az, file, ...)."""
    return urlsplit(artifact).scheme.lower() in REMOTE_SCHEMES


def is_store(artifact: str) -> bool:
    """True for a URL fetched through fsspec (an object store or ``file://``), not plain HTTP."""
    return urlsplit(artifact).scheme.lower() in STORE_SCHEMES


def expiring_reason(url: str) -> str | None:
    """Why ``url`` must not be registered (a pre-signed URL carries a credential and expires), or None."""
    query = {key.lower() for key in parse_qs(urlsplit(url).query, keep_blank_values=True)}
    if urlsplit(url).scheme.lower() in HTTP_SCHEMES and query & _SIGNATURE_PARAMS:
        return (
            f"{redacted(url)} is a pre-signed URL: it carries a credential and expires before later workers fetch "
            "it; register the object-store URL instead (s3://bucket/key, gs://bucket/key, az://container/path) "
            "and give workers their own credentials"
        )
    return None


def artifact_suffix(artifact: str) -> str:
    """The file suffixes of a path or of a URL's path (``.onnx``, ``.pt``), without any query string."""
    path = urlsplit(artifact).path if is_remote(artifact) else artifact
    return "".join(PurePosixPath(path).suffixes)[-16:]


def redacted(url: str) -> str:
    """``url`` without its query string and credentials (a pre-signed URL's signature is a secret)."""
    parts = urlsplit(url)
    if not is_remote(url):
        return url
    host = parts.netloc.rpartition("@")[2]  # without user:password (the bucket's case kept)
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


def store_filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of a store URL and the path within it, with the platform's credentials read now.

    A new filesystem each call (fsspec's instance cache would keep the credentials of the first one after
    they were rotated). ArtifactFetchError when the store's extra is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
        return fs, str(path)
    except ImportError as exc:
        extra = STORE_SCHEMES.get(scheme, "")
        hint = f"pip install inference-fleet[{extra}]" if extra else str(exc)
        raise ArtifactFetchError(url, f"{scheme}:// needs a filesystem that is not installed ({hint})") from None
    except ValueError as exc:
        raise ArtifactFetchError(url, str(exc)) from None


def store_fetch(url: str, target: Path) -> bool:
    """Fetch one object, or every object under a prefix, into ``target``; True when it was a prefix (directory).

    A prefix's objects land under ``target`` (created) at their paths relative to it; a key that would
    land outside it is refused. ArtifactFetchError for a missing object, a refused credential or any
    other store error (the message names the URL, never a credential).
    """
    fs, path = store_filesystem(url)
    try:
        prefix = url.endswith("/") or fs.isdir(path)
        if not prefix:
            fs.get_file(path, str(target))
            return False
        root = path.rstrip("/")
        keys = [key for key in fs.find(root) if not key.endswith("/")]
        if not keys:
            raise ArtifactFetchError(url, "no object under this prefix")
        target.mkdir(parents=True, exist_ok=True)
        for key in keys:
            relative = safe_relative(key[len(root) :].lstrip("/"))
            if relative is None:
                raise ArtifactFetchError(url, f"object {key!r} is not under the prefix")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(key, str(destination))
        return True
    except ArtifactFetchError:
        raise
    except FileNotFoundError:
        raise ArtifactFetchError(url, "no such object or prefix") from None
    except Exception as exc:  # every store library raises its own error types (botocore, google, azure)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ArtifactFetchError(url, f"{type(exc).__name__}: {first}"[:300]) from None


def fetch_to(artifact: str, target: Path, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bool:
    """Copy a local artifact, or fetch a remote one, to ``target``; True when it is a directory (a local
    directory or a store prefix, copied under ``target``). ArtifactFetchError, or OSError
    (FileNotFoundError for a local path that does not exist)."""
    if is_store(artifact):
        return store_fetch(artifact, target)
    if is_remote(artifact):
        download(artifact, target, timeout_s=timeout_s)
        return False
    if Path(artifact).is_dir():
        shutil.copytree(artifact, target, symlinks=False)
        return True
    shutil.copyfile(artifact, target)
    return False
