"""An async job: submit (202 at once), poll its status, wait for the result; an idempotent resubmit.

    python examples/async_job.py [--model tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid

import numpy as np

from fleet import FleetClient
from fleet.client.connection import resolve


async def run(url: str, model: str) -> None:
    x = np.ones((1, 16), np.float32)
    key = f"order-{uuid.uuid4().hex[:8]}"  # your own id for this piece of work
    async with FleetClient(url) as client:
        job_id = await client.submit(model, {"x": x}, idempotency_key=key)
        print(f"submitted job {job_id} (Idempotency-Key {key})")
        print(f"status right after submit: {(await client.job(job_id)).status.value}")

        result = await client.wait(job_id, timeout_s=60)  # polls with backoff; JobFailedError if it fails
        print(f"done: y = {result['y'].round(3)}")

        again = await client.submit(model, {"x": x}, idempotency_key=key)  # same key, same request
        print(f"resubmitted with the same key: job {again} ({'same job' if again == job_id else 'NEW JOB'})")
        job = await client.job(job_id)
        print(f"final status: {job.status.value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    asyncio.run(run(resolve(os.environ).url, args.model))


if __name__ == "__main__":
    main()
