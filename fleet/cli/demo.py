"""``fleet demo`` (and ``fleet up --demo``): train a small classifier, serve two versions, send traffic, report.

Where it runs: its own LocalStack (started here, autoscaled unless ``--no-autoscale``, stopped at the end
unless ``--keep``), or a stack that ``fleet up`` runs (an autoscaled one spawns a worker for the demo model
by itself; a ``--no-autoscale`` one has its workers reloaded), or any gateway given with ``--url`` whose
fleet already has (or soon gets) a worker for the demo model. The session itself is :mod:`fleet.demo.session`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil

from fleet.client.connection import Target
from fleet.demo.session import demo_session, print_trained, train_versions
from fleet.demo.train import make_blobs
from fleet.local.heartbeats import wait_for_model_worker
from fleet.local.stack import LocalStack

from .foreground import Signals, add_stack_options, foreground, print_stack, request_reload, stack_config


def add_parser(commands: object, common: argparse.ArgumentParser) -> None:
    """Add ``demo``."""
    demo = commands.add_parser(  # type: ignore[attr-defined]  # argparse's subparsers action is private
        "demo", parents=[common], help="train, register, verify and load-test a small model end to end"
    )
    add_stack_options(demo, default_port=None)
    demo.add_argument("--keep", action="store_true", help="keep the stack running afterwards (foreground)")
    demo.add_argument("--trainer", choices=["auto", "torch", "numpy"], default="auto")
    demo.add_argument("--concurrency", type=int, default=8, help="requests in flight during the traffic phase")
    demo.set_defaults(handler=run_demo)


async def run_demo(target: Target, args: argparse.Namespace) -> int:
    """``fleet demo`` (and ``fleet up --demo``)."""
    data = make_blobs()
    work = target.home / "demo" / "train"
    shutil.rmtree(work, ignore_errors=True)
    print(f"training on {len(data.y_train)} generated points (8-D Gaussian blobs, {data.classes} classes)")
    if getattr(args, "url", None) or target.stack is not None:
        trained = await asyncio.to_thread(train_versions, data, work, args.trainer)
        print_trained(trained)
        stack_info = target.stack

        async def serve_external(model: str) -> None:
            # An autoscaled stack finds the new model by itself; a fixed one restarts its workers for it.
            if stack_info is not None and not stack_info.autoscale and model not in stack_info.models:
                info = await request_reload(stack_info, target.home)
                if model not in info.models:
                    print(f"the running stack serves only {','.join(info.models)} (started with --models)")
            await wait_for_model_worker(target.settings, model, timeout_s=60.0)

        print(f"using the running fleet at {target.url}")
        ok = await demo_session(
            target.url, target.settings, target.home, data, trained, serve_external, args.concurrency
        )
        return 0 if ok else 1
    # Fixed workers serve the registered models (none yet in a fresh Redis): they restart once the demo
    # registers. Autoscaled, restart_workers only waits for the autoscaler's first worker of the new model.
    stack = LocalStack(stack_config(target, args, models=None))
    with Signals() as signals:
        try:
            both = asyncio.gather(asyncio.to_thread(train_versions, data, work, args.trainer), stack.start())
            if not await signals.run(both):
                return 130
            trained = both.result()[0]
            print_trained(trained)
            print_stack(stack, workers=False)
            session = demo_session(
                stack.url,
                stack.settings,
                target.home,
                data,
                trained,
                lambda _model: stack.restart_workers(),  # the registered models, the demo's included
                args.concurrency,
            )
            if not await signals.run(session):
                return 130
            if args.keep:
                print(f"\nthe stack keeps running at {stack.url}; Ctrl-C or `fleet down` stops it", flush=True)
                return await foreground(stack, signals)
            return 0
        finally:
            await stack.stop()
            print("stack stopped", flush=True)
