"""Batch pipeline benchmark (issue 3): direct-producer requests/s, then ``fleet batch run`` over N records.

1. Direct producer: the closed loop of :mod:`bench.producer` on a fresh stack (requests/s answered
   end to end, target >= 10,000 on the tiny MLP).
2. ``fleet batch run`` as a child process (the real CLI) over ``--records`` one-row records of the tiny
   MLP (``.npy`` in, ``.npy`` out, or ``--format jsonl``) on another fresh stack. Afterwards every output
   row is compared with the model run in-process on the same input: a lost row (NaN filler, listed
   failure) or a duplicated/misplaced row (a row that is not its own input's answer) is counted. Prints
   throughput, the child's peak RSS (its VmHWM) and the checks.

    .venv/bin/python -m bench.batch_pipeline [--records 1000000] [--workers 2] [--format npy]
                                             [--json bench/results/batch_pipeline.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import producer as producer_bench
from bench.common import git_commit, machine, write_report
from bench.loadgen import cpu_seconds
from bench.producer import MODEL, register_tiny, stack_env
from fleet.local.stack import LocalStack, StackConfig


def _make_input(directory: Path, records: int, fmt: str) -> tuple[Path, np.ndarray]:
    rows = np.random.default_rng(11).standard_normal((records, 16)).astype(np.float32)
    if fmt == "npy":
        path = directory / "input.npy"
        np.save(path, rows)
    else:
        path = directory / "input.jsonl"
        with open(path, "w") as fh:
            for row in rows:
                fh.write(json.dumps({"x": [round(float(v), 6) for v in row]}) + "\n")
        rows = np.array([[round(float(v), 6) for v in row] for row in rows], dtype=np.float32)
    return path, rows


def _memory(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and VmHWM (peak RSS) of a process in bytes (0 when it is gone)."""
    found = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in found:
                    found[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found


def _run_child(command: list[str], log: Path) -> tuple[int, float, float, dict[str, int]]:
    """Run the CLI; (exit status, seconds, wait4's ru_maxrss, sampled peaks of RssAnon, RssFile and VmHWM).

    VmHWM (sampled every 0.5 s from /proc; it only grows) is the peak RSS of the CLI process. wait4's
    ru_maxrss is not used as the figure: Linux folds into it the RSS of the forked copy of this (large)
    benchmark process just before ``exec``, so it reports this process's size, not the CLI's.
    """
    began = time.perf_counter()
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    done = threading.Event()
    with open(log, "wb") as fh:
        child = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)

        def sample() -> None:
            while not done.wait(0.5):
                for key, value in _memory(child.pid).items():
                    peaks[key] = max(peaks[key], value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)  # rusage of this child alone (not the stack's processes)
        done.set()
        sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - began, usage.ru_utime + usage.ru_stime, peaks


def _check(output: Path, fmt: str, rows: np.ndarray, artifact: str) -> dict[str, int]:
    """Lost rows (missing, NaN, failed) and rows that are not their own input's answer."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"x": rows[i : i + 65536]})[0] for i in range(0, len(rows), 65536)])
    if fmt == "npy":
        got = np.load(output, mmap_mode="r")
        lost = int(np.isnan(got).any(axis=1).sum()) + max(0, len(rows) - len(got))
        n = min(len(got), len(rows))
        ok = np.isclose(got[:n], expected[:n], rtol=1e-4, atol=1e-5).all(axis=1)
        wrong = int((~ok).sum()) - int(np.isnan(got[:n]).any(axis=1).sum())
        extra = max(0, len(got) - len(rows))
    else:
        indices: list[int] = []
        wrong = lost = 0
        with open(output) as fh:
            for line in fh:
                item = json.loads(line)
                indices.append(item["index"])
                if "error" in item:
                    lost += 1
                elif not np.allclose(item["outputs"]["y"], expected[item["index"]], rtol=1e-4, atol=1e-5):
                    wrong += 1
        extra = len(indices) - len(set(indices))
        lost += len(rows) - len(set(indices))
        wrong += sum(1 for position, index in enumerate(indices) if position != index)
    return {"lost_rows": lost, "duplicated_or_misplaced_rows": wrong + extra}


async def batch_run(args: argparse.Namespace) -> dict[str, Any]:
    """``fleet batch run`` over ``args.records`` records on a fresh stack, then the checks."""
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-batch-"))
    source, rows = await asyncio.to_thread(_make_input, home, args.records, args.format)
    output = home / f"output.{args.format}"
    env = stack_env(args.fetch)
    if args.bulk_max_batch:
        env["FLEET_WORKER_BULK_MAX_BATCH"] = str(args.bulk_max_batch)
    config = StackConfig(home=home, gateway=False, workers=args.workers, models=(), env=env)
    async with LocalStack(config) as stack:
        artifact = await register_tiny(stack.settings, home, args.max_batch, args.delay_ms, args.partitions)
        await stack.restart_workers([MODEL])
        settings = stack.settings
        command = [
            sys.executable, "-m", "fleet.cli", "batch", "run", "--model", MODEL,
            "--input", str(source), "--output", str(output), "--window", str(args.window), "--lane", args.lane,
            "--kafka", settings.kafka.bootstrap, "--redis", settings.redis.url, "--namespace", settings.namespace,
        ]  # fmt: skip
        pids = {p.name: p.pid for p in stack.info().processes}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        status, seconds, client_cpu_s, peaks = await asyncio.to_thread(_run_child, command, home / "batch.log")
        cpu = {name: round(100 * (cpu_seconds(pid) - before[name]) / seconds) for name, pid in pids.items()}
        cpu["batch-cli"] = round(100 * client_cpu_s / seconds)
    log = (home / "batch.log").read_text(errors="replace")
    if status != 0:
        raise SystemExit(f"fleet batch run failed with {status}:\n{log[-2000:]}")
    checks = await asyncio.to_thread(_check, output, args.format, rows, artifact)
    return {
        "records": args.records,
        "format": args.format,
        "seconds": round(seconds, 1),
        "records_per_s": round(args.records / seconds),
        "client_peak_rss_mb": round(peaks["VmHWM"] / 2**20, 1),
        "client_peak_rss_anon_mb": round(peaks["RssAnon"] / 2**20, 1),
        "client_peak_rss_file_mb": round(peaks["RssFile"] / 2**20, 1),
        "cpu_percent": cpu,
        "summary_line": log.strip().splitlines()[-1] if log.strip() else "",
        **checks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records of the batch run")
    parser.add_argument("--format", choices=["npy", "jsonl"], default="npy", help="input/output format")
    producer_bench.add_loop_options(parser)  # --window is also the batch run's records in flight
    parser.add_argument("--lane", choices=["bulk", "interactive"], default="bulk", help="lane of the batch run")
    parser.add_argument("--bulk-max-batch", type=int, help="FLEET_WORKER_BULK_MAX_BATCH (default: the worker's)")
    parser.add_argument("--skip-producer", action="store_true", help="only the batch run")
    parser.add_argument("--json", default="bench/results/batch_pipeline.json", help="where to write the figures")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "batch_pipeline",
        "machine": machine(),
        "commit": git_commit(),
        "load_average_at_start": list(os.getloadavg()),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    if not args.skip_producer:
        figures = asyncio.run(producer_bench.run(args))
        report["direct_producer"] = figures
        print(
            f"direct producer: {figures['answered_per_s']:,} requests/s answered end to end "
            f"(p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, errors {figures['errors']})",
            flush=True,
        )
    batch = asyncio.run(batch_run(args))
    report["batch_run"] = batch
    print(
        f"fleet batch run: {batch['records']:,} records ({batch['format']}) in {batch['seconds']} s = "
        f"{batch['records_per_s']:,} records/s; lost {batch['lost_rows']}, duplicated/misplaced "
        f"{batch['duplicated_or_misplaced_rows']}; client peak RSS {batch['client_peak_rss_mb']} MB "
        f"(anonymous {batch['client_peak_rss_anon_mb']} MB, file-backed {batch['client_peak_rss_file_mb']} MB)"
    )
    print("CPU % of one core during the batch run: " + ", ".join(f"{k} {v}" for k, v in batch["cpu_percent"].items()))
    write_report(args.json, report)


if __name__ == "__main__":
    main()
