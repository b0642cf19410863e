"""Code the services share that is not wire contract: backoff, supervised routines, bytes-or-str, the Redis
reply-stream reader.

``schemas/`` stays the contract and imports nothing of ours; ``common/`` may import ``schemas``, and the
services (gateway, workers, autoscaler, fleet) import ``common`` instead of one another.
"""

from __future__ import annotations

from .backoff import Backoff, BackoffPolicy, pause
from .reply_stream import ReplyStream, ReplyWaiters
from .supervise import supervise
from .text import text

__all__ = ["Backoff", "BackoffPolicy", "ReplyStream", "ReplyWaiters", "pause", "supervise", "text"]
