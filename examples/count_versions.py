"""Send N unversioned requests to a model and count which version answered each (for rollouts).

    python examples/count_versions.py tiny [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter

import numpy as np

from fleet import FleetClient
from fleet.client.connection import resolve


async def count(url: str, model: str, requests: int) -> Counter[str]:
    x = np.ones((1, 16), np.float32)
    async with FleetClient(url) as client:
        # A request id picks the version deterministically, so a retry lands on the same version.
        results = await asyncio.gather(
            *(client.infer(model, {"x": x}, request_id=f"req-{i}") for i in range(requests))
        )
    return Counter(result.model_version for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    counts = asyncio.run(count(resolve(os.environ).url, args.model, args.requests))
    print("answered by version: " + ", ".join(f"v{v} {n}" for v, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
