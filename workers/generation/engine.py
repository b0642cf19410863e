"""The generation engine: one thread that steps a running batch of sequences, with sequences joining between steps.

Each loop of the thread: admit waiting sequences while the batch holds fewer than ``max_sequences`` (each prompt
runs alone and joins the batch: ``GenerationBackend.add``), end the sequences cancelled or past their deadline,
step the batch one token, choose each row's token (greedy at temperature 0, else softmax with ``top_p`` from the
sequence's own seeded generator), and hand what happened to ``on_events`` (called on the engine thread; the owner
passes it to its event loop): the text decoded since the last piece, and the sequences that finished (their end
token, a stop string, ``max_tokens``, the context limit, a cancel, a deadline, a model failure).

Text is handed on in pieces that are safe to show: a piece never ends in a partial UTF-8 character, and while
stop strings are set the last characters that could begin one are held back until they cannot.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas import ErrorCode, InferenceRequest, now_ms
from schemas.generation import FINISH_LENGTH, FINISH_STOP, SamplingParams, chat_prompt

from ..errors import ModelExecutionError
from ..runtimes.generative import GenerationBackend

log = logging.getLogger("fleet.workers")

#: How long the idle engine thread waits for a sequence before it looks at its stop flag again.
_IDLE_WAIT_S = 0.05


@dataclass
class Piece:
    """Text a sequence produced since its last piece (``seq`` counts from 1)."""

    key: str
    seq: int
    text: str
    tokens: int


@dataclass
class Finished:
    """A sequence that ended: its text and counts, or the error that ended it."""

    key: str
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = FINISH_STOP
    error: tuple[ErrorCode, str] | None = None
    compute_ms: float = 0.0


Event = Piece | Finished


@dataclass
class _Sequence:
    key: str
    request: InferenceRequest
    prompt: str
    params: SamplingParams
    ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    shown: int = 0  # characters of the text handed on
    pieces: int = 0
    last: int = -1
    generator: Any = None
    began: float = 0.0


class GenerationEngine:
    """Runs sequences on a :class:`GenerationBackend` in a thread of its own; ``start()``, ``stop()``."""

    def __init__(
        self, backend: GenerationBackend, max_sequences: int, on_events: Callable[[list[Event]], None], name: str
    ) -> None:
        self._backend = backend
        self._max = max_sequences
        self._on_events = on_events
        self._name = name
        self._waiting: queue.Queue[_Sequence] = queue.Queue()
        self._running: dict[str, _Sequence] = {}
        self._cancelled: dict[str, tuple[ErrorCode, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Tokens generated since the engine started (for tokens per second).
        self.tokens = 0

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    def start(self) -> None:
        """Start the engine thread."""
        self._thread = threading.Thread(target=self._loop, name=f"generate-{self._name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current step (blocking: call it off the event loop); idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, request: InferenceRequest, prompt: str, params: SamplingParams) -> None:
        """Queue a sequence (thread-safe); it joins the batch at the next step with room."""
        self._waiting.put(_Sequence(request.id, request, prompt, params))

    def cancel(self, key: str, code: ErrorCode, message: str) -> None:
        """End ``key`` before its next step with ``code`` (thread-safe; unknown keys are ignored later)."""
        with self._lock:
            self._cancelled[key] = (code, message)

    # the thread -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            events: list[Event] = []
            try:
                self._admit(events)
                self._end_cancelled(events)
                if self._running:
                    self._step(events)
            except Exception as exc:  # a model failure ends the batch, never the thread
                log.exception("generation step of %s failed", self._name)
                self._fail_all(events, f"generation failed: {type(exc).__name__}: {exc}")
            if events:
                self._on_events(events)
            elif not self._running:
                self._wait_for_work()

    def _wait_for_work(self) -> None:
        try:
            sequence = self._waiting.get(timeout=_IDLE_WAIT_S)
        except queue.Empty:
            return
        self._waiting.put(sequence)  # order among the waiting does not matter: a sequence waits at most a step

    def _admit(self, events: list[Event]) -> None:
        backend = self._backend
        while len(self._running) < self._max:
            try:
                sequence = self._waiting.get_nowait()
            except queue.Empty:
                return
            sequence.began = time.perf_counter()
            if sequence.request.expired():
                events.append(self._error(sequence, ErrorCode.DEADLINE_EXCEEDED, "the deadline passed in the queue"))
                continue
            with self._lock:
                cancelled = self._cancelled.pop(sequence.key, None)
            if cancelled is not None:
                events.append(self._error(sequence, *cancelled))
                continue
            if sequence.params.chat:
                messages = json.loads(sequence.prompt)
                sequence.prompt = backend.chat_template(messages) or chat_prompt(messages)
            sequence.ids = backend.encode(sequence.prompt)
            if len(sequence.ids) >= backend.max_context:
                most = backend.max_context - 1
                message = f"the prompt has {len(sequence.ids)} tokens; the model takes {most} at most"
                events.append(self._error(sequence, ErrorCode.INVALID_INPUT, message))
                continue
            if sequence.params.temperature > 0:
                sequence.generator = _generator(sequence.params.seed)
            try:
                logits = backend.add(sequence.key, sequence.ids)
            except ModelExecutionError as exc:
                events.append(self._error(sequence, ErrorCode.MODEL_ERROR, exc.message))
                continue
            self._running[sequence.key] = sequence
            self._take(sequence, logits, events)

    def _end_cancelled(self, events: list[Event]) -> None:
        with self._lock:
            if not self._cancelled and not any(s.request.deadline_ms for s in self._running.values()):
                return
            cancelled = {k: self._cancelled.pop(k) for k in list(self._cancelled) if k in self._running}
        at = now_ms()
        for key, sequence in list(self._running.items()):
            why = cancelled.get(key)
            if why is None and sequence.request.expired(at):
                why = (ErrorCode.DEADLINE_EXCEEDED, f"the deadline passed after {len(sequence.generated)} tokens")
            if why is not None:
                self._drop([key])
                events.append(self._error(sequence, *why))

    def _step(self, events: list[Event]) -> None:
        logits = self._backend.step({key: s.last for key, s in self._running.items()})
        for key, row in logits.items():
            self._take(self._running[key], row, events)

    def _take(self, sequence: _Sequence, logits: Any, events: list[Event]) -> None:
        """Choose ``sequence``'s next token from ``logits`` and hand on what it changes."""
        token = _choose(logits, sequence.params, sequence.generator)
        sequence.last = token
        self.tokens += 1
        if token in self._backend.eos_ids:
            self._finish(sequence, FINISH_STOP, events)
            return
        sequence.generated.append(token)
        text = self._backend.decode(sequence.generated)
        for stop in sequence.params.stop:
            at = text.find(stop)
            if at >= 0:
                self._finish(sequence, FINISH_STOP, events, text[:at])
                return
        if len(sequence.generated) >= sequence.params.max_tokens:
            self._finish(sequence, FINISH_LENGTH, events, text)
            return
        if len(sequence.ids) + len(sequence.generated) >= self._backend.max_context:
            self._finish(sequence, FINISH_LENGTH, events, text)
            return
        if sequence.params.stream:
            self._piece(sequence, text, _held_back(text, sequence.params.stop), events)

    def _piece(self, sequence: _Sequence, text: str, hold: int, events: list[Event]) -> None:
        end = len(text) - hold
        if end > sequence.shown:
            sequence.pieces += 1
            events.append(Piece(sequence.key, sequence.pieces, text[sequence.shown : end], 1))
            sequence.shown = end

    def _finish(self, sequence: _Sequence, reason: str, events: list[Event], text: str | None = None) -> None:
        self._drop([sequence.key])
        if text is None:
            text = self._backend.decode(sequence.generated)
        if sequence.params.stream:
            self._piece(sequence, text, 0, events)
        events.append(
            Finished(
                sequence.key,
                text,
                len(sequence.ids),
                len(sequence.generated),
                reason,
                compute_ms=(time.perf_counter() - sequence.began) * 1000.0,
            )
        )

    def _error(self, sequence: _Sequence, code: ErrorCode, message: str) -> Finished:
        return Finished(sequence.key, prompt_tokens=len(sequence.ids), error=(code, message))

    def _drop(self, keys: list[str]) -> None:
        for key in keys:
            self._running.pop(key, None)
        self._backend.remove(keys)

    def _fail_all(self, events: list[Event], message: str) -> None:
        sequences = list(self._running.values())
        try:
            self._drop([s.key for s in sequences])
        except Exception:  # the backend is broken: forget its batch
            log.exception("dropping the batch of %s failed", self._name)
            self._running.clear()
        events.extend(self._error(s, ErrorCode.MODEL_ERROR, message) for s in sequences)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` not to show yet: a partial UTF-8 character, the start of a stop string."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return hold


def _generator(seed: int | None) -> Any:
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int.from_bytes(__import__("os").urandom(8), "little") >> 1)
    return generator


def _choose(logits: Any, params: SamplingParams, generator: Any) -> int:
    """The next token: the most likely at temperature 0, else sampled (within ``top_p``) from ``generator``."""
    if params.temperature <= 0 or generator is None:
        return int(logits.argmax().item())
    import torch

    probabilities = torch.softmax(logits.cpu() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probabilities, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < params.top_p
        probabilities = torch.zeros_like(probabilities).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probabilities, 1, generator=generator).item())
