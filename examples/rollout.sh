#!/usr/bin/env bash
# A canary rollout of model "tiny" (registered by register.sh): version 2 gets 10 % of the unversioned
# traffic, the answers are counted per version, then one-step rollback to version 1.
#   bash examples/rollout.sh [DIR]    DIR keeps the new artifact (default .)
set -euo pipefail
here=$(dirname "$0")
dir=$(cd "${1:-.}" && pwd)
python "$here/make_model.py" "$dir/tiny-v2.onnx" --seed 1
fleet models register tiny --version 2 --artifact "$dir/tiny-v2.onnx"   # the default stays version 1
fleet models verify tiny --version 2 --timeout 60
fleet models traffic tiny 1=90 2=10
fleet models traffic tiny                                               # the split, default, rollback target
python "$here/count_versions.py" tiny --requests 200
fleet models rollback tiny                                              # split cleared, default back to 1
python "$here/count_versions.py" tiny --requests 50
