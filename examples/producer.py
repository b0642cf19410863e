"""The direct producer: publish requests straight to the model's Kafka topic, no HTTP.

    python examples/producer.py [--model tiny] [--requests 200]

Finds Kafka, Redis and the namespace as `fleet` commands do (FLEET_KAFKA_BOOTSTRAP, FLEET_REDIS_URL,
FLEET_NAMESPACE, else the running local stack).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import numpy as np

from fleet import FleetProducer
from fleet.client.connection import resolve
from schemas import FleetSettings


async def run(settings: FleetSettings, model: str, count: int) -> None:
    rows = np.random.default_rng(0).standard_normal((count, 16)).astype(np.float32)
    async with FleetProducer(settings, max_in_flight=1024) as producer:
        y = await producer.infer(model, {"x": rows[:1]})  # one request, wait for its outputs
        print(f"infer: y{list(y['y'].shape)}")

        ids = [await producer.submit(model, {"x": row[None]}) for row in rows]  # pipelined
        answered = failed = 0
        async for result in producer.results(count=len(ids)):  # in any order
            if result.error is None:
                answered += 1
            else:
                failed += 1
        print(f"submitted {len(ids)}, answered {answered}, failed {failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(resolve(os.environ).settings, args.model, args.requests))


if __name__ == "__main__":
    main()
