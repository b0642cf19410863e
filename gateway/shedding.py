"""Deadline-aware load shedding: a sync request that would wait too long for its timeout is refused at once.

Past a model's capacity, sync requests queue in Kafka and each waits longer than the one before until
they time out with 504, after holding a connection and a slot for their whole timeout. ``ModelQueues``
counts, per model, the sync requests this gateway is waiting on and the rate their replies arrive; when
``waiting / rate`` (the expected wait of a new request) exceeds ``HEADROOM`` (half) of the new request's
timeout, the request is refused with 503 ``OVERLOADED`` and a ``Retry-After`` before anything is
published. Requests that can be answered in time are still admitted, so the model keeps serving at its
capacity and the answers that come back are timely ones.

Each gateway judges from what it sees itself (the replies to its own requests): no Redis or Kafka call
on the hot path. Until a model has answered ``min_answers`` requests in the window the gateway knows
nothing of its rate and sheds nothing (a model scaling from zero is waited for, as before). The rate is
what the model answered, so after a quiet spell it is what the demand was, not what the model can do: the
first moments of a burst may shed more than needed, and the estimate rises with the answers that follow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import OverloadedError

#: A request is admitted while its expected wait is at most this share of its timeout: the rest absorbs the
#: estimate's error and the time to run and answer it, so admitted requests are answered, not timed out.
HEADROOM = 0.5
#: Replies are counted in buckets of this many seconds.
_BUCKET_S = 0.5


@dataclass
class _Model:
    waiting: int = 0
    buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> replies in it
    answers: int = 0  # the sum of ``buckets``
    trimmed_at: int | None = None  # the bucket index ``buckets`` were last trimmed at


class ModelQueues:
    """Sync requests waiting per model and their reply rate over the last ``window_s`` (pure, clock injected)."""

    def __init__(
        self, window_s: float = 5.0, min_answers: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = max(1, round(window_s / _BUCKET_S))
        self._min_answers = min_answers
        self._clock = clock
        self._models: dict[str, _Model] = {}

    def admit(self, model: str, timeout_s: float) -> None:
        """Count one more request waiting on ``model``; OverloadedError when it would wait past half its timeout."""
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        wait_s = self.expected_wait_s(model)
        if wait_s is not None and wait_s > timeout_s * HEADROOM:
            rate = self.rate(model) or 0.0
            raise OverloadedError(
                f"model {model!r} answers about {rate:.0f} requests/s and {state.waiting} are waiting at this "
                f"gateway: a new one would wait about {wait_s:.1f} s, too long for its {timeout_s:g} s timeout",
                retry_after_s=max(1, math.ceil(wait_s - timeout_s * HEADROOM)),
            )
        state.waiting += 1

    def done(self, model: str, answered: bool) -> None:
        """A request admitted for ``model`` ended; ``answered`` when a reply came (not a timeout or a failure)."""
        state = self._models.get(model)
        if state is None:
            return
        state.waiting = max(0, state.waiting - 1)
        if answered:
            now = self._bucket()
            state.buckets[now] = state.buckets.get(now, 0) + 1
            state.answers += 1
            self._trim(state, now)
        if state.waiting == 0 and not state.buckets:
            del self._models[model]

    def rate(self, model: str) -> float | None:
        """Replies per second over the window; None until ``min_answers`` replies were seen in it."""
        state = self._models.get(model)
        if state is None:
            return None
        now = self._bucket()
        self._trim(state, now)
        answers = state.answers
        if answers < self._min_answers:
            return None
        # Over the span the answers cover, not the whole window: a model that just started answering has
        # answered at this rate, not at its answers spread over a window it was idle for most of.
        span_s = (now - min(state.buckets) + 1) * _BUCKET_S
        return answers / span_s

    def expected_wait_s(self, model: str) -> float | None:
        """How long a new request for ``model`` would wait behind those already waiting (None: unknown)."""
        rate = self.rate(model)
        state = self._models.get(model)
        if rate is None or state is None:
            return None
        return state.waiting / rate

    def _bucket(self) -> int:
        return int(self._clock() / _BUCKET_S)

    def _trim(self, state: _Model, now: int) -> None:
        if state.trimmed_at == now:  # buckets move on every _BUCKET_S: once per bucket is enough
            return
        state.trimmed_at = now
        for index in [i for i in state.buckets if i <= now - self._window]:
            state.answers -= state.buckets.pop(index)
