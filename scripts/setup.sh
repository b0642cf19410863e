#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs inference-fleet with the given extras (default: cpu,local).
# Usage: scripts/setup.sh [extras]     e.g. scripts/setup.sh cpu,dev,torch
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu,local}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
[ -n "$python" ] || { echo "setup: need Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import aiokafka, redis, onnxruntime, schemas, common, gateway, workers, autoscaler, fleet" \
  || { echo "setup: install incomplete" >&2; exit 1; }
