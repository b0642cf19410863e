#!/usr/bin/env bash
# Regenerates schemas/oip_grpc/*_pb2.py(i) from the .proto files in schemas/oip_grpc/protos/
# (Triton's grpc_service.proto and model_config.proto, triton-inference-server/common commit
# 83adf7cf88a2f343005974dff3728be746de2d66, BSD-3-Clause: protos/LICENSE).
#
# The message package is renamed from `inference` to `fleet_oip` on the way (the .proto files in the
# repo stay verbatim): tritonclient registers the same messages as `inference.*` in protobuf's default
# descriptor pool, and a second registration under the same names in the same process (a test, an
# application using both clients) is refused. Message names never go on the wire; the service keeps
# its name `inference.GRPCInferenceService` (schemas.oip_grpc registers it by hand).
#
# Usage: scripts/gen_oip_grpc.sh   (needs grpcio-tools: pip install 'inference-fleet[dev]')
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
src="$root/schemas/oip_grpc/protos"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/schemas/oip_grpc"
for name in grpc_service model_config; do
    sed -e 's/^package inference;/package fleet_oip;/' \
        -e 's#^import "model_config.proto";#import "schemas/oip_grpc/model_config.proto";#' \
        "$src/$name.proto" >"$work/schemas/oip_grpc/$name.proto"
done
"$python" -m grpc_tools.protoc -I "$work" --python_out="$root" --pyi_out="$root" \
    "$work/schemas/oip_grpc/grpc_service.proto" "$work/schemas/oip_grpc/model_config.proto"
