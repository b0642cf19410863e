"""``fleet keys create NAME [--models m1,m2] [--rate R]``, ``fleet keys list`` and ``fleet keys revoke KEY_ID``.

``create`` prints the secret once (only its sha256 is stored, see `schemas.apikeys`); ``list`` shows
id, name, allowed models, rate, creation time and whether the key is revoked; ``revoke`` marks a key
revoked; gateways stop accepting it within their ``FLEET_GATEWAY_AUTH_CACHE_TTL_S``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from typing import Any

from fleet.client.connection import Target
from schemas.apikeys import ApiKey, ApiKeyStore, parse_models


def _rate(text: str) -> float:
    """``"R"`` or ``"R/s"`` -> R requests per second (0 = unlimited)."""
    value = text.strip().removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: use R or R/s (requests per second)") from None
    if not 0 <= rate < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be a finite number >= 0")
    return rate


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``keys create``, ``keys list`` and ``keys revoke``."""
    keys = commands.add_parser("keys", parents=[common], help="create, list and revoke gateway API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="create a key and print its secret (once)")
    create.add_argument("name", help="who or what the key is for (1-128 of [A-Za-z0-9_.@-])")
    create.add_argument("--models", default="", metavar="M1,M2", help="models the key may use (default: all)")
    create.add_argument("--rate", type=_rate, default=0.0, metavar="R/s", help="requests per second (default: none)")
    create.set_defaults(handler=run_create)
    show = actions.add_parser("list", parents=[common], help="every key (never the secrets)")
    show.set_defaults(handler=run_list)
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id", help="the id shown by `fleet keys list` (the part after fk_)")
    revoke.set_defaults(handler=run_revoke)


def _when(ms: float) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_keys(keys: Sequence[ApiKey]) -> list[str]:
    """Table lines of ``keys``."""
    lines = [f"{'ID':<12}  {'NAME':<24} {'MODELS':<30} {'RATE/S':>8}  {'CREATED (UTC)':<19}  STATUS"]
    for key in keys:
        status = f"revoked {_when(key.revoked_ms)}" if key.revoked_ms is not None else "active"
        models = ",".join(key.models) or "(all)"
        rate = f"{key.rate:g}" if key.rate > 0 else "-"
        lines.append(f"{key.key_id:<12}  {key.name:<24} {models:<30} {rate:>8}  {_when(key.created_ms):<19}  {status}")
    return lines


async def run_create(target: Target, args: argparse.Namespace) -> int:
    """Create a key and print its secret."""
    models = parse_models(args.models)
    redis = target.settings.redis.client()
    try:
        key, secret = await ApiKeyStore(redis, target.names).create(args.name, models, args.rate)
    finally:
        await redis.aclose()
    print(secret)
    rate = f"{key.rate:g} requests/s" if key.rate > 0 else "no rate limit"
    print(
        f"created key {key.key_id} ({key.name}; models: {','.join(key.models) or 'all'}; {rate}); "
        "the secret above is shown only now",
    )
    return 0


async def run_list(target: Target, args: argparse.Namespace) -> int:
    """Print every key."""
    redis = target.settings.redis.client()
    try:
        keys = await ApiKeyStore(redis, target.names).list()
    finally:
        await redis.aclose()
    if not keys:
        print(f"no API keys in namespace {target.names.namespace!r}")
        return 0
    print("\n".join(format_keys(keys)))
    return 0


async def run_revoke(target: Target, args: argparse.Namespace) -> int:
    """Revoke one key."""
    key_id = args.key_id.removeprefix("fk_").split("_", 1)[0]
    redis = target.settings.redis.client()
    try:
        key = await ApiKeyStore(redis, target.names).revoke(key_id)
    except KeyError:
        raise ValueError(f"no API key {key_id!r} in namespace {target.names.namespace!r}") from None
    finally:
        await redis.aclose()
    print(f"revoked key {key.key_id} ({key.name}); gateways refuse it within their auth cache TTL")
    return 0
