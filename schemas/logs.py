"""Process logging shared by the services: plain text (local default) or one JSON object per line.

``FLEET_LOG_FORMAT=json`` selects JSON (the deploy examples set it), ``text`` (default) a readable line;
``FLEET_LOG_LEVEL`` sets the level (default INFO). Both formats carry the request id in hand: the
gateway sets it for each HTTP request (``request_context(request_id=...)``), a worker sets the ids of the
batch it runs (``request_context(request_ids=[...])``); every line logged inside that context has
``request_id`` (or ``request_ids``) without the call site passing it. Fields given as ``extra=`` win.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from .settings import SettingsError

LOG_LEVEL_ENV = "FLEET_LOG_LEVEL"
LOG_FORMAT_ENV = "FLEET_LOG_FORMAT"
LOG_FORMATS = ("text", "json")

#: The request a task is handling (gateway: one HTTP request; worker: a request answered on its own).
REQUEST_ID: ContextVar[str | None] = ContextVar("fleet_request_id", default=None)
#: The requests of the batch a worker task is running.
REQUEST_IDS: ContextVar[tuple[str, ...]] = ContextVar("fleet_request_ids", default=())

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextmanager
def request_context(request_id: str | None = None, request_ids: Iterable[str] = ()) -> Iterator[None]:
    """Lines logged inside carry ``request_id`` and/or ``request_ids`` (restored on exit)."""
    one = REQUEST_ID.set(request_id) if request_id is not None else None
    ids = tuple(request_ids)
    many = REQUEST_IDS.set(ids) if ids else None
    try:
        yield
    finally:
        if many is not None:
            REQUEST_IDS.reset(many)
        if one is not None:
            REQUEST_ID.reset(one)


def _context_fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {}
    request_id = REQUEST_ID.get()
    if request_id is not None and not hasattr(record, "request_id"):
        fields["request_id"] = request_id
    request_ids = REQUEST_IDS.get()
    if request_ids and not hasattr(record, "request_ids"):
        fields["request_ids"] = list(request_ids)
    return fields


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, "request_ids"?, <extra fields>, "exc"?}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context_fields(record))
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message request_id=... key=value...`` (the extra fields): the readable default."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _context_fields(record)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = value
        for key, value in fields.items():
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            line += f" {key}={text}"
        return line


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` ("text" or "json"); SettingsError otherwise."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise SettingsError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr in ``fmt``; replaces the root logger's handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt.strip().lower()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure_from_env(environ: Mapping[str, str]) -> None:
    """``configure`` from ``FLEET_LOG_LEVEL`` and ``FLEET_LOG_FORMAT``; SettingsError on a bad format."""
    level = environ.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    if logging.getLevelName(level) == f"Level {level}":
        raise SettingsError(f"{LOG_LEVEL_ENV} must be a log level (DEBUG, INFO, WARNING, ERROR), not {level!r}")
    configure(level, environ.get(LOG_FORMAT_ENV, "text"))
