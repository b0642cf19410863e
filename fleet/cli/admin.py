"""``fleet admin migrate-keys [--dry-run] [--delete-stale]``: upgrade a deployment's Redis to the current key layout.

Every Redis key now carries a hash tag (`schemas.names`); a Redis written by the previous version holds its
registry, API keys, placements and jobs under the old names, which this version does not read. The command
prints what it finds (the plan), moves each key with its TTL (`schemas.key_migrator`) and prints the summary;
``--dry-run`` prints only the plan. Running it again changes nothing. ``fleet up`` runs it by itself on its
embedded Redis.
"""

from __future__ import annotations

import argparse
from typing import Any

from fleet.client.connection import Target
from schemas.key_migrator import KeyMigrator


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``admin migrate-keys``."""
    admin = commands.add_parser("admin", parents=[common], help="maintenance of a deployment's Redis")
    actions = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    migrate = actions.add_parser(
        "migrate-keys",
        parents=[common],
        help="move the namespace's Redis keys of the previous layout (no hash tag) to their current names",
    )
    migrate.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    migrate.add_argument(
        "--delete-stale",
        action="store_true",
        help="also delete the old keys left behind (heartbeats, leases, stats...; once no old process runs)",
    )
    migrate.set_defaults(handler=run_migrate)


async def run_migrate(target: Target, args: argparse.Namespace) -> int:
    """Print the plan, then (unless --dry-run) migrate and print the summary (and each conflict left)."""
    redis = target.settings.redis.client()
    try:
        migrator = KeyMigrator(redis, target.names)
        plan = await migrator.run(dry_run=True, delete_stale=args.delete_stale)
        print(f"plan for namespace {target.names.namespace!r}:")
        print("\n".join(f"  {line}" for line in plan.lines()))
        if args.dry_run:
            print(plan.summary())
            return 0
        report = await migrator.run(delete_stale=args.delete_stale)
    finally:
        await redis.aclose()
    for old, new in report.conflicts:
        print(f"conflict: {old} and {new} both exist and differ; kept {new}, {old} left in place")
    print(report.summary())
    return 0
