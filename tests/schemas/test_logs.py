"""Shared log formatting: JSON or text lines that carry the request id(s) of the context they are logged in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from schemas import SettingsError
from schemas.logs import JsonFormatter, TextFormatter, configure_from_env, formatter, request_context


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("fleet.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def test_json_lines_carry_the_request_id_in_context(
    capture: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    logger.info("outside")
    with request_context(request_id="r-1"):
        logger.info("one %s", "request", extra={"model": "m"})
        with request_context(request_ids=["a", "b"]):
            logger.warning("a batch")
        logger.info("explicit wins", extra={"request_id": "r-2"})
    logger.info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("request_id") for line in lines] == [None, "r-1", "r-1", "r-2", None]
    assert lines[1]["msg"] == "one request" and lines[1]["model"] == "m" and lines[1]["level"] == "info"
    assert lines[2]["request_ids"] == ["a", "b"] and "request_ids" not in lines[3]
    assert lines[0]["ts"].endswith("Z") and lines[0]["logger"] == "fleet.test-logs"


def test_json_line_has_the_traceback(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    line = json.loads(stream.getvalue())
    assert "ValueError: boom" in line["exc"] and line["level"] == "error"


def test_text_lines_name_the_request(capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(TextFormatter())
    with request_context(request_id="r-9", request_ids=["x", "y"]):
        logger.info("hello", extra={"code": "INVALID_INPUT"})
    line = stream.getvalue().strip()
    assert line.endswith("INFO fleet.test-logs hello request_id=r-9 request_ids=x,y code=INVALID_INPUT")


def test_format_and_level_come_from_the_environment() -> None:
    assert isinstance(formatter("json"), JsonFormatter) and isinstance(formatter("text"), TextFormatter)
    with pytest.raises(SettingsError, match="FLEET_LOG_FORMAT must be one of text, json, not 'xml'"):
        configure_from_env({"FLEET_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="FLEET_LOG_LEVEL must be a log level"):
        configure_from_env({"FLEET_LOG_LEVEL": "LOUD"})
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_from_env({"FLEET_LOG_FORMAT": "JSON", "FLEET_LOG_LEVEL": "warning"})
        assert isinstance(root.handlers[-1].formatter, JsonFormatter) and root.level == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
