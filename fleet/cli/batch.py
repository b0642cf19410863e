"""``fleet batch run``: the command line of :mod:`fleet.pipeline.batch`, with a progress line on stderr.

    fleet batch run --model tiny --input rows.npy --output out.npy [--resume] [--rows-per-request 8]
    fleet batch run --model tiny --input records.jsonl --output out.jsonl

The progress line (rewritten in place with ``\\r``) shows records written, percent, rate and ETA.
Exit status: 0 when every record has an output line, also when some of them are failures (their count
is printed, and they are listed in the output or in ``OUTPUT.failures.jsonl``); 1 when the run could not
go on (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from fleet.client.connection import Target
from fleet.pipeline.batch import BatchOptions, BatchProgress, BatchRun
from schemas import Lane

_REFRESH_S = 0.5


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``batch`` and its ``run`` subcommand to the top-level subparsers."""
    batch = commands.add_parser("batch", help="run a file of records through a model (direct Kafka)", parents=[common])
    sub = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", parents=[common], help="publish every record, write outputs in input order")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--model")
    target.add_argument("--pipeline", help="run the records through a pipeline (`fleet pipelines`) instead")
    run.add_argument(
        "--version", help="model (or pipeline) version (default: the default / current one, pinned for --resume)"
    )
    run.add_argument("--input", required=True, type=Path, help=".jsonl, .npy or .parquet (with pyarrow)")
    run.add_argument("--output", required=True, type=Path, help=".jsonl, or .npy for an .npy input")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run writing OUTPUT")
    run.add_argument("--overwrite", action="store_true", help="start over even if OUTPUT exists")
    run.add_argument("--rows-per-request", type=int, default=1, help=".npy input: rows sent in one request")
    run.add_argument("--output-name", help=".npy output: the model output to write (default: the only one)")
    run.add_argument(
        "--lane",
        choices=[lane.value for lane in Lane],
        default=Lane.BULK.value,
        help="request lane (default bulk: interactive traffic of the same model is served first)",
    )
    run.add_argument("--window", type=int, default=4096, help="records in flight (bounds memory)")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds a record may wait for its answer")
    run.add_argument("--checkpoint-interval", type=float, default=2.0, help="seconds between two checkpoints")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.set_defaults(handler=run_batch)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(progress: BatchProgress, now: float | None = None) -> str:
    """``done/total pct rate ETA failed`` for the progress display."""
    rate = progress.rate(now)
    total = progress.total
    pct = f"{100.0 * progress.done / total:5.1f}%" if total else "  -  "
    if rate > 0 and total:
        eta = _duration(max(0, total - progress.done) / rate)
    else:
        eta = "?"
    return f"{progress.done:,}/{total:,} {pct}  {rate:,.0f} rec/s  ETA {eta}  failed {progress.failed:,}"


async def _show_progress(run: BatchRun, stream: TextIO) -> None:
    while True:
        await asyncio.sleep(_REFRESH_S)
        stream.write("\r" + progress_line(run.progress).ljust(78))
        stream.flush()


async def run_batch(target: Target, args: argparse.Namespace) -> int:
    """``fleet batch run``."""
    options = BatchOptions(
        model=args.pipeline or args.model,
        pipeline=args.pipeline is not None,
        input=args.input,
        output=args.output,
        version=args.version,
        resume=args.resume,
        overwrite=args.overwrite,
        rows_per_request=args.rows_per_request,
        output_name=args.output_name,
        window=args.window,
        timeout_s=args.timeout,
        checkpoint_interval_s=args.checkpoint_interval,
        lane=Lane(args.lane),
    )
    run = BatchRun(target.settings, options)
    display = None if args.quiet else asyncio.create_task(_show_progress(run, sys.stderr))
    began = time.monotonic()
    try:
        summary = await run.run()
    finally:
        if display is not None:
            display.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await display
            if run.progress.total:  # the run got going: leave its last state on screen
                sys.stderr.write("\r" + progress_line(run.progress).ljust(78) + "\n")
    if summary.already_complete:
        print(f"{summary.output}: already complete ({summary.done:,} records, {summary.failed:,} failed)")
        return 0
    resumed = f", resumed at {summary.resumed_from:,}" if summary.resumed_from else ""
    print(
        f"{summary.output}: {summary.done:,} records{resumed}, {summary.failed:,} failed, "
        f"{summary.rate:,.0f} records/s over {time.monotonic() - began:.1f} s"
    )
    if summary.failed and summary.failures is not None:
        print(f"failures listed in {summary.failures}")
    return 0
