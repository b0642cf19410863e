"""What kind of model file (or directory) an artifact is, read from its first bytes and its layout (no ML
library needed).

Used at registration to infer the framework and by the workers' loaders to pick a reader.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

#: File kinds :func:`sniff` tells apart.
ONNX = "onnx"
SAFETENSORS = "safetensors"
TORCH_EXPORT = "torch-export"
TORCHSCRIPT = "torchscript"
CHECKPOINT = "checkpoint"  # torch.save (zip without code/, or a legacy pickle)
SKOPS = "skops"
XGBOOST = "xgboost"
LIGHTGBM = "lightgbm"
TRANSFORMERS = "transformers"  # a Hugging Face model directory (config.json + safetensors weights)


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of a JSON object."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) < 8:
                return False
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= 100 * 1024 * 1024:
                return False
            header = file.read(length)
    except OSError:
        return False
    if len(header) != length or not header.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:
        return False


def zip_names(path: str | Path) -> list[str] | None:
    """The member names of a zip archive, or None when ``path`` is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _zip_kind(names: list[str]) -> str:
    if "schema.json" in names:
        return SKOPS
    if any(name == "archive_format" or name.endswith("/archive_format") for name in names):
        return TORCH_EXPORT  # torch.export.save's PT2 archive
    if any("/code/" in f"/{name}" for name in names):
        return TORCHSCRIPT
    return CHECKPOINT


def _head(path: Path, size: int = 256) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


def sniff(path: str | Path) -> str | None:
    """The kind of model file at ``path`` (one of this module's constants), or None when not recognised."""
    path = Path(path)
    if path.suffix == ".onnx":
        return ONNX
    names = zip_names(path)
    if names is not None:
        return _zip_kind(names)
    if is_safetensors(path):
        return SAFETENSORS
    head = _head(path)
    if head.startswith(b"tree\n") or head.startswith(b"tree\r\n"):
        return LIGHTGBM
    stripped = head.lstrip()
    if stripped.startswith(b'{"learner"') or (head.startswith(b"{") and b"learner" in head[:32]):
        return XGBOOST  # JSON, or UBJSON ({ L <len> learner ...)
    if head[:1] == b"\x80":
        return CHECKPOINT  # a legacy torch.save pickle (never unpickled here)
    return None


def onnx_model_file(directory: str | Path) -> Path | None:
    """The ONNX model of a directory artifact: its ``model.onnx``, else its only top-level ``*.onnx``; or None."""
    root = Path(directory)
    if (root / "model.onnx").is_file():
        return root / "model.onnx"
    found = sorted(path for path in root.glob("*.onnx") if path.is_file())
    return found[0] if len(found) == 1 else None


def hf_config(directory: str | Path) -> dict[str, object] | None:
    """A Hugging Face model directory's ``config.json`` as a dict, or None when it has none (or it is not JSON)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def sniff_directory(directory: str | Path) -> str | None:
    """The kind of a directory artifact: TRANSFORMERS (config.json and safetensors weights), ONNX (one model
    file, :func:`onnx_model_file`), or None."""
    root = Path(directory)
    if hf_config(root) is not None and any(root.glob("*.safetensors")):
        return TRANSFORMERS
    if onnx_model_file(root) is not None:
        return ONNX
    return None
