"""Running a local stack from a command (``fleet up``, ``fleet demo``): the shared options, the stack they
configure, stop/reload signals, the serve loop and the addresses printed; ``request_reload`` asks a running one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from types import TracebackType
from typing import Any

from fleet.client.connection import Target, env_first
from fleet.client.errors import StackError
from fleet.client.stackfile import StackInfo
from fleet.local.services import pool_max_workers
from fleet.local.stack import LocalStack, StackConfig
from schemas.constants import DEFAULT_NAMESPACE


def add_stack_options(parser: argparse.ArgumentParser, default_port: int | None) -> None:
    """Options shared by ``up`` and ``demo``."""
    parser.add_argument(
        "--min-workers",
        "--workers",
        dest="workers",
        type=int,
        default=1,
        help="fewest pool workers (default 1; 0: a request wakes the pool); --per-model-workers: fewest per model; "
        "--no-autoscale: worker processes",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        help="most pool workers (default: one per CPU, at most 4); --per-model-workers: most per model "
        "(default FLEET_AUTOSCALER_MAX_REPLICAS or 16)",
    )
    parser.add_argument(
        "--per-model-workers",
        action="store_true",
        help="run one worker process per model (autoscaled per model) instead of the pool of multi-model workers",
    )
    parser.add_argument(
        "--no-autoscale",
        dest="autoscale",
        action="store_false",
        help="run --workers fixed worker processes instead of the autoscaler (`fleet reload` restarts them)",
    )
    parser.add_argument(
        "--placement",
        action="store_true",
        help="the pool of multi-model workers with the placement scheduler (the default; kept for old scripts)",
    )
    parser.add_argument("--port", type=int, default=default_port, help="gateway port")
    parser.add_argument("--host", default="127.0.0.1", help="gateway listen address")
    parser.add_argument("--device", help="FLEET_WORKER_DEVICE of the workers (e.g. cpu, cuda:0)")


def stack_config(target: Target, args: argparse.Namespace, models: tuple[str, ...] | None) -> StackConfig:
    """The LocalStack a command starts: external servers only when flags or env name them (not stack.json)."""
    home, env = target.home, target.env
    existing = StackInfo.read(home)
    if existing is not None and existing.owner_alive():
        raise StackError(f"a stack already runs from {home} (pid {existing.pid}, {existing.gateway_url}); `fleet down`")
    if args.workers < 0:
        raise StackError("--workers must be >= 0")
    per_model = getattr(args, "per_model_workers", False)
    if args.placement and per_model:
        raise StackError("--placement (the pool, the default) and --per-model-workers exclude each other")
    if (args.placement or per_model) and not args.autoscale:
        flag = "--placement" if args.placement else "--per-model-workers"
        raise StackError(f"{flag} runs the autoscaler; it cannot go with --no-autoscale")
    if args.autoscale and args.max_workers is not None and args.max_workers < max(1, args.workers):
        raise StackError(f"--max-workers must be >= max(1, --min-workers {args.workers})")
    return StackConfig(
        home=home,
        namespace=getattr(args, "namespace", None)
        or env_first(env, "FLEET_NAMESPACE", "FLEET_NS")
        or DEFAULT_NAMESPACE,
        kafka=getattr(args, "kafka", None) or env_first(env, "FLEET_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP"),
        redis=getattr(args, "redis", None) or env_first(env, "FLEET_REDIS_URL", "REDIS_URL"),
        host=args.host,
        port=args.port,
        workers=args.workers,
        models=models,
        autoscale=args.autoscale and per_model,
        pool=args.autoscale and not per_model,
        max_workers=args.max_workers if args.autoscale else None,
        device=args.device,
        env=dict(env),
    )


class Signals:
    """SIGINT/SIGTERM ask to stop, SIGHUP to reload the workers; installed only by the foreground commands."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.reload_requested = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def __enter__(self) -> Signals:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._request, "stop")
        loop.add_signal_handler(signal.SIGTERM, self._request, "stop")
        loop.add_signal_handler(signal.SIGHUP, self._request, "reload")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _request(self, what: str) -> None:
        if what == "stop":
            self.stop_requested = True
            self._stop.set()
        else:
            self.reload_requested = True
        self._wake.set()

    async def wait(self, timeout_s: float) -> None:
        """Return when a signal arrives or after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()

    async def run(self, coro: Awaitable[Any]) -> bool:
        """Run ``coro`` unless a stop signal comes first (then cancel it); True when it completed."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()
        return True


def print_stack(stack: LocalStack, *, workers: bool = True) -> None:
    """The addresses a user needs (and what the workers serve)."""
    print(f"gateway   {stack.url}" if stack.config.gateway else "gateway   (none)")
    if stack.config.gateway:
        print(f"          grpc://{stack.config.host}:{stack.grpc_port} (OIP v2 gRPC: FleetClient, tritonclient.grpc)")
    print(f"kafka     {stack.kafka_bootstrap}")
    print(f"redis     {stack.redis_url}")
    print(f"namespace {stack.config.namespace}")
    print(f"logs      {stack.logs}")
    if stack.config.pool:
        pool_most = pool_max_workers(stack.config)
        which = ",".join(stack.config.models or ()) or "every registered model, placed as they are registered"
        print(f"workers   a pool of {stack.config.workers}..{pool_most} multi-model workers, autoscaled: {which}")
        print(f"          autoscaler log {stack.autoscaler_log}; `fleet status` shows the pool and the placement")
    elif stack.config.autoscale:
        most = stack.config.max_workers or "max"
        which = ",".join(stack.config.models or ()) or "every registered model, found as they are registered"
        print(f"workers   autoscaled, {stack.config.workers}..{most} per model: {which}")
        print(f"          autoscaler log {stack.autoscaler_log}; worker logs {stack.logs / 'workers'}")
    elif stack.config.placement:
        which = ",".join(stack.config.models or ()) or "every registered model, placed as they are registered"
        print(f"workers   {stack.config.workers} following the placement scheduler: {which}")
        print(f"          autoscaler log {stack.autoscaler_log}; `fleet status` shows where each model is placed")
    elif workers:
        served = ",".join(stack.models) or "(no models: register, then `fleet reload`)"
        print(f"workers   {stack.config.workers} serving {served}")


async def foreground(stack: LocalStack, signals: Signals) -> int:
    """Serve until a stop signal; reload the workers on SIGHUP. The stack restarts a process that dies
    (logged, with backoff); exit 1 only when it gave up on one that kept dying."""
    while not signals.stop_requested:
        if signals.reload_requested:
            signals.reload_requested = False
            models = await stack.restart_workers(None)
            automatic = stack.config.autoscale or stack.config.placement or stack.config.pool
            what = "autoscaled models" if automatic else "workers restarted, serving"
            print(f"{what} {','.join(models) or '(no models)'}", flush=True)
        if stack.failure is not None:
            print(f"fleet: error: {stack.failure}", flush=True)
            return 1
        await signals.wait(1.0)
    return 0


async def request_reload(info: StackInfo, home: Path, timeout_s: float = 60.0) -> StackInfo:
    """SIGHUP the running ``fleet up`` and wait until it has restarted its workers."""
    os.kill(info.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while True:
        current = StackInfo.read(home)
        if current is not None and current.generation > info.generation:
            return current
        if not info.owner_alive() or time.monotonic() > deadline:
            raise StackError(f"the stack (pid {info.pid}) did not restart its workers; see its logs in {home}/logs")
        await asyncio.sleep(0.1)
