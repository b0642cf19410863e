#!/usr/bin/env bash
# Push files through model "tiny" on the bulk lane with `fleet batch run`: .npy in and out, then JSONL.
#   bash examples/batch_run.sh [DIR]    DIR receives the input and output files (default .)
set -euo pipefail
dir=$(cd "${1:-.}" && pwd)
python - "$dir" <<'PY'
import json, sys
import numpy as np
rows = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
np.save(f"{sys.argv[1]}/rows.npy", rows)
with open(f"{sys.argv[1]}/records.jsonl", "w") as f:
    for row in rows[:20]:
        f.write(json.dumps({"x": row.tolist()}) + "\n")  # one record = one row, without the batch dimension
    f.write('{"x": [1, 2, 3]}\n')  # a bad record: recorded as an error line, the run goes on
PY
fleet batch run --model tiny --input "$dir/rows.npy" --output "$dir/out.npy" --overwrite --quiet
fleet batch run --model tiny --input "$dir/records.jsonl" --output "$dir/out.jsonl" --overwrite --quiet
python - "$dir" <<'PY'
import json, sys
import numpy as np
y = np.load(f"{sys.argv[1]}/out.npy")
print(f"out.npy: {y.shape[0]} rows of {y.shape[1]}, {int(np.isnan(y).any(axis=1).sum())} failed")
lines = [json.loads(line) for line in open(f"{sys.argv[1]}/out.jsonl")]
errors = [line["error"]["code"] for line in lines if "error" in line]
print(f"out.jsonl: {len(lines)} lines, errors {errors}")
PY
