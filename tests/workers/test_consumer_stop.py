"""Stopping one model's consumer never blocks the event loop, even while its model thread is busy."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

from schemas import ModelRecord
from workers import Worker, WorkerSettings


async def test_stop_waits_for_the_model_thread_off_the_event_loop(
    worker_settings: WorkerSettings, tiny_model: ModelRecord
) -> None:
    # Nothing loaded: the model thread runs only the job below when the consumer stops.
    async with Worker(dataclasses.replace(worker_settings, preload=False)) as worker:
        await worker.wait_ready(30)
        await _stop_with_a_busy_model_thread(worker)


async def _stop_with_a_busy_model_thread(worker: Worker) -> None:
    consumer = worker.consumers[0]
    executor = consumer.executor
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    # A batch still running on the model thread, which only the event loop can finish.
    busy = loop.run_in_executor(executor, gate.wait, 10.0)

    async def release_once_shutdown_began() -> None:
        # ThreadPoolExecutor sets _shutdown as shutdown() starts, from whatever thread runs it: nothing to await.
        while not getattr(executor, "_shutdown", True):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        gate.set()

    releaser = asyncio.create_task(release_once_shutdown_began())
    await consumer.stop(10)
    await releaser
    # Had shutdown(wait=True) run on the loop, the releaser could not run and the batch would have timed out.
    assert await busy is True
