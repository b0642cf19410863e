"""``fleet up | down | reload``: the local stack in the foreground, and commands that talk to it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from fleet.client.connection import Target
from fleet.client.errors import StackError
from fleet.client.stackfile import StackInfo, pid_alive, pid_cmdline
from fleet.local.stack import LocalStack

from .demo import run_demo
from .foreground import Signals, add_stack_options, foreground, print_stack, request_reload, stack_config

UP_HELP = """\
Start the fleet on this machine: the embedded Kafka-protocol broker and Redis (unless --kafka/--redis
or FLEET_KAFKA_BOOTSTRAP/FLEET_REDIS_URL name external ones), the gateway and the autoscaler, each with
a log under $FLEET_HOME/logs (default: the nearest .fleet directory, else ./.fleet). Stays in the
foreground; Ctrl-C or `fleet down` stops it.

The embedded Redis is durable: models, API keys and jobs are kept in an append-only file under
$FLEET_HOME/redis (fsynced before each answer) and survive `fleet down` / `fleet up` and a crash of Redis.
The embedded broker keeps nothing: requests still queued in it are lost when it stops; each start
re-creates the topics of every registered model.

By default the autoscaler (`python -m autoscaler`, local backend) runs a pool of multi-model workers
(one multiplexed Kafka consumer each), between --min-workers (default 1) and --max-workers (default one
per CPU, at most 4): it adds a worker when the measured work, the most replicas a model wants or the
models' sizes need one, and drains one (it finishes, commits and hands its models over) when the pool
is idle. Its placement scheduler assigns every registered model's replicas to the pool's workers (a hot
model gets replicas on several); each worker keeps what fits its memory budget resident (half of this
machine's memory split over --max-workers, unless FLEET_WORKER_MEMORY_BUDGET_MB says otherwise), evicts
the least recently used model and reloads it from its disk cache on demand. With --min-workers 0 an idle
fleet runs no worker at all and a request for any model starts one. Models registered later are found
by themselves: register one and send requests, no reload needed. `fleet scale MODEL --replicas N` pins
a model's replicas, `--auto` unpins it; `fleet status` shows the pool's workers, where each model is
placed and why. FLEET_AUTOSCALER_* variables tune it (`fleet config autoscaler`). --placement is
accepted and means this default.

With --per-model-workers the autoscaler runs one worker process per model instead, between
--min-workers and --max-workers per model, scaled on Kafka lag and the workers' measured service time.

With --no-autoscale, N fixed workers serve a fixed model list instead: --models, or every model
registered when they start; after registering a model, `fleet reload` drains and restarts them.
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


async def run_up(target: Target, args: argparse.Namespace) -> int:
    """``fleet up``: start, print the addresses, serve in the foreground, stop cleanly."""
    if args.demo:
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
