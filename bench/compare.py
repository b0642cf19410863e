"""A benchmark run against a baseline commit in the same invocation, so that a ratio is measured on the same
machine state (the same load from whoever else shares the cores, the same thermal state).

    .venv/bin/python -m bench.compare --baseline d96c0ce [--rounds 2] [--figures req_per_s,p50_ms] \\
        -- bench.sync_http --models tiny --concurrency 1,64 --duration 10 --body json

Builds a git worktree of the baseline, then runs the benchmark module once per side and round, the sides
interleaved (baseline, current, then current, baseline, ...) so that a drift of the machine weighs on both.
Both sides run this checkout's benchmark code (the ``bench`` package is put in front of each side's tree on
``PYTHONPATH``) against that side's fleet: the services the benchmark starts (broker, Redis, gateway, worker,
each on a fresh stack as the benchmark starts them) import the side's ``schemas``, ``gateway``, ``workers``
and the rest. The current side is this working tree, uncommitted changes included, or with ``--current REV``
a worktree of that commit (to leave out work in progress that is not part of the comparison).
``--env-baseline`` / ``--env-current KEY=VALUE`` (repeatable) set a variable on one side only, so one tree can be
compared with itself under two settings (``--baseline HEAD --current HEAD --env-baseline
FLEET_WORKER_PIPELINE_DEPTH=1``).

The benchmark must write its figures as JSON to the path given with ``--json``; every list of objects in it
(``runs`` of ``bench.sync_http``) is read, each object named by its ``model`` and ``concurrency``. Printed
(and written to ``--json``): each figure's median over the rounds on both sides and the ratio current /
baseline, with every round's value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, write_report

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_FIGURES = ("req_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request", "errors")
_NAMING = ("model", "concurrency")  # what tells the entries of a run list apart


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def baseline_tree(commit: str, parent: Path) -> Path:
    """A detached worktree of ``commit`` under ``parent`` (removed by :func:`remove_tree`)."""
    path = parent / f"tree-{commit}"
    _git("worktree", "add", "--detach", "--force", str(path), commit)
    return path


def remove_tree(path: Path) -> None:
    """Remove a worktree made by :func:`baseline_tree` (and git's record of it)."""
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True, check=False)


def side_env(root: Path, overlay: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a side's benchmark process: this checkout's ``bench`` first, then the side's tree
    (inherited by every service the benchmark starts), and the side's own variables (``extra``)."""
    env = dict(os.environ) | (extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(overlay), str(root)])
    return env


def env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict (SystemExit naming the one without ``=``)."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"compare: {pair!r} is not KEY=VALUE")
        parsed[key] = value
    return parsed


def run_side(
    module: str,
    args: Sequence[str],
    root: Path,
    overlay: Path,
    out: Path,
    label: str,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m module args --json out`` for one side (from a neutral folder, so that the current
    directory does not come first on ``sys.path``); its lines are printed prefixed with ``label``."""
    command = [sys.executable, "-m", module, *args, "--json", str(out)]
    with subprocess.Popen(
        command,
        cwd=out.parent,
        env=side_env(root, overlay, extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[{label}] {line}", end="", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"compare: {label} exited with {proc.returncode}: {' '.join(command)}")
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def order(rounds: int) -> Iterator[tuple[int, str]]:
    """(round, side) in the order they run: baseline first in even rounds, current first in odd ones."""
    for index in range(rounds):
        sides = ("baseline", "current") if index % 2 == 0 else ("current", "baseline")
        for side in sides:
            yield index, side


def figures_of(report: dict[str, Any], wanted: Sequence[str]) -> dict[str, float]:
    """``"<list> <name>: <figure>" -> value`` for each wanted numeric figure of every entry of every list of
    objects in ``report`` (the entry named by its model and concurrency, else its index)."""
    found: dict[str, float] = {}
    for key, value in report.items():
        if not isinstance(value, list):
            continue
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                continue
            name = " ".join(f"{k}={entry[k]}" for k in _NAMING if k in entry) or f"#{index}"
            for figure in wanted:
                number = entry.get(figure)
                if isinstance(number, int | float) and not isinstance(number, bool):
                    found[f"{key} {name}: {figure}"] = float(number)
    return found


def table(reports: dict[str, list[dict[str, Any]]], wanted: Sequence[str]) -> list[dict[str, Any]]:
    """Per figure: every round's value on both sides, their medians and the ratio current / baseline."""
    per_side = {side: [figures_of(r, wanted) for r in rs] for side, rs in reports.items()}
    rows: list[dict[str, Any]] = []
    for key in per_side["baseline"][0]:
        base = [f[key] for f in per_side["baseline"] if key in f]
        current = [f[key] for f in per_side["current"] if key in f]
        if not base or not current:
            continue
        b, c = statistics.median(base), statistics.median(current)
        rows.append(
            {
                "figure": key,
                "baseline": b,
                "current": c,
                "ratio": round(c / b, 3) if b else None,
                "baseline_rounds": base,
                "current_rounds": current,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], baseline: str, current: str) -> None:
    """The comparison as aligned text."""
    width = max((len(r["figure"]) for r in rows), default=10)
    print(f"\n{'figure':<{width}}  {baseline:>12}  {current:>12}  {'ratio':>7}   rounds (baseline | current)")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        rounds = ", ".join(f"{v:g}" for v in r["baseline_rounds"]) + " | "
        rounds += ", ".join(f"{v:g}" for v in r["current_rounds"])
        print(f"{r['figure']:<{width}}  {r['baseline']:>12.3f}  {r['current']:>12.3f}  {ratio:>7}   {rounds}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the commit to compare against (any git revision)")
    parser.add_argument("--current", default=None, help="compare this commit instead of the working tree")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, interleaved")
    parser.add_argument("--figures", default=",".join(DEFAULT_FIGURES), help="comma-separated figures to compare")
    parser.add_argument("--json", default=None, help="where to write the comparison (default: not written)")
    parser.add_argument("--env-baseline", action="append", default=[], metavar="KEY=VALUE", help="baseline side only")
    parser.add_argument("--env-current", action="append", default=[], metavar="KEY=VALUE", help="current side only")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- MODULE [ARGS...]: the benchmark to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the benchmark module after --, e.g. -- bench.sync_http --models tiny")
    module, bench_args = command[0], command[1:]
    baseline = base_rev = _git("rev-parse", "--short", args.baseline)
    current_rev = ""
    if args.current is not None:
        current = current_rev = _git("rev-parse", "--short", args.current)
    else:
        dirty = bool(_git("status", "--porcelain", "--", "."))
        current = _git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")
    envs = {"baseline": env_pairs(args.env_baseline), "current": env_pairs(args.env_current)}
    for side, extra in envs.items():
        if extra:
            suffix = "+" + ",".join(f"{k}={v}" for k, v in extra.items())
            baseline, current = (baseline + suffix, current) if side == "baseline" else (baseline, current + suffix)
    wanted = [f for f in args.figures.split(",") if f]
    began = time.perf_counter()
    reports: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="fleet-compare-") as scratch:
        work = Path(scratch)
        overlay = work / "overlay"
        overlay.mkdir()
        (overlay / "bench").symlink_to(BENCH, target_is_directory=True)
        revisions = [base_rev] + ([] if args.current is None or current_rev == base_rev else [current_rev])
        trees = [baseline_tree(rev, work) for rev in revisions]
        try:
            roots = {"baseline": trees[0], "current": trees[-1] if args.current is not None else REPO}
            for index, side in order(args.rounds):
                label = f"{side} {baseline if side == 'baseline' else current} #{index + 1}"
                print(f"--- {label}", flush=True)
                out = work / f"{side}-{index}.json"
                reports[side].append(run_side(module, bench_args, roots[side], overlay, out, label, envs[side]))
        finally:
            for tree in trees:
                remove_tree(tree)
    rows = table(reports, wanted)
    print_table(rows, f"baseline {baseline}", f"current {current}")
    if args.json:
        write_report(
            args.json,
            {
                "benchmark": "compare",
                "command": [module, *bench_args],
                "baseline": baseline,
                "current": current,
                "env": envs,
                "machine": machine(),
                "rounds": args.rounds,
                "order": [f"{side}#{index + 1}" for index, side in order(args.rounds)],
                "table": rows,
                "reports": reports,
                "wall_s": round(time.perf_counter() - began, 1),
            },
        )


if __name__ == "__main__":
    main()
