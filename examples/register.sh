#!/usr/bin/env bash
# Build a small ONNX model and register it as model "tiny", then check it end to end through the gateway.
#   bash examples/register.sh [DIR]    DIR keeps the artifact (default .): workers load it from that path.
set -euo pipefail
here=$(dirname "$0")
dir=$(cd "${1:-.}" && pwd)
python "$here/make_model.py" "$dir/tiny.onnx"
fleet models register tiny --artifact "$dir/tiny.onnx" --max-batch-size 32 --max-queue-delay-ms 2
fleet models list
fleet models verify tiny --timeout 60   # a worker answers a request through the gateway: PASS or FAIL
