"""Redis keys the autoscaler reads and writes. The layout is part of the shared contract and lives in
`schemas.Names` (see `schemas.names`); these functions delegate to it and stay for existing callers::

    {ns}:stats:{model}                 ZSET  worker id -> epoch ms of its last stats report
    {ns}:stats:{model}:{worker_id}     HASH  one worker's service stats for one model (fields: `schemas.stats`)
    {ns}:autoscaler:pins               HASH  model -> pinned replicas (manual override; absent = autoscaled)
    {ns}:autoscaler:decision:{model}   HASH  the last decision for a model (fields: `autoscaler.decisions`)
    {ns}:inventory                     ZSET  host -> epoch ms of its last GPU inventory report
    {ns}:inventory:{host}              HASH  the GPU inventory of one host (EXPIRE ttl), see `autoscaler.inventory`:
                                             total       GPUs NVML sees (0 without NVML or drivers)
                                             allocated   GPUs with at least one worker assigned
                                             available   total - allocated
                                             gpus        JSON list, one object per GPU: index, name,
                                                         util (percent), mem_used, mem_total (bytes),
                                                         workers (ids of the workers assigned to it)
                                             ts_ms       epoch ms of the report

Workers write the stats with `schemas.stats.publish_worker_stats`; model names never contain ':'.
The autoscaler writes the inventory with `autoscaler.inventory.publish_inventory`; `fleet status` reads it
with `autoscaler.inventory.read_inventory`.
"""

from __future__ import annotations

from schemas import Names


def stats_index_key(names: Names, model: str) -> str:
    """ZSET of the workers that reported stats for ``model``, scored by report time (epoch ms)."""
    return names.stats_index_key(model)


def stats_key(names: Names, model: str, worker_id: str) -> str:
    """HASH of one worker's service stats for ``model``."""
    return names.stats_key(model, worker_id)


def pins_key(names: Names) -> str:
    """HASH model -> pinned replica count (manual overrides)."""
    return names.pins_key


def decision_key(names: Names, model: str) -> str:
    """HASH of the last decision for ``model``."""
    return names.decision_key(model)


def inventory_index_key(names: Names) -> str:
    """ZSET of the hosts that reported a GPU inventory, scored by report time (epoch ms)."""
    return names.inventory_index_key


def inventory_key(names: Names, host: str) -> str:
    """HASH of one host's GPU inventory."""
    return names.inventory_key(host)
