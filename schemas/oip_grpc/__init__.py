"""The Open Inference Protocol v2 over gRPC, as Triton serves it: ``inference.GRPCInferenceService``.

The messages are generated from Triton's ``grpc_service.proto`` and ``model_config.proto`` (in ``protos/``,
with their license) by ``scripts/gen_oip_grpc.sh``; the generated modules are committed. Their protobuf
package is ``fleet_oip`` instead of ``inference`` so that they live beside tritonclient's copies in one
process (message names never travel; the service name, which does, is ``SERVICE``). The service is
registered by hand from ``METHODS`` (method name -> request class, response class, streaming) by the
gateway and called the same way by the fleet's client: no generated stub module is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from . import grpc_service_pb2 as pb
from . import model_config_pb2 as config_pb

__all__ = ["METHODS", "SERVICE", "Method", "config_pb", "method_path", "pb"]

#: The gRPC service name on the wire (``/inference.GRPCInferenceService/ModelInfer``).
SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class Method:
    """One RPC: its request and response message classes, and whether both sides stream."""

    request: type[Message]
    response: type[Message]
    streaming: bool = False


#: The RPCs the fleet serves (Triton's shared-memory, load/unload, trace and log settings RPCs are not).
METHODS: dict[str, Method] = {
    "ServerLive": Method(pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": Method(pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ServerMetadata": Method(pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelReady": Method(pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ModelMetadata": Method(pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": Method(pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelStreamInfer": Method(pb.ModelInferRequest, pb.ModelStreamInferResponse, streaming=True),
    "ModelConfig": Method(pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": Method(pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": Method(pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
}


def method_path(name: str) -> str:
    """The full method path a channel calls, e.g. ``/inference.GRPCInferenceService/ModelInfer``."""
    return f"/{SERVICE}/{name}"
