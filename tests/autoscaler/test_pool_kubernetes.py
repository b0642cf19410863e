"""The pool backend on Kubernetes: the pool Deployment's scale subresource follows the pool size (fake AppsV1Api)."""

from __future__ import annotations

from autoscaler import AutoscalerSettings, KubernetesBackend
from autoscaler.backends import PoolBackend
from autoscaler.policy import Decision
from autoscaler.service import make_backend

from .test_kubernetes_backend import FakeAppsV1Api


async def test_the_pool_deployment_is_scaled_to_the_pool_size() -> None:
    settings = AutoscalerSettings(
        backend="kubernetes", k8s_namespace="ml", pool=True, pool_min_workers=1, pool_max_workers=5
    )
    backend = make_backend(settings)
    assert isinstance(backend, PoolBackend) and isinstance(backend.runner, KubernetesBackend)
    api = FakeAppsV1Api(**{"fleet-worker-pool": 1})
    backend.runner._api = api
    hot = Decision("hot", 1, 3, "", {"raw_replicas": 2.6})
    cold = Decision("cold", 1, 1, "", {"raw_replicas": 0.2})
    decision = await backend.size_pool([hot, cold])
    assert (decision.current, decision.desired) == (1, 3)
    assert api.calls[-1] == ("patch", "fleet-worker-pool", "ml", {"spec": {"replicas": 3}})
    await backend.size_pool([hot, cold])  # unchanged: read, no patch
    assert [c[0] for c in api.calls] == ["read", "patch", "read"]
