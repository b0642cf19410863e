"""Synchronous inference through the gateway: the async client, then the blocking helper for scripts.

    python examples/sync_infer.py [--model tiny]

Finds the gateway as `fleet` commands do: FLEET_URL, else the running local stack (`fleet up`).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import numpy as np

from fleet import FleetClient, infer_sync
from fleet.client.connection import resolve


async def with_the_client(url: str, model: str, x: np.ndarray) -> None:
    async with FleetClient(url) as client:  # one connection pool; binary tensors by default
        result = await client.infer(model, {"x": x})
        print(f"FleetClient.infer: {model} v{result.model_version} -> y{list(result['y'].shape)}")
        print(result["y"].round(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    url = resolve(os.environ).url
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)  # two rows of 16 features

    asyncio.run(with_the_client(url, args.model, x))

    result = infer_sync(url, args.model, {"x": x})  # a module function: opens and closes its own client
    print(f"infer_sync: {args.model} v{result.model_version} -> y{list(result['y'].shape)}")


if __name__ == "__main__":
    main()
