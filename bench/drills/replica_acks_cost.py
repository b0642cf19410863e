"""What FLEET_REDIS_REPLICA_ACKS costs a worker's delivery: rounds of sync replies on a 3+3 local cluster.

``python -m bench.drills.replica_acks_cost`` prints the median and p95 of one round's delivery (one pipelined
round trip, plus one WAIT per node written with acks 1) with acks 0 and 1, interleaved, and their ratio. A
shared machine makes both upper bounds; the ratio is the figure to read.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from fleet.local.cluster import LocalCluster
from schemas import InferenceResponse, Names, RedisSettings, ReplyAddress, ReplyKind
from workers.replies import ReplyWriter

ROUNDS = 300
REPLIES = 16  # per round, to 4 gateways' reply streams (on up to 3 nodes)


async def _measure(url: str) -> dict[int, list[float]]:
    client = RedisSettings(url=url).client()
    names = Names("bench-acks")
    writers = {acks: ReplyWriter(client, names, replica_acks=acks) for acks in (0, 1)}
    times: dict[int, list[float]] = {0: [], 1: []}
    try:
        for n in range(ROUNDS):
            for acks, writer in writers.items():
                items = [
                    (
                        ReplyAddress(ReplyKind.STREAM, names.reply_stream(f"gw{i % 4}")),
                        InferenceResponse(f"{n}-{i}", "m", "1"),
                    )
                    for i in range(REPLIES)
                ]
                start = time.perf_counter()
                await writer.deliver(items)
                times[acks].append(time.perf_counter() - start)
        await client.delete(*(names.reply_stream(f"gw{i}") for i in range(4)))
    finally:
        await client.aclose()
    return times


def main() -> None:
    cluster = LocalCluster(replicas=1)
    cluster.start()
    try:
        times = asyncio.run(_measure(cluster.url))
    finally:
        cluster.stop()
    median = {acks: statistics.median(t) * 1000 for acks, t in times.items()}
    for acks, t in times.items():
        p95 = statistics.quantiles(t, n=20)[-1] * 1000
        print(
            f"replica_acks={acks}: {ROUNDS} rounds of {REPLIES} replies, median {median[acks]:.2f} ms, p95 {p95:.2f} ms"
        )
    print(f"ratio of medians (acks 1 / acks 0): {median[1] / median[0]:.2f}x")


if __name__ == "__main__":
    main()
