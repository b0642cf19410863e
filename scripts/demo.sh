#!/usr/bin/env bash
# Sets up .venv (no torch needed) and runs the demo on the embedded local stack:
# broker + Redis + gateway + workers, trains a model, registers two versions, verifies, sends traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "cpu,local"
exec .venv/bin/fleet demo "$@"
