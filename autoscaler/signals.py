"""What the autoscaler measures, as plain immutable values: Kafka load per model and worker service stats.

The collector (`collector.py`) and the stats reader (`stats.py`) build these; the policy (`policy.py`)
only reads them, so the policy can be tested with hand-written tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def ewma(previous: float | None, sample: float, dt_s: float, half_life_s: float) -> float:
    """Exponentially weighted moving average over time: after ``half_life_s`` a sample's weight halves.

    Time-aware (irregular sampling intervals weigh correctly). The first sample (``previous`` None)
    is taken as is.
    """
    if previous is None or half_life_s <= 0:
        return sample
    if dt_s <= 0:
        return previous
    weight = 1.0 - math.pow(0.5, dt_s / half_life_s)
    return previous + weight * (sample - previous)


@dataclass(frozen=True)
class PartitionLoad:
    """One partition of a model's request topic at one instant."""

    partition: int
    #: Log-end offset: the high watermark of a Fetch response (next offset to be written).
    log_end: int
    #: Offset committed by the model's worker group; None when the group never committed here.
    committed: int | None
    #: Records not yet completed: log_end - max(committed, log start), never negative.
    lag: int
    #: Records/s appended (smoothed); 0 until two samples exist.
    arrival_rate: float = 0.0
    #: Records/s committed by the workers (smoothed); 0 until two samples exist.
    completion_rate: float = 0.0
    #: True when the rates come from at least two samples.
    rates_known: bool = False
    #: Why the raw numbers looked wrong (committed beyond the log end, offsets going back), or "".
    anomaly: str = ""


@dataclass(frozen=True)
class ModelLoad:
    """The request topics of one model at one instant: per partition and in total.

    ``partitions`` are the interactive lane's (``topic``, ``group``); ``bulk_partitions`` the bulk
    lane's. Backlog and rates count both lanes: bulk work is work the workers must drain too.
    """

    model: str
    topic: str
    group: str
    partitions: tuple[PartitionLoad, ...]
    #: Monotonic clock reading (seconds) of the measurement.
    at: float
    #: True when the rates come from at least two samples.
    rates_known: bool = False
    #: False when the topic does not exist (yet): no partitions, no load.
    topic_exists: bool = True
    #: The bulk lane's partitions (``Names.bulk_topic``, consumed by ``Names.worker_group(model, "bulk")``).
    bulk_partitions: tuple[PartitionLoad, ...] = ()

    @property
    def partition_count(self) -> int:
        """Partitions of one lane's topic: more workers than this would sit idle (each joins both lanes)."""
        return max(len(self.partitions), len(self.bulk_partitions))

    @property
    def _all(self) -> tuple[PartitionLoad, ...]:
        return self.partitions + self.bulk_partitions

    @property
    def lag(self) -> int:
        """Total backlog in records, both lanes."""
        return sum(p.lag for p in self._all)

    @property
    def bulk_lag(self) -> int:
        """Backlog of the bulk lane alone."""
        return sum(p.lag for p in self.bulk_partitions)

    @property
    def log_end(self) -> int:
        """Sum of the log-end offsets (grows with every record produced)."""
        return sum(p.log_end for p in self._all)

    @property
    def committed(self) -> int:
        """Sum of the committed offsets (a partition without a commit counts as its log start, 0)."""
        return sum(p.committed or 0 for p in self._all)

    @property
    def arrival_rate(self) -> float:
        """Records/s arriving across all partitions (smoothed)."""
        return sum(p.arrival_rate for p in self._all)

    @property
    def completion_rate(self) -> float:
        """Records/s completed across all partitions (smoothed)."""
        return sum(p.completion_rate for p in self._all)

    @property
    def anomalies(self) -> tuple[str, ...]:
        """Anomalies seen on any partition."""
        lanes = (("", self.partitions), ("bulk ", self.bulk_partitions))
        return tuple(f"{lane}p{p.partition}: {p.anomaly}" for lane, parts in lanes for p in parts if p.anomaly)


@dataclass(frozen=True)
class ServiceStats:
    """What the live workers of one model report about themselves (see `stats.py`)."""

    #: Workers whose stats are fresh.
    replicas_reporting: int = 0
    #: Requests/s one worker completes while busy (1 / per-request service time); 0 = not measured.
    per_replica_throughput: float = 0.0
    #: Mean batch size across workers; 0 = unknown.
    mean_batch_size: float = 0.0
    #: Highest p95 request latency (ms) any worker reports; 0 = unknown.
    p95_latency_ms: float = 0.0
    #: Mean GPU utilization (percent) of workers that have one; None = no GPU reported.
    gpu_utilization: float | None = None
    #: Requests fetched but not yet answered, summed over workers.
    queue_depth: int = 0
    #: Text generation, summed over workers: sequences in flight, the workers' caps on them (0: not a generation
    #: model) and tokens generated per second.
    sequences: int = 0
    max_sequences: int = 0
    tokens_per_s: float = 0.0
    #: Mean requests per Kafka record over the workers that measured it (above 1 where the gateway coalesces sync
    #: requests into batch records); 0 = not measured (no recent work, or workers that do not report it).
    requests_per_record: float = 0.0
