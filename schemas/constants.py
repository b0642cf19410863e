"""Constants of the wire contract: envelope version, Kafka header names, defaults and decode limits.

Everything that two services must agree on and that is not a message field lives here.
"""

from __future__ import annotations

#: Version of the msgpack envelopes. A reader rejects a higher version with UNSUPPORTED_ENVELOPE.
ENVELOPE_VERSION = 1

#: Default namespace for topic names and Redis keys (tests use a unique one each).
DEFAULT_NAMESPACE = "fleet"

#: Kinds of device a model's footprint is measured on: the same model takes different room in GPU memory
#: (weights, CUDA workspaces) than in a CPU process (weights, prepacked copies, arenas).
CPU = "cpu"
GPU = "gpu"
DEVICE_KINDS = (CPU, GPU)


def device_kind(device: str) -> str:
    """``gpu`` for a CUDA device name (``cuda``, ``cuda:1``), else ``cpu``."""
    return GPU if device.startswith("cuda") else CPU


#: Kafka headers set on every request record (strings, utf-8 encoded on the wire).
HEADER_REQUEST_ID = "fleet-request-id"
HEADER_ENVELOPE_VERSION = "fleet-v"
HEADER_CONTENT_TYPE = "content-type"
#: Set on a request re-sent by `fleet dlq replay`: how many times that dead letter has been replayed.
HEADER_REPLAY = "fleet-replay"
CONTENT_TYPE_MSGPACK = "application/x-msgpack"
#: Set on a record of a shared retry topic: the model (and version) it retries and when it is due (epoch ms),
#: so the gateways' retry relay routes it without decoding the envelope.
HEADER_MODEL = "fleet-model"
HEADER_VERSION = "fleet-version"
HEADER_NOT_BEFORE = "fleet-not-before"
#: Set on a request record that carries an InferenceRequestBatch (``schemas.envelopes``): its member count.
HEADER_BATCH = "fleet-batch"
#: Worker heartbeat field: what the worker reads beyond single request envelopes, comma-separated;
#: ``CAP_BATCH``: batch records (a gateway coalesces a model's requests only for workers that all read them).
HEARTBEAT_CAPS = "caps"
CAP_BATCH = "batch"
#: W3C trace context of the request's trace, set on a request record when tracing is on (``common.tracing``).
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"

#: Decode limits applied to every msgpack payload read from the wire.
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
MAX_DECODE_STR_LEN = 1024 * 1024
MAX_DECODE_ARRAY_LEN = 100_000
MAX_DECODE_MAP_LEN = 10_000

#: Upper bounds that keep a single tensor sane regardless of the model.
MAX_TENSOR_RANK = 16
MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024

#: Replies kept in a gateway's reply stream; older entries are trimmed (approximate MAXLEN).
REPLY_STREAM_MAXLEN = 100_000
#: Seconds a reply stream of a gateway that went away lingers before Redis expires it.
REPLY_STREAM_TTL_S = 600
#: Seconds the first-result marker of a request is kept (deduplicates redelivered work).
RESULT_TTL_S = 3600

#: Default partitions of a model's request topic (caps the number of useful workers per model): small, since a
#: fleet may hold thousands of models; registration names more for a hot model.
DEFAULT_PARTITIONS = 2
