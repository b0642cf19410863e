"""Runs the drills and prints their table: ``python -m bench.drills [--drill NAME ...]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench.drills
from bench.common import git_commit, machine, write_report
from bench.drills.failover import FAILOVER_DRILLS
from bench.drills.faults import FAULT_DRILLS
from bench.drills.outages import OUTAGE_DRILLS

DRILLS: dict[str, Callable[[Path], Awaitable[dict[str, Any]]]] = {**OUTAGE_DRILLS, **FAULT_DRILLS, **FAILOVER_DRILLS}


async def run(names: list[str]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fleet-drills-"))
    print(f"working folder (logs): {root}")
    results: dict[str, Any] = {}
    for name in names:
        print(f"== {name}", flush=True)
        began = time.monotonic()
        try:
            results[name] = await DRILLS[name](root)
        except Exception as exc:  # a drill that cannot run is a failed drill, and the others still run
            results[name] = {"pass": False, "summary": f"drill crashed: {type(exc).__name__}: {exc}"}
        results[name]["wall_s"] = round(time.monotonic() - began, 1)
        print(f"   {'PASS' if results[name]['pass'] else 'FAIL'}  {results[name]['summary']}", flush=True)
    print("\n| drill | result | figures |\n|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {'PASS' if result['pass'] else 'FAIL'} | {result['summary']} |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=bench.drills.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drill", action="append", choices=sorted(DRILLS), help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--report", default="drills.json", help="file name of the report under --out")
    args = parser.parse_args()
    results = asyncio.run(run(args.drill or list(DRILLS)))
    report = {
        "benchmark": "drills",
        "commit": git_commit(),
        "machine": machine(),
        "drills": results,
    }
    write_report(args.out / args.report, report)
    sys.exit(0 if all(r["pass"] for r in results.values()) else 1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
