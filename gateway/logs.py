"""The gateway's logging: the shared formatters of ``schemas.logs`` (kept here for existing imports)."""

from __future__ import annotations

from schemas.logs import JsonFormatter, TextFormatter, configure, configure_from_env

__all__ = ["JsonFormatter", "TextFormatter", "configure", "configure_from_env"]
