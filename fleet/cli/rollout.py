"""``fleet models traffic`` and ``fleet models rollback``: canary / A-B splits of a model's unversioned
traffic, and the one-step return to the previous default (storage and scripts: ``schemas.traffic``)."""

from __future__ import annotations

import argparse
from typing import Any

from fleet.client.connection import Target, open_registry
from schemas import ErrorCode, SchemaError
from schemas.traffic import TrafficSplit


def add_actions(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``traffic`` and ``rollback`` to the ``models`` subparsers."""
    traffic = sub.add_parser(
        "traffic",
        parents=[common],
        help="split unversioned traffic between versions (canary / A-B); no split given: print the current one",
    )
    traffic.add_argument("name")
    traffic.add_argument(
        "split", nargs="*", metavar="VERSION=PERCENT", help="e.g. 1=90 2=10 (whole percentages adding up to 100)"
    )
    traffic.add_argument("--clear", action="store_true", help="remove the split: all of it to the default version")
    traffic.set_defaults(handler=traffic_split)

    rollback = sub.add_parser(
        "rollback",
        parents=[common],
        help="in one step: clear the split and point the default back at the previous default",
    )
    rollback.add_argument("name")
    rollback.set_defaults(handler=rollback_model)


async def traffic_split(target: Target, args: argparse.Namespace) -> int:
    """``fleet models traffic M [V=P ...] [--clear]``."""
    if args.clear and args.split:
        raise SchemaError("give a split or --clear, not both", code=ErrorCode.INVALID_REQUEST)
    async with open_registry(target.settings) as registry:
        await registry.get(args.name)  # an unknown model is an error before anything is written
        if args.clear:
            had = await registry.clear_traffic(args.name)
            default = await registry.default_version(args.name)
            what = "split cleared" if had else "no split to clear"
            print(f"{args.name}: {what}; all unversioned traffic goes to the default version {default}")
            return 0
        if args.split:
            split = TrafficSplit.parse(args.split)
            await registry.set_traffic(args.name, split)
            print(f"{args.name}: unversioned traffic split {split.describe()} (gateways follow within their cache TTL)")
            return 0
        split_now = await registry.traffic(args.name)
        default = await registry.default_version(args.name)
        previous = await registry.previous_default(args.name)
    if split_now is None:
        print(f"{args.name}: no split; all unversioned traffic goes to the default version {default}")
    else:
        print(f"{args.name}: {split_now.describe()} (default {default})")
    if previous is not None:
        print(f"  rollback returns to version {previous}")
    return 0


async def rollback_model(target: Target, args: argparse.Namespace) -> int:
    """``fleet models rollback M``."""
    async with open_registry(target.settings) as registry:
        before, after = await registry.rollback(args.name)
    if before == after:
        print(f"{args.name}: split cleared; all unversioned traffic goes to the default version {after}")
    else:
        print(f"{args.name}: rolled back; default {before} -> {after}, split cleared")
    return 0
