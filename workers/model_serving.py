"""The parts that serve one model, wired the same way in both worker modes: its cache of loaded versions, its
stats, and the round runner (handler with the retry policy, replies, dead letters)."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from schemas import ModelRegistry, Names
from schemas.load_failures import LoadFailures
from schemas.topics import BulkTopics

from .artifact_cache import ArtifactCache
from .deadletter import DeadLetterWriter
from .handler import RequestHandler
from .jobs import JobClaims
from .metrics import WorkerMetrics
from .models import ModelCache
from .replies import ReplyWriter
from .residency_manager import ResidencyManager
from .retries import RetryPolicy
from .round import RoundRunner
from .settings import WorkerSettings
from .stats import ModelStats
from .steps import StepRouter, step_metrics


@dataclass(frozen=True, slots=True)
class ModelServing:
    """One model's cache, stats and round runner."""

    cache: ModelCache
    stats: ModelStats
    rounds: RoundRunner


@dataclass(frozen=True, slots=True)
class WorkerBackends:
    """What every model of a worker shares: its clients, writers, metrics, memory budget and artifact cache."""

    settings: WorkerSettings
    names: Names
    redis: Any
    producer: Any
    metrics: WorkerMetrics
    residency: ResidencyManager
    artifacts: ArtifactCache
    claims: JobClaims
    replies: ReplyWriter
    dead_letters: DeadLetterWriter

    def serve(self, model: str, executor: Executor) -> ModelServing:
        """The serving parts of ``model``, whose loads and batches run on ``executor``."""
        settings, worker_id = self.settings, self.settings.worker_id
        cache = ModelCache(
            model,
            ModelRegistry(self.redis, self.names),
            executor,
            settings,
            self.residency,
            self.artifacts,
            LoadFailures(self.redis, self.names, worker_id),
        )
        stats = ModelStats()
        retry = RetryPolicy(
            settings.retry_attempts, settings.retry_base_ms, settings.retry_max_ms, settings.retry_jitter
        )
        handler = RequestHandler(model, cache, executor, worker_id, self.metrics, stats, self.claims, retry)
        # The rounds' reply writer also passes pipeline steps' answers on to the next steps (workers.steps).
        replies = StepRouter(
            model,
            self.redis,
            self.names,
            self.producer,
            self.dead_letters,
            step_metrics(self.metrics.registry),
            worker_id,
            BulkTopics(settings.fleet.kafka, self.names),
        )
        rounds = RoundRunner(model, handler, self.producer, replies, self.dead_letters, self.metrics, stats)
        return ModelServing(cache, stats, rounds)
