"""Render the Helm chart offline (Helm's own Go SDK through helm-python-sdk) and load YAML documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "inference-fleet"
#: The oldest Kubernetes release the chart declares (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ("1.25.0", "1.33.0")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` the way Helm merges values files (lists are replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def values(*files: str, **overrides: Any) -> dict[str, Any]:
    """The values of ``files`` (relative to the chart) merged in order, then ``overrides``."""
    merged: dict[str, Any] = {}
    for name in files:
        merged = deep_merge(merged, yaml.safe_load((CHART / name).read_text()) or {})
    return deep_merge(merged, overrides)


def render(vals: dict[str, Any], *, namespace: str = "inference") -> list[dict[str, Any]]:
    """Every manifest the chart renders with ``vals`` (NOTES.txt left out)."""
    import helm_python

    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values=vals, name="fleet", namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The documents of ``kind`` by metadata.name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """Literal env values of the first container (valueFrom entries as '<from>')."""
    (container, *_) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "<from>") for e in container.get("env", [])}
