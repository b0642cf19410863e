"""``fleet up | down | reload``: the local stack in the foreground, and commands that talk to it."""

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
from fleet.client.stackfile import StackInfo, pid_alive, pid_cmdline
from fleet.local.stack import LocalStack, StackConfig
from schemas.constants import DEFAULT_NAMESPACE

UP_HELP = """\
Start the fleet on this machine: the embedded Kafka-protocol broker and Redis (unless --kafka/--redis
or FLEET_KAFKA_BOOTSTRAP/FLEET_REDIS_URL name external ones), the gateway and the autoscaler, each with
a log under $FLEET_HOME/logs (default: the nearest .fleet directory, else ./.fleet). Stays in the
foreground; Ctrl-C or `fleet down` stops it.

The embedded Redis is durable: models, API keys and jobs are kept in an append-only file under
$FLEET_HOME/redis (fsync every second) and survive `fleet down` / `fleet up` and a crash of Redis.
The embedded broker keeps nothing: requests still queued in it are lost when it stops; each start
re-creates the topics of every registered model.

By default the autoscaler (`python -m autoscaler`, local backend) runs the workers: one-model worker
processes, between --workers (default 1) and --max-workers per model, scaled on Kafka lag and the
workers' measured service time. It finds models registered later in the registry by itself: register
one and send requests, no reload needed. `fleet scale MODEL --replicas N` pins a model, `--auto`
unpins it; `fleet status` shows desired vs actual workers and why. FLEET_AUTOSCALER_* variables tune it
(`fleet config autoscaler`).

With --no-autoscale, N fixed workers serve a fixed model list instead: --models, or every model
registered when they start; after registering a model, `fleet reload` drains and restarts them.

With --placement, --workers multi-model workers follow their assignment and the autoscaler's placement
scheduler assigns every registered model to workers with room (labels, memory budget with overcommit,
prefer where it is resident); each worker keeps what fits its FLEET_WORKER_MEMORY_BUDGET_MB resident,
evicts the least recently used model and reloads it from its disk cache on demand. `fleet status`
shows where each model is placed, or why it could not be.
"""


def csv_arg(text: str) -> tuple[str, ...]:
    """argparse type of a comma list."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``up``, ``down`` and ``reload``."""
    up = commands.add_parser(
        "up", parents=[common], help="start the local stack (foreground)", description=UP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_stack_options(up, default_port=8000)
    up.add_argument("--models", type=csv_arg, help="models to serve (default: every registered one)")
    up.add_argument("--demo", action="store_true", help="run the demo on the new stack, then keep serving")
    up.set_defaults(handler=run_up)
    down = commands.add_parser("down", parents=[common], help="stop the stack that `fleet up` started")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to stop")
    down.set_defaults(handler=run_down)
    reload = commands.add_parser(
        "reload", parents=[common], help="restart fixed workers to serve registered models (--no-autoscale stacks)"
    )
    reload.add_argument("--timeout", type=float, default=60.0)
    reload.set_defaults(handler=reload_stack)


def add_stack_options(parser: argparse.ArgumentParser, default_port: int | None) -> None:
    """Options shared by ``up`` and ``demo``."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="fewest workers per model (default 1); --no-autoscale or --placement: worker processes",
    )
    parser.add_argument(
        "--max-workers", type=int, help="most workers per model (default FLEET_AUTOSCALER_MAX_REPLICAS or 16)"
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
        help="run --workers multi-model workers that follow the placement scheduler's assignment",
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
    if args.placement and not args.autoscale:
        raise StackError("--placement runs the autoscaler's scheduler; it cannot go with --no-autoscale")
    if args.autoscale and args.max_workers is not None and args.max_workers < max(1, args.workers):
        raise StackError(f"--max-workers must be >= max(1, --workers {args.workers})")
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
        autoscale=args.autoscale and not args.placement,
        placement=args.placement,
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
    print(f"kafka     {stack.kafka_bootstrap}")
    print(f"redis     {stack.redis_url}")
    print(f"namespace {stack.config.namespace}")
    print(f"logs      {stack.logs}")
    if stack.config.autoscale:
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
            automatic = stack.config.autoscale or stack.config.placement
            what = "autoscaled models" if automatic else "workers restarted, serving"
            print(f"{what} {','.join(models) or '(no models)'}", flush=True)
        if stack.failure is not None:
            print(f"fleet: error: {stack.failure}", flush=True)
            return 1
        await signals.wait(1.0)
    return 0


async def run_up(target: Target, args: argparse.Namespace) -> int:
    """``fleet up``: start, print the addresses, serve in the foreground, stop cleanly."""
    if args.demo:
        from fleet.demo.run import run_demo  # demo builds on this module

        args.keep, args.trainer, args.concurrency = True, "auto", 8
        return await run_demo(target, args)
    stack = LocalStack(stack_config(target, args, args.models))
    with Signals() as signals:
        try:
            if not await signals.run(stack.start()):
                return 130
            print_stack(stack)
            print("ready; Ctrl-C or `fleet down` stops the stack", flush=True)
            return await foreground(stack, signals)
        finally:
            await stack.stop()
            print("stack stopped", flush=True)


async def run_down(target: Target, args: argparse.Namespace) -> int:
    """``fleet down``: SIGTERM the owner of stack.json and wait until it is gone."""
    home = target.home
    info = StackInfo.read(home)
    if info is None:
        print(f"no local stack in {home}")
        return 0
    if info.owner_alive():
        os.kill(info.pid, signal.SIGTERM)
        if not await _wait_gone([info.pid], args.timeout):
            raise StackError(f"the stack (pid {info.pid}) is still running after {args.timeout:.0f}s")
        print(f"stack stopped (pid {info.pid})")
        return 0
    # The owner died without cleaning up (SIGKILL): stop what it left, in the usual order.
    # The autoscaler drains the workers it spawned before it exits (they are not in stack.json).
    order = {"gateway": 0, "autoscaler": 1, "worker": 1, "redis": 2, "broker": 2}
    # A pid may have been reused since: only signal processes that still look like ours.
    markers = {
        "gateway": ("-m gateway",),
        "autoscaler": ("-m autoscaler",),
        "worker": ("-m workers",),
        "redis": ("valkey", "redis"),
        "broker": ("broker",),
    }
    left = [p for p in sorted(info.processes, key=lambda p: order.get(p.role, 3)) if pid_alive(p.pid)]
    left = [p for p in left if any(m in pid_cmdline(p.pid) for m in markers.get(p.role, ()))]
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        await _wait_gone([proc.pid], 30.0)
    StackInfo.remove(home)
    print(f"the stack's owner (pid {info.pid}) was gone; stopped {len(left)} leftover process(es)")
    return 0


async def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


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


async def reload_stack(target: Target, args: argparse.Namespace) -> int:
    """``fleet reload``."""
    if target.stack is None:
        raise StackError(f"no running local stack in {target.home}; start one with `fleet up`")
    if target.stack.autoscale:
        print("the stack autoscales: registered models get workers by themselves; nothing to reload")
        return 0
    info = await request_reload(target.stack, target.home, args.timeout)
    print(f"workers restarted, serving {','.join(info.models) or '(no models)'}")
    return 0
