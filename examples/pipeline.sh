#!/usr/bin/env bash
# A three-step pipeline (preprocess -> tiny -> softmax), Kafka between the steps: register the two extra
# models, apply examples/pipeline.yaml, show it, then call it (examples/pipeline_infer.py).
#   bash examples/pipeline.sh [DIR]    DIR: where register.sh left tiny.onnx (default .); the new models go there.
set -euo pipefail
here=$(dirname "$0")
dir=$(cd "${1:-.}" && pwd)
python "$here/make_model.py" "$dir/pipe-pre.onnx" --layers 16,16 --seed 5
python "$here/make_model.py" "$dir/pipe-post.onnx" --layers 4,4 --seed 6 --softmax
fleet models register pipe-pre --artifact "$dir/pipe-pre.onnx"
fleet models register pipe-post --artifact "$dir/pipe-post.onnx"
fleet pipelines apply -f "$here/pipeline.yaml"   # checked against the three models' signatures
fleet pipelines list
python "$here/pipeline_infer.py" "$dir"
