"""What the operator's pods expose on the network (issue 14, point 9 d-e), as the chart and
the kustomize components render it: metrics listen on the pod's IP (downward API), not on
every address; the optional NetworkPolicy admits the webhook port from the API server's
addresses and the metrics port from Prometheus only; both are accepted by the real
kube-apiserver (server-side dry run)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import Tools

from .helpers import HELM_KUBE_VERSION

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"
WEBHOOK_FROM = [{"ipBlock": {"cidr": "10.0.0.0/28"}}]
METRICS_FROM = [
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
]


def _helm(tools: Tools, values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    argv = [tools.path("helm"), "template", "ocireg", str(CHART), "-n", "ocireg-system"]
    argv += HELM_KUBE_VERSION
    return subprocess.run(
        [*argv, "--values", str(file)], capture_output=True, text=True, timeout=120, check=False
    )


def _render(tools: Tools, values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    result = _helm(tools, values, tmp_path)
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def _kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _env(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (deployment,) = _kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def test_chart_metrics_listen_on_the_pod_ip(tools: Tools, tmp_path: Path) -> None:
    env = _env(_render(tools, {"metrics": {"enabled": True}}, tmp_path))
    assert env["OCIREG_METRICS_PORT"]["value"] == "9090"
    assert env["OCIREG_METRICS_ADDRESS"] == {
        "name": "OCIREG_METRICS_ADDRESS",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
    }
    chosen = _env(_render(tools, {"metrics": {"enabled": True, "address": "::"}}, tmp_path))
    assert chosen["OCIREG_METRICS_ADDRESS"]["value"] == "::"
    off = _env(_render(tools, {}, tmp_path))
    assert "OCIREG_METRICS_ADDRESS" not in off
    assert "OCIREG_METRICS_PORT" not in off


def test_chart_network_policy_admits_only_the_webhook_and_metrics_callers(
    tools: Tools, cluster: ControlPlane, tmp_path: Path
) -> None:
    assert _kind(_render(tools, {}, tmp_path), "NetworkPolicy") == []  # optional, off

    values = {
        "admission": {"enabled": True},
        "metrics": {"enabled": True, "port": 9102},
        "networkPolicy": {
            "enabled": True,
            "webhookFrom": WEBHOOK_FROM,
            "metricsFrom": METRICS_FROM,
        },
    }
    objects = _render(tools, values, tmp_path)
    (policy,) = _kind(objects, "NetworkPolicy")
    (deployment,) = _kind(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress: registries, clouds, API
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": 9443, "protocol": "TCP"}], "from": WEBHOOK_FROM},
        {"ports": [{"port": 9102, "protocol": "TCP"}], "from": METRICS_FROM},
    ]
    # Nothing to serve: every connection from elsewhere than the node is refused.
    (closed,) = _kind(
        _render(tools, {"networkPolicy": {"enabled": True}}, tmp_path), "NetworkPolicy"
    )
    assert closed["spec"]["ingress"] == []

    # A policy that would shut the API server (or Prometheus) out is refused, not rendered.
    for values, word in (
        ({"admission": {"enabled": True}, "networkPolicy": {"enabled": True}}, "webhookFrom"),
        ({"metrics": {"enabled": True}, "networkPolicy": {"enabled": True}}, "metricsFrom"),
        ({"networkPolicy": {"enabled": True, "webhookFrom": [{"ipBlock": {"cidr": "x"}}]}}, "cidr"),
    ):
        result = _helm(tools, values, tmp_path)
        assert result.returncode != 0, values
        assert word in result.stderr

    # The real API server takes it as rendered.
    cluster.kubectl("create", "namespace", "ocireg-system", check=False)
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(policy), check=False
    )
    assert applied.returncode == 0, applied.stderr


def test_kustomize_network_policy_component_admits_only_the_webhook_port(
    tools: Tools, cluster: ControlPlane, tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    components = [
        ROOT / "manifests" / "admission",
        ROOT / "manifests" / "admission" / "networkpolicy",
    ]
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / "manifests", overlay)],
                "components": [os.path.relpath(c, overlay) for c in components],
            }
        )
    )
    objects = [
        o for o in yaml.safe_load_all(cluster.kubectl("kustomize", str(overlay)).stdout) if o
    ]
    (policy,) = _kind(objects, "NetworkPolicy")
    (deployment,) = _kind(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    webhook = next(p for p in container["ports"] if p["name"] == "webhook")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": webhook["containerPort"], "protocol": "TCP"}]
    assert rule["from"] == [{"ipBlock": {"cidr": "192.0.2.0/24"}}]  # admits nobody until set
    cluster.kubectl("create", "namespace", "ocireg-system", check=False)
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(policy), check=False
    )
    assert applied.returncode == 0, applied.stderr
