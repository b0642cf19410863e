"""The gateway's OpenAPI 3.1 description, served at ``GET /v2/openapi.json`` (hand-written, kept in step
with ``gateway.routes``, ``gateway.job_routes``, ``gateway.pipeline_routes`` and ``gateway.openai_batches``;
``tests/gateway/test_openapi.py`` checks both ways)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from schemas import DATATYPES, HTTP_STATUS, ErrorCode

from .batch_state import ENDPOINTS
from .openai_routes import openapi_paths as generation_paths

OPENAPI_PATH = "/v2/openapi.json"

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*codes: ErrorCode) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(HTTP_STATUS[code], []).append(code.value)
    return {
        str(status): {"$ref": f"#/components/responses/Error{status}"}
        for status, _ in sorted(by_status.items(), key=lambda item: item[0])
    }


_AUTH = (ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN)
_LOOKUP = (ErrorCode.MODEL_NOT_FOUND, ErrorCode.BACKEND_UNAVAILABLE)
_PARAMETER_VALUE = {"type": ["string", "number", "integer", "boolean"]}
_TENSOR_DATA = {
    "type": "array",
    "description": "Row-major values (strings for BYTES, booleans for BOOL); lists nested to the shape are "
    "accepted too.",
    "items": {"type": ["number", "string", "boolean"]},
}
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What went wrong."},
            "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": sorted(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1 marks a variable dimension."},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        },
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "version", "ready"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "InferInput": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "datatype": {"type": "string", "enum": sorted(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": _TENSOR_DATA,
            "parameters": {
                "type": "object",
                "description": "binary_data_size: bytes of this input in the binary part (binary extension).",
                "additionalProperties": _PARAMETER_VALUE,
            },
        },
    },
    "InferOutputRequest": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "parameters": {
                "type": "object",
                "properties": {"binary_data": {"type": "boolean"}},
                "additionalProperties": _PARAMETER_VALUE,
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("InferInput")},
            "outputs": {"type": "array", "items": _ref("InferOutputRequest")},
            "parameters": {
                "type": "object",
                "description": "timeout_ms (number), lane (interactive|bulk), binary_data_output (boolean); "
                "others are passed to the worker.",
                "properties": {
                    "timeout_ms": {"type": "number", "exclusiveMinimum": 0},
                    "lane": {"type": "string", "enum": ["interactive", "bulk"]},
                    "binary_data_output": {"type": "boolean"},
                },
                "additionalProperties": _PARAMETER_VALUE,
            },
        },
    },
    "InferOutput": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array", "items": {"type": ["number", "string", "boolean"]}},
            "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "id", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": _ref("InferOutput")},
        },
    },
    "JobAccepted": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {"job_id": {"type": "string"}, "status": {"type": "string"}},
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "model", "version", "status"],
        "properties": {
            "job_id": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "running", "done", "failed", "cancelled", "expired"]},
            "created_ms": {"type": ["number", "null"]},
            "started_ms": {"type": ["number", "null"]},
            "deadline_ms": {"type": ["number", "null"]},
            "expires_ms": {"type": ["number", "null"]},
            "result": _ref("InferResponse"),
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "PipelineStep": {
        "type": "object",
        "required": ["name", "model", "version", "inputs"],
        "properties": {
            "name": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": ["string", "null"], "description": "null: the model's default at request time."},
            "inputs": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "PipelineMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs", "steps"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string", "enum": ["pipeline"]},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "steps": {"type": "array", "items": _ref("PipelineStep")},
        },
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "OpenAIFile": {
        "type": "object",
        "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["file"]},
            "bytes": {"type": "integer", "minimum": 0},
            "created_at": {"type": "integer"},
            "filename": {"type": "string"},
            "purpose": {"type": "string"},
            "status": {"type": "string"},
            "status_details": {"type": ["string", "null"]},
        },
    },
    "OpenAIBatch": {
        "type": "object",
        "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["batch"]},
            "endpoint": {"type": "string"},
            "errors": {
                "type": ["object", "null"],
                "properties": {"object": {"type": "string"}, "data": {"type": "array", "items": {"type": "object"}}},
            },
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "validating",
                    "failed",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "expired",
                    "cancelling",
                    "cancelled",
                ],
            },
            "output_file_id": {"type": ["string", "null"]},
            "error_file_id": {"type": ["string", "null"]},
            "created_at": {"type": "integer"},
            "in_progress_at": {"type": ["integer", "null"]},
            "expires_at": {"type": ["integer", "null"]},
            "finalizing_at": {"type": ["integer", "null"]},
            "completed_at": {"type": ["integer", "null"]},
            "failed_at": {"type": ["integer", "null"]},
            "expired_at": {"type": ["integer", "null"]},
            "cancelling_at": {"type": ["integer", "null"]},
            "cancelled_at": {"type": ["integer", "null"]},
            "request_counts": {
                "type": "object",
                "required": ["total", "completed", "failed"],
                "properties": {
                    "total": {"type": "integer"},
                    "completed": {"type": "integer"},
                    "failed": {"type": "integer"},
                },
            },
            "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
        },
    },
    "OpenAIBatchList": {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("OpenAIBatch")},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    },
}

_ERROR_TEXT = {
    400: "Malformed request or input (INVALID_REQUEST, INVALID_INPUT).",
    401: "Missing, unknown or revoked API key (UNAUTHENTICATED).",
    403: "The API key may not use this model (FORBIDDEN).",
    404: "Unknown model, version or job.",
    408: "The request body did not arrive within FLEET_GATEWAY_BODY_TIMEOUT_S (REQUEST_TIMEOUT).",
    409: "The job's state does not allow this (CONFLICT).",
    413: "Request over FLEET_GATEWAY_MAX_BODY_BYTES, as sent or as queued (PAYLOAD_TOO_LARGE).",
    429: "A rate limit's token bucket is empty (RATE_LIMITED); see Retry-After.",
    500: "The model failed (MODEL_ERROR) or an internal error.",
    503: "Kafka or Redis unavailable, or the gateway is stopping (BACKEND_UNAVAILABLE); nothing can serve the "
    "model (MODEL_UNAVAILABLE, MODEL_LOAD_FAILED; on .../ready: not ready, with state and reason); the gateway "
    "or the model is past its capacity (OVERLOADED, see Retry-After).",
    504: "No reply before the request's deadline (DEADLINE_EXCEEDED).",
}


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, text in _ERROR_TEXT.items():
        response: dict[str, Any] = _json(_ref("Error"), text)
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 429:
            response["headers"] = {
                "Retry-After": {"description": "Whole seconds to wait.", "schema": {"type": "integer"}}
            }
        responses[f"Error{status}"] = response
    return responses


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


_MODEL = _path_param("model", "Model name.")
_VERSION = _path_param("version", "Model version.")
_OPEN: list[dict[str, list[str]]] = []  # no security requirement


def _model_operations(versioned: bool) -> dict[str, dict[str, Any]]:
    params = [_MODEL, _VERSION] if versioned else [_MODEL]
    suffix = " of one version" if versioned else ""
    infer_errors = _errors(
        ErrorCode.INVALID_REQUEST,
        *_AUTH,
        *_LOOKUP,
        ErrorCode.VERSION_NOT_FOUND,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.REQUEST_TIMEOUT,
        ErrorCode.RATE_LIMITED,
        ErrorCode.MODEL_ERROR,
        ErrorCode.MODEL_UNAVAILABLE,
        ErrorCode.OVERLOADED,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.CONFLICT,
    )
    return {
        "metadata": {
            "get": {
                "summary": f"Model metadata{suffix}",
                "operationId": "modelVersionMetadata" if versioned else "modelMetadata",
                "parameters": params,
                "responses": {
                    "200": _json(_ref("ModelMetadata"), "Name, versions, platform, inputs and outputs."),
                    **_errors(*_AUTH, *_LOOKUP, ErrorCode.VERSION_NOT_FOUND),
                },
            }
        },
        "ready": {
            "get": {
                "summary": f"Model readiness{suffix}",
                "operationId": "modelVersionReady" if versioned else "modelReady",
                "parameters": params,
                "responses": {
                    "200": _json(_ref("ModelReady"), "A live worker serves this version now."),
                    **_errors(*_AUTH, *_LOOKUP, ErrorCode.VERSION_NOT_FOUND, ErrorCode.MODEL_UNAVAILABLE),
                },
            }
        },
        "infer": {
            "post": {
                "summary": f"Inference{suffix} (sync; async with ?async=true or Prefer: respond-async)",
                "operationId": "modelVersionInfer" if versioned else "modelInfer",
                "parameters": [
                    *params,
                    {"name": "async", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}},
                    {"name": "Prefer", "in": "header", "schema": {"type": "string"}},
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-Fleet-Timeout-Ms", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-Fleet-Lane", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {"schema": _ref("InferRequest")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"},
                            "description": "Binary tensor extension: JSON header of "
                            "Inference-Header-Content-Length bytes, then the raw tensors.",
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The outputs (binary extension when an output is binary).",
                        "content": {
                            _JSON: {"schema": _ref("InferResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "202": {
                        **_json(_ref("JobAccepted"), "Async job accepted; poll the Location."),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **infer_errors,
                },
            }
        },
    }


def _triton_operation(kind: str, versioned: bool | None, summary: str) -> dict[str, Any]:
    """``GET .../config`` or ``.../stats`` (``gateway.model_config``); ``versioned`` None: no model in the path."""
    params = [] if versioned is None else [_MODEL, _VERSION] if versioned else [_MODEL]
    scope = "All" if versioned is None else "Version" if versioned else ""
    return {
        "get": {
            "summary": summary,
            "operationId": f"model{scope}{kind.capitalize()}",
            "parameters": params,
            "responses": {
                "200": _json({"type": "object"}, "The document in the shape Triton's clients read."),
                **_errors(*_AUTH, *_LOOKUP, ErrorCode.VERSION_NOT_FOUND),
            },
        }
    }


def _pipeline_paths() -> dict[str, Any]:
    """``/v2/pipelines/{model}`` (metadata) and ``.../infer``: a pipeline is called like a model."""
    pipeline = _path_param("model", "Pipeline name.")
    infer = _model_operations(False)["infer"]
    infer["post"]["summary"] = "Run a pipeline (sync; async with ?async=true or Prefer: respond-async)"
    infer["post"]["operationId"] = "pipelineInfer"
    infer["post"]["parameters"] = [pipeline, *infer["post"]["parameters"][1:]]
    return {
        "/v2/pipelines/{model}": {
            "get": {
                "summary": "Pipeline metadata: inputs, outputs and steps (versions resolved now)",
                "operationId": "pipelineMetadata",
                "parameters": [pipeline],
                "responses": {
                    "200": _json(_ref("PipelineMetadata"), "Name, version, inputs, outputs and steps."),
                    **_errors(*_AUTH, *_LOOKUP, ErrorCode.MODEL_UNAVAILABLE),
                },
            }
        },
        "/v2/pipelines/{model}/infer": infer,
    }


_OPENAI_ERROR_TEXT = {
    400: "Malformed request (invalid_request_error).",
    401: "Missing, unknown or revoked API key.",
    404: "No such file or batch, or one another API key created.",
    408: "The request body did not arrive in time.",
    413: "File over FLEET_GATEWAY_FILES_MAX_BYTES.",
    503: "Redis or the file store unavailable.",
}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    """Error answers of the Files and Batch routes: OpenAI's error body."""
    responses: dict[str, Any] = {}
    for status in sorted(statuses):
        response = _json(_ref("OpenAIError"), _OPENAI_ERROR_TEXT[status])
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


def _batch_paths() -> dict[str, Any]:
    """OpenAI's Files and Batch API (``gateway.openai_batches``)."""
    file_id = _path_param("file_id", "File id (file-...).")
    batch_id = _path_param("batch_id", "Batch id (batch_...).")
    lookup = _openai_errors(400, 401, 404, 503)
    return {
        "/v1/files": {
            "post": {
                "summary": "Upload a JSONL file of batch requests (OpenAI Files API)",
                "operationId": "openaiUploadFile",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["purpose", "file"],
                                "properties": {
                                    "purpose": {"type": "string", "enum": ["batch"]},
                                    "file": {"type": "string", "format": "binary"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("OpenAIFile"), "The stored file."),
                    **_openai_errors(400, 401, 408, 413, 503),
                },
            }
        },
        "/v1/files/{file_id}": {
            "get": {
                "summary": "A file object",
                "operationId": "openaiRetrieveFile",
                "parameters": [file_id],
                "responses": {"200": _json(_ref("OpenAIFile"), "The file."), **lookup},
            }
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "summary": "A file's bytes (JSONL)",
                "operationId": "openaiFileContent",
                "parameters": [file_id],
                "responses": {
                    "200": {
                        "description": "The file's bytes.",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **lookup,
                },
            }
        },
        "/v1/batches": {
            "post": {
                "summary": "Create a batch from an uploaded file (OpenAI Batch API)",
                "operationId": "openaiCreateBatch",
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["input_file_id", "endpoint", "completion_window"],
                                "properties": {
                                    "input_file_id": {"type": "string"},
                                    "endpoint": {"type": "string", "enum": list(ENDPOINTS)},
                                    "completion_window": {"type": "string", "enum": ["24h"]},
                                    "metadata": {
                                        "type": ["object", "null"],
                                        "maxProperties": 16,
                                        "additionalProperties": {"type": "string"},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("OpenAIBatch"), "The batch (validating)."),
                    **_openai_errors(400, 401, 404, 408, 413, 503),
                },
            },
            "get": {
                "summary": "Batches of the caller's key, newest first",
                "operationId": "openaiListBatches",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(_ref("OpenAIBatchList"), "A page of batches."),
                    **_openai_errors(400, 401, 503),
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "summary": "A batch, with its progress (request_counts)",
                "operationId": "openaiRetrieveBatch",
                "parameters": [batch_id],
                "responses": {"200": _json(_ref("OpenAIBatch"), "The batch."), **lookup},
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "summary": "Cancel a batch: lines not started are not run",
                "operationId": "openaiCancelBatch",
                "parameters": [batch_id],
                "responses": {"200": _json(_ref("OpenAIBatch"), "The batch (cancelling, or final)."), **lookup},
            }
        },
    }


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this gateway (``version``: the package version)."""
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "operationId": "serverMetadata",
                "security": _OPEN,
                "responses": {"200": _json(_ref("ServerMetadata"), "Name, version and extensions.")},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Liveness (the process answers)",
                "operationId": "serverLive",
                "security": _OPEN,
                "responses": {"200": _json({"type": "object", "properties": {"live": {"type": "boolean"}}}, "Live.")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness (Kafka and Redis reachable, replies flowing)",
                "operationId": "serverReady",
                "security": _OPEN,
                "responses": {
                    "200": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}}, "Ready."),
                    "503": {"$ref": "#/components/responses/Error503"},
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": _OPEN,
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (open unless FLEET_GATEWAY_AUTH_METRICS)",
                "operationId": "metrics",
                "security": _OPEN,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v2/jobs/{job_id}/result": {
            "parameters": [_path_param("job_id", "Job id (from the 202 answer).")],
            "get": {
                "summary": "What the synchronous request would have answered: outputs, or the job's error",
                "operationId": "getJobResult",
                "parameters": [
                    {
                        "name": "binary",
                        "in": "query",
                        "description": "Every output as raw bytes (binary tensor extension).",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The outputs (binary extension with ?binary=true).",
                        "content": {
                            _JSON: {"schema": _ref("InferResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **_errors(
                        ErrorCode.INVALID_REQUEST,
                        *_AUTH,
                        ErrorCode.JOB_NOT_FOUND,
                        ErrorCode.CONFLICT,
                        ErrorCode.MODEL_ERROR,
                        ErrorCode.MODEL_LOAD_FAILED,
                        ErrorCode.DEADLINE_EXCEEDED,
                    ),
                },
            },
        },
        "/v2/repository/index": {
            "post": {
                "summary": "Model repository index (KServe/Triton repository extension): registered versions",
                "operationId": "repositoryIndex",
                "requestBody": {
                    "required": False,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"ready": {"type": "boolean"}},
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "version", "state"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "state": {"type": "string", "enum": ["READY"]},
                                },
                            },
                        },
                        "Every registered version the caller's key may use.",
                    ),
                    **_errors(*_AUTH, ErrorCode.INVALID_REQUEST, ErrorCode.BACKEND_UNAVAILABLE),
                },
            }
        },
        "/v2/jobs/{job_id}": {
            "parameters": [_path_param("job_id", "Job id (from the 202 answer).")],
            "get": {
                "summary": "Async job status, with its result once done",
                "operationId": "getJob",
                "responses": {
                    "200": _json(_ref("Job"), "The job."),
                    **_errors(*_AUTH, ErrorCode.JOB_NOT_FOUND, ErrorCode.BACKEND_UNAVAILABLE),
                },
            },
            "delete": {
                "summary": "Cancel a pending async job",
                "operationId": "cancelJob",
                "responses": {
                    "200": _json(_ref("Job"), "The cancelled job."),
                    **_errors(*_AUTH, ErrorCode.JOB_NOT_FOUND, ErrorCode.CONFLICT, ErrorCode.BACKEND_UNAVAILABLE),
                },
            },
        },
    }
    for versioned, prefix in ((False, "/v2/models/{model}"), (True, "/v2/models/{model}/versions/{version}")):
        ops = _model_operations(versioned)
        paths[prefix] = ops["metadata"]
        paths[prefix + "/ready"] = ops["ready"]
        paths[prefix + "/infer"] = ops["infer"]
        paths[prefix + "/config"] = _triton_operation("config", versioned, "Model configuration (Triton's extension)")
        paths[prefix + "/stats"] = _triton_operation("stats", versioned, "Model statistics (Triton's extension)")
    paths["/v2/models/stats"] = _triton_operation("stats", None, "Statistics of every model (Triton's extension)")
    paths.update(generation_paths())  # gateway.openai_routes
    paths.update(_pipeline_paths())
    paths.update(_batch_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "inference-fleet gateway",
            "version": version,
            "description": "Open Inference Protocol v2 over an event-driven worker fleet, plus async jobs. "
            "Every error body is {error, code}, except on /v1 routes: OpenAI's "
            "{error: {message, type, param, code}}.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": _error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (fk_...)."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


def add_route(app: web.Application, version: str) -> None:
    """Serve the document at ``GET /v2/openapi.json`` (rendered once)."""
    body = json.dumps(document(version), separators=(",", ":")).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=_JSON)

    app.router.add_get(OPENAPI_PATH, openapi)
