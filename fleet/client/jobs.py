"""The client's view of an async job: the ``GET /v2/jobs/{id}`` document, with numpy outputs when done."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas import ErrorCode, JobStatus, SchemaError

from .wire import Array, decode_outputs

#: Statuses after which a job never changes again.
FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


@dataclass(frozen=True, slots=True)
class Job:
    """One async job as the gateway reports it (timestamps in epoch ms)."""

    id: str
    model: str
    version: str
    status: JobStatus
    created_ms: float
    started_ms: float | None = None
    deadline_ms: float | None = None
    expires_ms: float | None = None
    outputs: dict[str, Array] | None = None  # when done
    result: dict[str, Any] | None = None  # the OIP v2 infer response (JSON) when done
    error_code: ErrorCode | None = None  # when failed, cancelled or expired
    error: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """True once the job will not change any more."""
        return self.status in FINAL


def parse_job(doc: Any) -> Job:
    """A Job from the gateway's JSON document; SchemaError when it is not one."""
    if not isinstance(doc, dict):
        raise SchemaError("job document must be a JSON object")
    try:
        status = JobStatus(doc["status"])
        job_id, model, version = str(doc["job_id"]), str(doc["model"]), str(doc["version"])
    except (KeyError, ValueError) as exc:
        raise SchemaError(f"malformed job document: {exc}") from exc
    result = doc.get("result")
    outputs: dict[str, Array] | None = None
    if isinstance(result, dict):
        outputs = decode_outputs(result.get("outputs"))
    raw_error = doc.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    code = error.get("code")
    return Job(
        id=job_id,
        model=model,
        version=version,
        status=status,
        created_ms=float(doc.get("created_ms") or 0.0),
        started_ms=_optional(doc.get("started_ms")),
        deadline_ms=_optional(doc.get("deadline_ms")),
        expires_ms=_optional(doc.get("expires_ms")),
        outputs=outputs,
        result=result if isinstance(result, dict) else None,
        error_code=ErrorCode(code) if isinstance(code, str) and code in ErrorCode.__members__ else None,
        error=str(error.get("message", "")),
        raw=doc,
    )


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)
