"""Kubernetes backend: one worker Deployment per model, sized through its ``scale`` subresource.

The autoscaler only reads and patches ``deployments/scale`` (RBAC in ``deploy/kubernetes/autoscaler-rbac.yaml``);
the Deployments themselves come from ``deploy/kubernetes/worker-pool.yaml`` (the pool) or
``deploy/kubernetes/per-model/worker-deployment.yaml`` (one per model). On scale-down Kubernetes
sends SIGTERM to the pods it removes and waits ``terminationGracePeriodSeconds``: the worker drains in that
time (stop fetching, finish the batch, reply, commit, leave the group), so the grace period must exceed
the worker's ``FLEET_WORKER_DRAIN_TIMEOUT_S``.

The official ``kubernetes`` client is blocking: every call runs in a thread. It is imported only when no
API object is injected, with in-cluster configuration first and ``~/.kube/config`` as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from ..errors import BackendError

log = logging.getLogger("fleet.autoscaler")

# A Deployment name is a DNS-1123 subdomain.
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def deployment_name(template: str, model: str) -> str:
    """The Deployment of ``model``: ``template`` with ``{model}`` replaced, lowercased, ``_`` as ``-`` (pure).

    Raises BackendError when the result is not a valid Kubernetes name.
    """
    name = template.replace("{model}", model).lower().replace("_", "-")
    if not _DNS_1123.match(name):
        raise BackendError(f"{name!r} (model {model!r}) is not a valid Deployment name")
    return name


def _default_api() -> Any:
    try:
        from kubernetes import client
        from kubernetes import config as k8s_config
    except ImportError as exc:
        raise BackendError("the kubernetes backend needs the official client: pip install 'kubernetes>=29'") from exc
    config: Any = k8s_config  # the client ships without type hints
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise BackendError(f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}") from exc
    return client.AppsV1Api()


def _describe(exc: BaseException) -> str:
    # kubernetes.client.ApiException carries status and reason; anything else is shown as is.
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


class KubernetesBackend:
    """`Backend` that sets ``spec.replicas`` of a Deployment per model through the scale subresource."""

    def __init__(self, namespace: str, deployment_template: str = "fleet-worker-{model}", *, api: Any = None) -> None:
        """``api``: an ``AppsV1Api`` (or anything with its two scale methods); None builds the real one lazily."""
        if "{model}" not in deployment_template:
            raise ValueError("deployment_template must contain {model}")
        self.namespace = namespace
        self.deployment_template = deployment_template
        self._api = api

    def deployment(self, model: str) -> str:
        """Name of the Deployment that runs the workers of ``model``."""
        return deployment_name(self.deployment_template, model)

    async def replicas(self, model: str) -> int:
        """The Deployment's desired replicas (``spec.replicas``: pods starting and running)."""
        name = self.deployment(model)
        scale = await self._call("read_namespaced_deployment_scale", name=name, namespace=self.namespace)
        return int(getattr(scale.spec, "replicas", 0) or 0)

    async def scale(self, model: str, replicas: int) -> None:
        """Patch the Deployment's scale to ``replicas``; removed pods get SIGTERM and drain."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        name = self.deployment(model)
        body = {"spec": {"replicas": replicas}}
        await self._call("patch_namespaced_deployment_scale", name=name, namespace=self.namespace, body=body)
        log.info("scaled deployment %s/%s to %d", self.namespace, name, replicas)

    async def start(self) -> None:
        """Build the API client now (in a thread: loading the configuration reads files)."""
        if self._api is None:
            self._api = await asyncio.to_thread(_default_api)

    async def stop(self) -> None:
        """Nothing to release: the Deployments keep running without the autoscaler."""

    async def _call(self, method: str, **kwargs: Any) -> Any:
        await self.start()
        call = getattr(self._api, method)
        try:
            return await asyncio.to_thread(call, **kwargs)
        except Exception as exc:  # the adapter's translation point: any client error becomes a BackendError
            what = _describe(exc)
            hint = (
                " (create it from deploy/kubernetes/: worker-pool.yaml for the pool, per-model/worker-deployment.yaml "
                "for one model)"
                if what.startswith("HTTP 404")
                else ""
            )
            target = f"{self.namespace}/{kwargs.get('name')}"
            raise BackendError(f"{method} of deployment {target} failed: {what}{hint}") from exc
