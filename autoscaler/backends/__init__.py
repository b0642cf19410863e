"""Worker backends: turn a model's desired replica count into running workers.

`LocalProcessBackend` runs ``python -m workers`` processes on this machine (``fleet up``);
`KubernetesBackend` scales a Deployment per model through its scale subresource; `PlacementBackend`
places replicas on running workers that follow an assignment (``FLEET_AUTOSCALER_PLACEMENT``); `PoolBackend`
places them on a pool of multi-model workers it sizes and runs through one of the first two (``FLEET_AUTOSCALER_POOL``).
"""

from .env import pick_gpu, settings_env, worker_argv, worker_env
from .kubernetes import KubernetesBackend, deployment_name
from .local import LocalProcessBackend, LocalWorker, WorkerExit, WorkerPhase
from .placement import PlacementBackend
from .pool import PoolBackend, PoolRunner

__all__ = [
    "KubernetesBackend",
    "LocalProcessBackend",
    "LocalWorker",
    "PlacementBackend",
    "PoolBackend",
    "PoolRunner",
    "WorkerExit",
    "WorkerPhase",
    "deployment_name",
    "pick_gpu",
    "settings_env",
    "worker_argv",
    "worker_env",
]
