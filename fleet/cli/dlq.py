"""``fleet dlq list MODEL [--limit N]`` and ``fleet dlq replay MODEL (--id ID ... | --all) [--force]``.

The dead letters of every model share the namespace's topic; each command shows and replays those of
one model (the ``fleet-model`` header of each record). ``list`` prints the newest dead letters of a
model: position (``partition:offset`` in the shared topic), request id, reason code, attempts, how many
times it was replayed, when it landed, and the reason. ``replay`` re-sends the requests (see
`fleet.cli.dlq_entries`); an entry already replayed is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from typing import Any

from fleet.client.connection import Target
from schemas import check_model_name

from .dlq_entries import Entry, read_entries, replay, with_replays


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dlq list`` and ``dlq replay``."""
    dlq = commands.add_parser("dlq", parents=[common], help="inspect and replay a model's dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    show = actions.add_parser("list", parents=[common], help="the newest dead letters of a model")
    show.add_argument("model", help="model name")
    show.add_argument("--limit", type=int, default=50, metavar="N", help="show the newest N (default 50)")
    show.set_defaults(handler=run_list)
    again = actions.add_parser("replay", parents=[common], help="re-send dead-lettered requests to the model")
    again.add_argument("model", help="model name")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", nargs="+", dest="ids", metavar="ID", help="request ids to replay")
    which.add_argument("--all", action="store_true", help="every dead letter with a decodable request")
    again.add_argument("--force", action="store_true", help="replay entries that were replayed before, again")
    again.set_defaults(handler=run_replay)


async def _entries(target: Target, model: str, redis: Any) -> list[Entry]:
    entries = await read_entries(target.settings, target.names, model)
    return await with_replays(redis, target.names, model, entries)


def _when(entry: Entry) -> str:
    at_ms = entry.letter.at_ms if entry.letter is not None else float(entry.timestamp_ms)
    return dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_entries(entries: Sequence[Entry], limit: int) -> list[str]:
    """Table lines for the newest ``limit`` entries (oldest of them first)."""
    newest = sorted(entries, key=lambda e: (e.letter.at_ms if e.letter else e.timestamp_ms, e.position))[-limit:]
    lines = [f"{'POSITION':<10} {'ID':<36} {'CODE':<21} {'TRIES':>5} {'REPLAYED':>8}  {'TIME (UTC)':<19}  REASON"]
    for e in newest:
        request_id = e.request.id if e.request is not None else "-"
        code = e.letter.code.value if e.letter is not None else "-"
        tries = str(e.request.attempt) if e.request is not None else "-"
        reason = e.letter.reason if e.letter is not None else ""
        if e.problem:
            reason = f"[{e.problem}] {reason}".strip()
        lines.append(
            f"{e.position:<10} {request_id:<36} {code:<21} {tries:>5} {e.replays:>8}  {_when(e):<19}  {reason}"
        )
    return lines


async def run_list(target: Target, args: argparse.Namespace) -> int:
    """Print the newest dead letters."""
    model = check_model_name(args.model)
    if args.limit < 1:
        raise ValueError("--limit must be >= 1")
    redis = target.settings.redis.client()
    try:
        entries = await _entries(target, model, redis)
    finally:
        await redis.aclose()
    if not entries:
        print(f"{model}: no dead letters on {target.names.dlq_topic}")
        return 0
    print("\n".join(format_entries(entries, args.limit)))
    shown = min(args.limit, len(entries))
    print(f"{len(entries)} dead letter(s) of {model} on {target.names.dlq_topic}; newest {shown} shown")
    return 0


async def run_replay(target: Target, args: argparse.Namespace) -> int:
    """Replay the chosen dead letters; exit 1 when an asked-for id was not found or nothing could be sent."""
    model = check_model_name(args.model)
    redis = target.settings.redis.client()
    try:
        entries = await _entries(target, model, redis)
        if args.all:
            chosen = entries
            missing: list[str] = []
        else:
            wanted = set(args.ids)
            chosen = [e for e in entries if e.request is not None and e.request.id in wanted]
            missing = sorted(wanted - {e.request.id for e in chosen if e.request is not None})
        results = await replay(target.settings, redis, target.names, model, chosen, force=args.force)
    finally:
        await redis.aclose()
    for result in results:
        request_id = result.entry.request.id if result.entry.request is not None else "-"
        if result.sent:
            print(f"replayed {result.entry.position} {request_id} -> {result.topic} (replay #{result.entry.replays})")
        else:
            print(f"skipped  {result.entry.position} {request_id}: {result.skipped}")
    for request_id in missing:
        print(f"not found: {request_id}")
    sent = sum(r.sent for r in results)
    print(f"{sent} of {len(results)} dead letter(s) replayed")
    return 1 if missing or (results and not sent) else 0
