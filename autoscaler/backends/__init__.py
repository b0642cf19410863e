"""Worker backends: turn a model's desired replica count into running workers.

`LocalProcessBackend` runs ``python -m workers`` processes on this machine (``fleet up``);
`KubernetesBackend` scales a Deployment per model through its scale subresource; `PlacementBackend`
places replicas on running workers that follow an assignment (``FLEET_AUTOSCALER_PLACEMENT``).
"""

from .env import pick_gpu, settings_env, worker_argv, worker_env
from .kubernetes import KubernetesBackend, deployment_name
from .local import LocalProcessBackend, LocalWorker, WorkerExit, WorkerPhase
from .placement import PlacementBackend

__all__ = [
    "KubernetesBackend",
    "LocalProcessBackend",
    "LocalWorker",
    "PlacementBackend",
    "WorkerExit",
    "WorkerPhase",
    "deployment_name",
    "pick_gpu",
    "settings_env",
    "worker_argv",
    "worker_env",
]
