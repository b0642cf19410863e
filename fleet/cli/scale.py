"""``fleet scale MODEL --replicas N | --auto``: pin a model to a fixed number of workers, or hand it back.

Pins are the autoscaler's runtime overrides (`autoscaler.state.pin`, ``names.pins_key``): the autoscaler
reads them every round, so a pin takes effect within one interval, whichever backend runs the workers.
"""

from __future__ import annotations

import argparse
from typing import Any

from autoscaler import state as autoscaler_state
from fleet.client.connection import Target
from schemas import ModelRegistry, Names, check_model_name


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``scale``."""
    scale = commands.add_parser(
        "scale", parents=[common], help="pin a model's worker count (--replicas N) or unpin it (--auto)"
    )
    scale.add_argument("model", help="model name")
    how = scale.add_mutually_exclusive_group(required=True)
    how.add_argument("--replicas", type=int, metavar="N", help="hold the model at N workers (0 stops them)")
    how.add_argument("--auto", action="store_true", help="remove the pin: the autoscaler decides again")
    scale.set_defaults(handler=run_scale)


async def run_scale(target: Target, args: argparse.Namespace) -> int:
    """Write or remove the pin and print what holds now."""
    model = check_model_name(args.model)
    if args.replicas is not None and args.replicas < 0:
        raise ValueError("--replicas must be >= 0")
    names = Names(target.settings.namespace)
    redis = target.settings.redis.client()
    try:
        registered = model in await ModelRegistry(redis, names).models()
        if args.auto:
            was = (await autoscaler_state.read_pins(redis, names)).get(model)
            await autoscaler_state.unpin(redis, names, model)
            print(f"{model}: autoscaled" + ("" if was is None else f" (pin to {was} removed)"))
        else:
            await autoscaler_state.pin(redis, names, model, args.replicas)
            print(f"{model}: pinned to {args.replicas} replicas (autoscaling is off for it; `--auto` undoes it)")
    finally:
        await redis.aclose()
    if not registered:
        print(f"note: {model!r} is not registered in namespace {names.namespace}")
    return 0
