"""The Helm chart renders offline for the default and the GPU values, every manifest validates against the
Kubernetes schemas, and what it renders agrees with the code (Deployment names, consumer groups, RBAC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler import AutoscalerSettings
from autoscaler.backends.kubernetes import deployment_name
from schemas import Names
from workers import WorkerSettings

from .manifests import CHART, KUBE_VERSIONS, by_kind, container_env, render, values

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (the `dev` extra) renders the chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the `dev` extra)")

#: Custom resources: kubernetes-validate ships only the core API schemas, so these are checked by shape below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}

#: Every optional part switched on: ingress, request-rate HPA, ServiceMonitors, KEDA, an existing Secret.
ALL_ON: dict[str, Any] = {
    "secrets": {"existingSecret": "fleet-prod"},
    "gateway": {
        "ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "t", "hosts": ["a.example.com"]}]},
        "autoscaling": {"requestRate": {"enabled": True}},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "keda": {"enabled": True},
    "extraVolumes": [{"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}}],
    "extraVolumeMounts": [{"name": "kafka-ca", "mountPath": "/etc/fleet", "readOnly": True}],
    "workers": {
        # The pool serves my_model; KEDA and a fixed per-model Deployment serve the others.
        "pool": {"models": ["my_model"]},
        "pools": [
            {"name": "ranking", "models": ["rank-a", "rank-b"], "scaler": "keda", "maxReplicas": 4},
            {"models": ["fixed"], "scaler": "none", "replicas": 3},
        ],
    },
}

#: One process per model (the option): the autoscaler sizes a Deployment per model, KEDA and none beside it.
PER_MODEL: dict[str, Any] = {
    "keda": {"enabled": True},
    "workers": {
        "pool": {"enabled": False},
        "pools": [
            {"models": ["my_model"], "scaler": "fleet"},
            {"name": "ranking", "models": ["rank-a", "rank-b"], "scaler": "keda", "maxReplicas": 4},
            {"models": ["fixed"], "scaler": "none", "replicas": 3},
        ],
    },
}


def load_all(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


CASES = {
    "default": values("values.yaml"),
    "gpu": values("values.yaml", "values-gpu.yaml"),
    "all-on": values("values.yaml", **ALL_ON),
    "per-model": values("values.yaml", **PER_MODEL),
    "grpc-probe": values("values.yaml", gateway={"grpc": {"readinessProbe": True}}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(CASES[request.param])


@pytest.mark.parametrize("name", sorted(CASES))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm_python.lint(CHART, CASES[name], strict=True, kube_version=f"v{KUBE_VERSIONS[-1]}")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_every_manifest_validates_against_the_kubernetes_schemas(case: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = case
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Role"} <= kinds
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue  # no schema bundled: see test_custom_resources_have_their_required_fields
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 8, name


def test_strict_validation_catches_a_typo() -> None:
    """The validator is not a no-op: an unknown field in a rendered Deployment fails it."""
    (deployment, *_) = by_kind(render(CASES["default"]), "Deployment").values()
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_custom_resources_have_their_required_fields() -> None:
    docs = render(CASES["all-on"])
    monitors = by_kind(docs, "ServiceMonitor")
    assert sorted(monitors) == ["fleet-inference-fleet-autoscaler", "fleet-inference-fleet-gateway",
                                "fleet-inference-fleet-worker"]  # fmt: skip
    services = by_kind(docs, "Service")
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services.values() if s["metadata"]["labels"].items() >= selector.items()]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    (scaled,) = by_kind(docs, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "fleet-worker-ranking"
    assert scaled["spec"]["maxReplicaCount"] == 4 and scaled["spec"]["minReplicaCount"] == 0


def test_keda_triggers_use_the_fleet_topic_and_group_names() -> None:
    docs = render(CASES["all-on"])
    names = Names(CASES["all-on"]["fleet"]["namespace"])
    (scaled,) = by_kind(docs, "ScaledObject").values()
    pairs = {(t["metadata"]["topic"], t["metadata"]["consumerGroup"]) for t in scaled["spec"]["triggers"]}
    expected = {(names.request_topic(m), names.worker_group(m)) for m in ("rank-a", "rank-b")} | {
        (names.bulk_topic(m), names.worker_group(m, "bulk")) for m in ("rank-a", "rank-b")
    }
    assert pairs == expected
    assert all(t["type"] == "kafka" for t in scaled["spec"]["triggers"])


def test_autoscaler_finds_the_deployments_of_its_pools_and_only_those() -> None:
    docs = render(CASES["per-model"])
    deployments = by_kind(docs, "Deployment")
    assert "fleet-worker-pool" not in deployments
    env = container_env(deployments["fleet-inference-fleet-autoscaler"])
    assert env["FLEET_AUTOSCALER_BACKEND"] == "kubernetes"
    assert env["FLEET_AUTOSCALER_K8S_NAMESPACE"] == "inference"
    assert "FLEET_AUTOSCALER_POOL" not in env
    assert env["FLEET_AUTOSCALER_MODELS"] == "my_model"  # the KEDA and fixed pools are not its business
    target = deployment_name(env["FLEET_AUTOSCALER_K8S_DEPLOYMENT_TEMPLATE"], "my_model")
    assert target == "fleet-worker-my-model" and target in deployments
    # A scaled Deployment leaves replicas to its scaler; a fixed one sets them.
    assert "replicas" not in deployments["fleet-worker-my-model"]["spec"]
    assert "replicas" not in deployments["fleet-worker-ranking"]["spec"]
    assert deployments["fleet-worker-fixed"]["spec"]["replicas"] == 3


def test_autoscaler_rbac_allows_the_scale_subresource() -> None:
    docs = render(CASES["default"])
    (role,) = by_kind(docs, "Role").values()
    allowed = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    # What autoscaler/backends/kubernetes.py calls: read_/patch_namespaced_deployment_scale.
    assert {("deployments/scale", "get"), ("deployments/scale", "patch")} <= allowed
    assert all(res.startswith("deployments") for res, _ in allowed)  # nothing beyond the Deployments
    (binding,) = by_kind(docs, "RoleBinding").values()
    (account,) = by_kind(docs, "ServiceAccount")
    assert binding["subjects"][0]["name"] == account
    pod = by_kind(docs, "Deployment")["fleet-inference-fleet-autoscaler"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account


def test_worker_grace_period_exceeds_the_drain_timeout(case: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = case
    workers = {n: d for n, d in by_kind(docs, "Deployment").items() if n.startswith("fleet-worker-")}
    assert workers
    for deployment in workers.values():
        drain = float(container_env(deployment)["FLEET_WORKER_DRAIN_TIMEOUT_S"])
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= drain + 10
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert set(workers) <= set(budgets)


def test_gpu_values_run_the_pool_on_gpus_and_land_on_gpu_nodes() -> None:
    deployments = by_kind(render(CASES["gpu"]), "Deployment")
    gpu = deployments["fleet-worker-pool"]["spec"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":0.1.0-cuda")
    env = container_env(deployments["fleet-worker-pool"])
    assert (env["FLEET_WORKER_DEVICE"], env["FLEET_WORKER_MODE"]) == ("cuda", "pool")
    assert env["FLEET_WORKER_MEMORY_BUDGET_MB"] == "0"  # the GPU's free memory (NVML)
    scaler = container_env(deployments["fleet-inference-fleet-autoscaler"])
    assert scaler["FLEET_AUTOSCALER_MODELS"] == "my-model"  # small-model is the CPU pool's
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = deployments["fleet-worker-small-cpu"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert cpu["containers"][0]["image"].endswith(":0.1.0-cpu")


def test_pods_run_as_non_root_and_read_the_shared_config(case: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = case
    configs = by_kind(docs, "ConfigMap")
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        sources = pod["containers"][0]["envFrom"]
        assert sources[0]["configMapRef"]["name"] in configs
        assert "secretRef" in sources[1]


@pytest.mark.parametrize(
    ("pools", "keda", "message"),
    [
        ([{"models": ["a", "b"], "scaler": "fleet", "name": "ab"}], False, "one model per Deployment"),
        ([{"models": ["a"], "scaler": "keda"}], False, "needs keda.enabled"),
        ([{"models": ["a"], "scaler": "hpa"}], False, "scaler must be fleet, keda or none"),
        ([{"models": ["a"], "name": "other"}], False, "named after its model"),
        ([{"models": ["a", "b"], "scaler": "none"}], False, "give it a name"),
    ],
)
def test_bad_pools_fail_with_a_clear_message(pools: list[dict[str, Any]], keda: bool, message: str) -> None:
    vals = values("values.yaml", workers={"pools": pools, "pool": {"enabled": False}}, keda={"enabled": keda})
    with pytest.raises(helm_python.HelmError, match=message):
        render(vals)


def plain_manifests() -> dict[str, list[dict[str, Any]]]:
    """deploy/kubernetes/ (and its per-model/ option) by file, relative to the folder."""
    folder = CHART.parent.parent / "kubernetes"
    return {str(p.relative_to(folder)): [d for d in load_all(p) if d] for p in sorted(folder.rglob("*.yaml"))}


def test_plain_manifests_validate_against_the_kubernetes_schemas() -> None:
    """deploy/kubernetes/ (for clusters without Helm) stays valid too."""
    docs = [d for file_docs in plain_manifests().values() for d in file_docs]
    assert {d["kind"] for d in docs} == {"Deployment", "ServiceAccount", "Role", "RoleBinding"}
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    for deployment in [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "fleet-autoscaler"]:
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(container_env(deployment)["FLEET_WORKER_DRAIN_TIMEOUT_S"])


def test_plain_manifests_run_the_pool_that_the_autoscaler_sizes() -> None:
    """`kubectl apply -f deploy/kubernetes/` (not recursive): the pool, the autoscaler in pool mode, its RBAC;
    the settings they set parse, and the autoscaler's names and sizes match the pool's."""
    files = plain_manifests()
    top = [d for name, file_docs in files.items() if "/" not in name for d in file_docs]
    deployments = by_kind(top, "Deployment")
    assert set(deployments) == {"fleet-worker-pool", "fleet-autoscaler"}
    pool, scaler = deployments["fleet-worker-pool"], deployments["fleet-autoscaler"]
    assert "replicas" not in pool["spec"]  # the autoscaler's, not reset by a re-apply
    worker_env = container_env(pool)
    assert "FLEET_WORKER_MODELS" not in worker_env
    worker = WorkerSettings.from_env({k: v for k, v in worker_env.items() if v != "<from>"})
    assert worker.mode == "pool" and worker.follow_assignment
    env = AutoscalerSettings.from_env({k: v for k, v in container_env(scaler).items() if v != "<from>"})
    assert env.pool and env.backend == "kubernetes" and env.k8s_pool_deployment == "fleet-worker-pool"
    assert env.models == ()  # every registered model
    room = worker.memory_budget_mb * (1 + worker.overcommit_pct / 100)
    assert env.pool_worker_memory_mb == pytest.approx(room, abs=1)
    (account,) = by_kind(top, "ServiceAccount")
    assert scaler["spec"]["template"]["spec"]["serviceAccountName"] == account
    (role,) = by_kind(top, "Role").values()
    allowed = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert {("deployments/scale", "get"), ("deployments/scale", "patch")} <= allowed
    (per_model,) = by_kind(files["per-model/worker-deployment.yaml"], "Deployment").values()
    assert container_env(per_model)["FLEET_WORKER_MODELS"] == "my-model"
    assert per_model["metadata"]["name"] == deployment_name(AutoscalerSettings().k8s_deployment_template, "my-model")


def test_no_autoscaler_without_a_pool_for_it() -> None:
    """An autoscaler with an empty model list would scale every registered model, KEDA's pools included."""
    pools = [{"models": ["a"], "scaler": "keda"}, {"models": ["b"], "scaler": "none"}]
    workers = {"pools": pools, "pool": {"enabled": False}}
    docs = render(values("values.yaml", workers=workers, keda={"enabled": True}, metrics=ALL_ON["metrics"]))
    assert not [d for d in docs if "autoscaler" in d["metadata"]["name"]]
    assert set(by_kind(docs, "Deployment")) == {"fleet-inference-fleet-gateway", "fleet-worker-a", "fleet-worker-b"}


def test_pool_mode_is_the_default() -> None:
    deployments = by_kind(render(CASES["default"]), "Deployment")
    expected = {"fleet-inference-fleet-gateway", "fleet-inference-fleet-autoscaler", "fleet-worker-pool"}
    assert set(deployments) == expected
    scaler = container_env(deployments["fleet-inference-fleet-autoscaler"])
    assert scaler["FLEET_AUTOSCALER_POOL"] == "true" and "FLEET_AUTOSCALER_MODELS" not in scaler  # every model


def test_pool_mode_runs_one_multi_model_deployment_that_the_autoscaler_sizes() -> None:
    pool = {"minWorkers": 0, "maxWorkers": 6, "memoryBudgetMB": 1000, "overcommitPct": 20}
    docs = render(values("values.yaml", workers={"pool": pool}))
    deployments = by_kind(docs, "Deployment")
    worker = deployments["fleet-worker-pool"]
    env = container_env(worker)
    assert (env["FLEET_WORKER_MODE"], env["FLEET_WORKER_FOLLOW_ASSIGNMENT"]) == ("pool", "true")
    assert env["FLEET_WORKER_MEMORY_BUDGET_MB"] == "1000" and "FLEET_WORKER_MODELS" not in env
    assert "replicas" not in worker["spec"]  # the autoscaler's
    scaler = container_env(deployments["fleet-inference-fleet-autoscaler"])
    assert scaler["FLEET_AUTOSCALER_K8S_POOL_DEPLOYMENT"] == "fleet-worker-pool"
    assert (scaler["FLEET_AUTOSCALER_POOL_MIN_WORKERS"], scaler["FLEET_AUTOSCALER_POOL_MAX_WORKERS"]) == ("0", "6")
    assert scaler["FLEET_AUTOSCALER_POOL_WORKER_MEMORY_MB"] == "1200"


def test_the_pool_takes_its_own_overrides_of_the_worker_settings() -> None:
    pool = {"device": "cpu", "nodeSelector": {"pool": "yes"}, "env": {"FLEET_WORKER_POOL_THREADS": "8"}}
    deployments = by_kind(render(values("values.yaml", workers={"pool": pool})), "Deployment")
    spec = deployments["fleet-worker-pool"]["spec"]["template"]["spec"]
    env = container_env(deployments["fleet-worker-pool"])
    assert (env["FLEET_WORKER_DEVICE"], env["FLEET_WORKER_POOL_THREADS"]) == ("cpu", "8")
    assert spec["nodeSelector"] == {"pool": "yes"}


def test_pool_beside_per_model_deployments_is_limited_to_its_listed_models() -> None:
    deployments = by_kind(render(CASES["all-on"]), "Deployment")
    assert {"fleet-worker-pool", "fleet-worker-ranking", "fleet-worker-fixed"} <= set(deployments)
    scaler = container_env(deployments["fleet-inference-fleet-autoscaler"])
    assert scaler["FLEET_AUTOSCALER_POOL"] == "true"
    assert scaler["FLEET_AUTOSCALER_MODELS"] == "my_model"  # never rank-a, rank-b or fixed: they have workers


def test_pool_beside_per_model_deployments_without_its_model_list_is_refused() -> None:
    """With no list the autoscaler would place every registered model on the pool, the per-model ones too."""
    with pytest.raises(helm_python.HelmError, match="workers.pool.models must list the pool's models"):
        render(values("values.yaml", workers={"pools": [{"models": ["a"], "scaler": "none"}]}))


def test_pool_mode_refuses_a_per_model_pool_scaled_by_the_autoscaler() -> None:
    workers = {"pool": {"models": ["b"]}, "pools": [{"models": ["a"], "scaler": "fleet"}]}
    with pytest.raises(helm_python.HelmError, match="scaler fleet pools are refused"):
        render(values("values.yaml", workers=workers))


def _gateway(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = by_kind(docs, "Deployment")["fleet-inference-fleet-gateway"]
    return deployment, by_kind(docs, "Service")["fleet-inference-fleet-gateway"]


def test_gateway_exposes_its_grpc_port() -> None:
    deployment, service = _gateway(render(CASES["default"]))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container_env(deployment)["FLEET_GATEWAY_GRPC_PORT"] == "8001"
    assert {"name": "grpc", "containerPort": 8001} in container["ports"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"] == {"name": "grpc", "port": 8001, "targetPort": "grpc", "appProtocol": "grpc"}
    assert "httpGet" in container["readinessProbe"]


def test_gateway_readiness_probe_can_ask_grpc_health() -> None:
    deployment, _ = _gateway(render(CASES["grpc-probe"]))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]
    assert probe["grpc"] == {"port": 8001} and "httpGet" not in probe


def test_gateway_grpc_off() -> None:
    deployment, service = _gateway(render(values("values.yaml", gateway={"grpc": {"enabled": False}})))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container_env(deployment)["FLEET_GATEWAY_GRPC_PORT"] == "0"
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]


def test_pool_mode_alone_has_the_worker_and_autoscaler_service_monitors() -> None:
    docs = render(values("values.yaml", metrics=ALL_ON["metrics"]))
    monitors = by_kind(docs, "ServiceMonitor")
    assert sorted(monitors) == ["fleet-inference-fleet-autoscaler", "fleet-inference-fleet-gateway",
                                "fleet-inference-fleet-worker"]  # fmt: skip
