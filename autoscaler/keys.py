"""Redis keys the autoscaler reads and writes, under the fleet namespace ``ns``::

    {ns}:stats:{model}                 ZSET  worker id -> epoch ms of its last stats report
    {ns}:stats:{model}:{worker_id}     HASH  one worker's service stats for one model (EXPIRE ttl):
                                             service_s   mean per-request service time (batch time / batch size), s
                                             batch       mean batch size
                                             completed   requests completed since the worker started
                                             p95_ms      p95 request latency (fetch to reply), ms; 0 = unknown
                                             gpu_util    GPU utilization in percent; -1 = no GPU
                                             queue       requests fetched but not answered yet
                                             ts_ms       epoch ms of the report
    {ns}:autoscaler:pins               HASH  model -> pinned replicas (manual override; absent = autoscaled)
    {ns}:inventory                     ZSET  host -> epoch ms of its last GPU inventory report
    {ns}:inventory:{host}              HASH  the GPU inventory of one host (EXPIRE ttl), see `autoscaler.inventory`:
                                             total       GPUs NVML sees (0 without NVML or drivers)
                                             allocated   GPUs with at least one worker assigned
                                             available   total - allocated
                                             gpus        JSON list, one object per GPU: index, name,
                                                         util (percent), mem_used, mem_total (bytes),
                                                         workers (ids of the workers assigned to it)
                                             ts_ms       epoch ms of the report

Workers write the stats with `autoscaler.stats.publish_service_stats`; model names never contain ':'.
The autoscaler writes the inventory with `autoscaler.inventory.publish_inventory`; `fleet status` reads it
with `autoscaler.inventory.read_inventory`.
"""

from __future__ import annotations

from schemas import Names


def stats_index_key(names: Names, model: str) -> str:
    """ZSET of the workers that reported stats for ``model``, scored by report time (epoch ms)."""
    return f"{names.namespace}:stats:{model}"


def stats_key(names: Names, model: str, worker_id: str) -> str:
    """HASH of one worker's service stats for ``model``."""
    return f"{names.namespace}:stats:{model}:{worker_id}"


def pins_key(names: Names) -> str:
    """HASH model -> pinned replica count (manual overrides)."""
    return f"{names.namespace}:autoscaler:pins"


def inventory_index_key(names: Names) -> str:
    """ZSET of the hosts that reported a GPU inventory, scored by report time (epoch ms)."""
    return f"{names.namespace}:inventory"


def inventory_key(names: Names, host: str) -> str:
    """HASH of one host's GPU inventory."""
    return f"{names.namespace}:inventory:{host}"
