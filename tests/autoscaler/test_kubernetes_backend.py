"""KubernetesBackend against a seam fake of AppsV1Api (no cluster here): names, bodies, threads, errors."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from autoscaler import Autoscaler, AutoscalerSettings, BackendError, KubernetesBackend, ServiceStats
from autoscaler.backends import deployment_name
from autoscaler.signals import ModelLoad, PartitionLoad


class FakeAppsV1Api:
    """The two scale-subresource methods of ``kubernetes.client.AppsV1Api``, recording every call."""

    def __init__(self, **replicas: int | None) -> None:
        self.replicas = dict(replicas)
        self.calls: list[tuple[str, str, str, Any]] = []
        self.threads: list[threading.Thread] = []
        self.error: Exception | None = None

    def read_namespaced_deployment_scale(self, name: str, namespace: str) -> Any:
        self._record("read", name, namespace, None)
        return SimpleNamespace(spec=SimpleNamespace(replicas=self.replicas[name]), status=SimpleNamespace(replicas=0))

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: Any) -> Any:
        self._record("patch", name, namespace, body)
        self.replicas[name] = body["spec"]["replicas"]
        return SimpleNamespace(spec=SimpleNamespace(replicas=self.replicas[name]))

    def _record(self, verb: str, name: str, namespace: str, body: Any) -> None:
        self.threads.append(threading.current_thread())
        if self.error is not None:
            raise self.error
        self.calls.append((verb, name, namespace, body))


class ApiError(Exception):
    """Shaped like kubernetes.client.ApiException (status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) Reason: {reason}")
        self.status, self.reason = status, reason


async def test_reads_and_patches_the_scale_subresource() -> None:
    api = FakeAppsV1Api(**{"fleet-worker-my-model": 2})
    backend = KubernetesBackend("ml", api=api)
    assert await backend.replicas("My_Model") == 2
    await backend.scale("My_Model", 5)
    assert api.calls == [
        ("read", "fleet-worker-my-model", "ml", None),
        ("patch", "fleet-worker-my-model", "ml", {"spec": {"replicas": 5}}),
    ]
    assert await backend.replicas("My_Model") == 5
    # The client blocks: every call ran off the event loop's thread.
    assert all(t is not threading.main_thread() for t in api.threads)


async def test_template_and_missing_replicas() -> None:
    api = FakeAppsV1Api(**{"inference-m1-workers": None})
    backend = KubernetesBackend("default", "inference-{model}-workers", api=api)
    assert backend.deployment("m1") == "inference-m1-workers"
    assert await backend.replicas("m1") == 0
    await backend.scale("m1", 0)
    assert api.calls[-1] == ("patch", "inference-m1-workers", "default", {"spec": {"replicas": 0}})
    with pytest.raises(ValueError, match="model"):
        KubernetesBackend("default", "no-placeholder")
    with pytest.raises(ValueError):
        await backend.scale("m1", -1)


@pytest.mark.parametrize(("model", "expected"), [("a.b", "fleet-worker-a.b"), ("A_b-1", "fleet-worker-a-b-1")])
def test_deployment_name(model: str, expected: str) -> None:
    assert deployment_name("fleet-worker-{model}", model) == expected


def test_invalid_deployment_name() -> None:
    with pytest.raises(BackendError, match="not a valid Deployment name"):
        deployment_name("{model}", "x" * 300)


async def test_api_errors_become_backend_errors() -> None:
    api = FakeAppsV1Api()
    api.error = ApiError(404, "Not Found")
    backend = KubernetesBackend("ml", api=api)
    with pytest.raises(BackendError, match=r"ml/fleet-worker-m.*HTTP 404 Not Found.*worker-deployment.yaml"):
        await backend.scale("m", 1)
    api.error = ApiError(403, "Forbidden")
    with pytest.raises(BackendError, match="HTTP 403 Forbidden") as info:
        await backend.replicas("m")
    assert "worker-deployment.yaml" not in str(info.value)


async def test_real_api_exception_is_translated() -> None:
    exceptions = pytest.importorskip("kubernetes.client.exceptions")
    api = FakeAppsV1Api()
    api.error = exceptions.ApiException(status=409, reason="Conflict")
    with pytest.raises(BackendError, match="HTTP 409 Conflict"):
        await KubernetesBackend("ml", api=api).scale("m", 1)


async def test_missing_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if the package were not installed
    with pytest.raises(BackendError, match="pip install"):
        await KubernetesBackend("ml").replicas("m")


class OneLoad:
    async def collect(self, models: Any) -> dict[str, ModelLoad]:
        parts = tuple(PartitionLoad(i, 100, None, 100) for i in range(4))
        return {m: ModelLoad(m, f"t.{m}", f"g.{m}", parts, at=0.0) for m in models}


class NoStats:
    async def read(self, model: str) -> ServiceStats:
        return ServiceStats()


async def test_controller_drives_the_deployment() -> None:
    api = FakeAppsV1Api(**{"fleet-worker-m": 0})
    settings = AutoscalerSettings(models=("m",), default_replica_throughput=10.0, target_drain_s=10.0)
    scaler = Autoscaler(settings, KubernetesBackend("ml", api=api), OneLoad(), NoStats())
    (decision,) = await scaler.step()
    assert decision.desired == 4  # 400 / (10/s x 10 s)
    assert api.calls[-1] == ("patch", "fleet-worker-m", "ml", {"spec": {"replicas": 4}})
