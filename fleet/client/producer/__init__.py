"""Direct Kafka producer client: numpy arrays in, ``InferenceRequest`` envelopes on the model's topic, numpy out.

For services that skip HTTP and publish straight to ``names.request_topic(model)`` with the shared
schemas. Inputs are checked against the registered signature before anything is sent (a bad input
raises ``SchemaError(INVALID_INPUT)`` at the call site). Replies come back one of three ways:

* ``ReplyKind.STREAM`` (default): workers ``XADD`` each result to this client's own reply stream
  (``names.client_reply_stream(client_id)``); one routine reads it with ``XREAD BLOCK`` (no per-request
  polling) and hands results to :meth:`FleetProducer.results` or to the caller of :meth:`FleetProducer.infer`.
  Unlike a gateway's sync reply, which is the stream entry only, a producer's reply also keeps the first
  result under ``names.result_key(id)`` for ``result_ttl_s`` (default an hour), so a client that restarts
  (``fleet batch run --resume``) reads back what was answered meanwhile (:meth:`FleetProducer.stored_results`).
* ``ReplyKind.RESULT``: workers only store the result under ``names.result_key(id)`` (in the request's job
  shard); the caller fetches it later with :meth:`FleetProducer.result` / :meth:`FleetProducer.wait_result`
  (submit now, come back later; ``result_ttl_s`` keeps it longer than the default hour).
* ``ReplyKind.TOPIC``: workers store the first result and a marker once it is produced (so a redelivered
  request is produced once), and produce it (an ``InferenceResponse``, key = request id) to the Kafka topic
  ``reply_topic`` that a streaming pipeline consumes.

A request without a version goes where the gateway would send it: to the model's default version, or
to the version its traffic split picks for the request id (``fleet models traffic``, the same hash as
the gateway's), both re-read every ``routing_ttl_s`` (1 s), so a canary, a promotion or a rollback
reaches direct producers too; the last known routing is kept while Redis is unreachable.

Sends are pipelined (``await producer.send()`` only enqueues into aiokafka's batches; delivery is
tracked by a callback), and at most ``max_in_flight`` requests are unanswered at a time: ``submit``
waits for a free slot (backpressure). A request unanswered ``timeout_s`` (+1 s grace) after it was sent
completes with ``DEADLINE_EXCEEDED``; its envelope carries the same deadline, so workers skip it.

The parts, one job each: :mod:`.routing` (``RoutingCache``), :mod:`.sender` (``RequestSender``),
:mod:`.results` (``ProducerResult``, ``PendingTable``: in-flight bound, stash, deadline sweeper), the
reply reader :class:`common.reply_stream.ReplyStream`, and the facade :mod:`.client` (``FleetProducer``).
"""

from __future__ import annotations

from .client import FleetProducer
from .results import Array, PendingTable, ProducerResult, RequestFailedError
from .routing import Route, RoutingCache
from .sender import RequestSender

__all__ = [
    "Array",
    "FleetProducer",
    "PendingTable",
    "ProducerResult",
    "RequestFailedError",
    "RequestSender",
    "Route",
    "RoutingCache",
]
