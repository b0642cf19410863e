"""Where the OpenAI Batch API's files live: a local directory or an object store (fsspec), never Redis.

``FLEET_GATEWAY_FILES_DIR`` is a directory path or an fsspec URL (``s3://bucket/prefix``, ``gs://...``,
``az://...``, ``file:///...``: the store's extra installs its filesystem, credentials come from the platform's
chain). Every gateway of a fleet must see the same store: a batch started by one gateway is resumed by another.

Layout under the root: ``files/{id}`` (the content) and ``files/{id}.json`` (the OpenAI file object);
``batches/{batch}/{out|err}-{seq:06d}-{token}.jsonl`` (the committed parts of a running batch's output and error
file, each written whole, once, under a name no other run uses). Every method blocks (file or network I/O): call
it from a thread.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import fsspec

from schemas import SchemaError

_COPY_CHUNK = 1 << 20


class FileStore:
    """Whole-object reads and writes under one root (a directory or an fsspec URL)."""

    def __init__(self, root: str) -> None:
        if "://" in root:
            self._fs, path = fsspec.core.url_to_fs(root)
            self._root = path.rstrip("/")
        else:
            self._fs = fsspec.filesystem("file")
            self._root = str(Path(root).expanduser().resolve())
        self.url = root
        protocol = self._fs.protocol
        self._local = "file" in (protocol if isinstance(protocol, tuple | list) else (protocol,))

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise SchemaError(f"bad store name {name!r}")
        return f"{self._root}/{name}"

    def _parent(self, name: str) -> None:
        if self._local:  # object stores have no directories to make
            os.makedirs(self._path(name).rpartition("/")[0], exist_ok=True)

    def write(self, name: str, chunks: Iterable[bytes]) -> int:
        """Write ``name`` whole from ``chunks`` (replacing it); its size in bytes."""
        self._parent(name)
        size = 0
        tmp = self._path(name) + ".partial"
        with self._fs.open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
        self._fs.mv(tmp, self._path(name))
        return size

    def write_bytes(self, name: str, data: bytes) -> int:
        """Write ``name`` whole."""
        return self.write(name, [data])

    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        """Write ``name`` as a JSON document."""
        self.write_bytes(name, json.dumps(doc).encode())

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON document ``name``, or None when there is none."""
        try:
            with self._fs.open(self._path(name), "rb") as fh:
                doc = json.loads(fh.read())
        except FileNotFoundError:
            return None
        return doc if isinstance(doc, dict) else None

    def open(self, name: str) -> IO[bytes]:
        """``name`` opened for reading (seekable); FileNotFoundError when missing."""
        fh: IO[bytes] = self._fs.open(self._path(name), "rb")
        return fh

    def concat(self, name: str, parts: list[str]) -> int:
        """Write ``name`` as the parts one after another (the parts stay); its size."""

        def chunks() -> Iterable[bytes]:
            for part in parts:
                with self.open(part) as fh:
                    while chunk := fh.read(_COPY_CHUNK):
                        yield chunk

        return self.write(name, chunks())

    def upload(self, name: str, local: Path) -> int:
        """Copy the local file ``local`` to ``name``; its size."""
        self._parent(name)
        with open(local, "rb") as src, self._fs.open(self._path(name) + ".partial", "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
        self._fs.mv(self._path(name) + ".partial", self._path(name))
        return local.stat().st_size

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under ``prefix`` (best effort)."""
        try:
            self._fs.rm(self._path(prefix), recursive=True)
        except FileNotFoundError:
            pass
