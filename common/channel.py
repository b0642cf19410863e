"""Listening on a Redis pub/sub channel for as long as the owner runs: one subscription on its own connection,
subscribed again after a lost connection. Pub/sub is fire-and-forget (what is published while a listener is not
subscribed is lost), so a listener's owner also polls, and ``on_subscribed`` runs after every (re)subscription
for it to catch up on what it may have missed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from .backoff import Backoff, BackoffPolicy

#: Pauses before subscribing again after a failure: 0.2 s doubling to 5 s.
RESUBSCRIBE = BackoffPolicy(first_s=0.2, max_s=5.0, jitter=0.2)


async def listen_routine(
    redis: Any,
    channel: str,
    on_message: Callable[[bytes], None],
    logger: logging.Logger,
    *,
    on_subscribed: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    policy: BackoffPolicy = RESUBSCRIBE,
) -> None:
    """Call ``on_message`` with each message's data published on ``channel`` until ``stop`` is set (or the
    task is cancelled); a Redis failure is logged and the channel subscribed again after ``policy``'s pause.
    ``on_subscribed`` runs once subscribed, each time (a RedisError from it counts as a failure)."""
    backoff = Backoff(policy)
    while stop is None or not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if on_subscribed is not None:
                await on_subscribed()
            backoff.reset()
            while stop is None or not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message.get("type") == "message":
                    on_message(message["data"])
        except RedisError as exc:
            logger.warning("channel %s: %s; subscribing again", channel, exc)
        finally:
            try:
                await pubsub.aclose()
            except RedisError as exc:  # the connection is gone anyway
                logger.debug("channel %s not closed cleanly: %s", channel, exc)
        if await backoff.sleep(stop):
            return
