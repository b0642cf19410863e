"""The wire and storage contract every inference-fleet service shares.

Envelopes (msgpack, versioned), tensors, model signatures and registry records, topic and Redis key
names, worker service stats records, error codes, and the shared Kafka/Redis settings.
"""

from .constants import ENVELOPE_VERSION
from .envelopes import (
    DeadLetter,
    ErrorInfo,
    InferenceRequest,
    InferenceResponse,
    ParameterValue,
    PipelineRoute,
    ReplyAddress,
    ReplyKind,
    now_ms,
)
from .errors import HTTP_STATUS, ErrorCode, FleetError, SchemaError, UnsupportedEnvelopeError
from .jobs import JobState, JobStatus
from .names import Lane, Names, check_model_name, check_topic_name, check_version
from .registry import BackendUnavailableError, Framework, ModelRecord, ModelRegistry, RegistryError, sha256_file
from .settings import FleetSettings, KafkaSettings, RedisSettings, SettingsError, describe, doc, load
from .signature import BatchingConfig, TensorSpec, check_inputs, parse_spec
from .stats import WorkerReport, publish_service_stats, publish_worker_stats, withdraw_service_stats
from .tensors import DATATYPES, NUMPY_DTYPES, Tensor, datatype_of

__all__ = [
    "DATATYPES",
    "ENVELOPE_VERSION",
    "HTTP_STATUS",
    "NUMPY_DTYPES",
    "BackendUnavailableError",
    "BatchingConfig",
    "DeadLetter",
    "ErrorCode",
    "ErrorInfo",
    "FleetError",
    "FleetSettings",
    "Framework",
    "InferenceRequest",
    "InferenceResponse",
    "JobState",
    "JobStatus",
    "KafkaSettings",
    "Lane",
    "ModelRecord",
    "ModelRegistry",
    "Names",
    "ParameterValue",
    "PipelineRoute",
    "RedisSettings",
    "RegistryError",
    "ReplyAddress",
    "ReplyKind",
    "SchemaError",
    "SettingsError",
    "Tensor",
    "TensorSpec",
    "UnsupportedEnvelopeError",
    "WorkerReport",
    "check_inputs",
    "check_model_name",
    "check_topic_name",
    "check_version",
    "datatype_of",
    "describe",
    "doc",
    "load",
    "now_ms",
    "parse_spec",
    "publish_service_stats",
    "publish_worker_stats",
    "sha256_file",
    "withdraw_service_stats",
]
