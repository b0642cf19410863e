"""Errors of the autoscaler: one base class; Kafka and Redis failures are translated where they are called."""

from __future__ import annotations


class AutoscalerError(Exception):
    """Base of every autoscaler error."""

    #: Stable identifier (logs, metrics).
    code = "AUTOSCALER_ERROR"
    #: True when the next round may succeed (the controller logs it and goes on).
    retriable = False


class CollectorError(AutoscalerError):
    """The lag collector could not measure a model this round (broker down, no fetch answer in time)."""

    code = "COLLECTOR_UNAVAILABLE"
    retriable = True

    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"lag collection failed ({what}){detail}")


class StatsError(AutoscalerError):
    """Worker service stats could not be read from Redis."""

    code = "STATS_UNAVAILABLE"
    retriable = True


class BackendError(AutoscalerError):
    """A worker backend failed to report or change the number of workers."""

    code = "BACKEND_FAILED"
    retriable = True
