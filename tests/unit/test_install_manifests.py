"""The plain manifests' Deployment and the chart's values, read as files (no cluster, no helm):
the properties a platform team's admission policies check, and a schema that rejects typos.
tests/e2e/test_install.py renders and applies both for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"


def _deployment() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests/deployment.yaml").read_text())


def test_elected_replicas_non_root_read_only_with_probes_and_resources() -> None:
    deployment = _deployment()
    # Two replicas only ever run with the Lease election: one works, one stands by.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert "--leader-elect" in container["args"]
    lease_namespace = next(
        e for e in container["env"] if e["name"] == "OCIREG_LEADER_ELECTION_NAMESPACE"
    )
    # apiVersion as the API server defaults it: without it a server-side apply after a
    # client-side one diverges (tests/e2e/test_install_gitops.py).
    assert lease_namespace["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    liveness = next(a for a in container["args"] if a.startswith("--liveness="))
    assert liveness.endswith(":8080/healthz")
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert "memory" in container["resources"]["limits"]


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.validate(_values(), _schema())


def test_chart_defaults_match_the_plain_manifests() -> None:
    values = _values()
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    assert values["resources"] == container["resources"]
    assert values["securityContext"] == container["securityContext"]
    assert (
        values["podSecurityContext"] == _deployment()["spec"]["template"]["spec"]["securityContext"]
    )


@pytest.mark.parametrize(
    "change",
    [
        {"watchNamespace": ["a"]},  # a typo of watchNamespaces
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"webhook": {"allowedCIDRs": ["10.0.0.0"]}},
        {"metrics": {"enabled": "yes"}},
        {"metrics": {"port": 8080}},  # the health port
        {"logFormat": "xml"},
        {"allowTenantAmbientIdentity": "true"},
        {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 1}}},
        {"image": {"repository": "x", "digest": "latest"}},
        {"resources": {"limit": {"cpu": 1}}},
        # Typos inside the Kubernetes-shaped values, which the API server would drop silently.
        {"securityContext": {"readOnlyRootFileSystem": True}},
        {"podSecurityContext": {"runAsNonroot": True}},
        {"tolerations": [{"key": "dedicated", "opertor": "Exists"}]},
        {"affinity": {"podAntiAfinity": {}}},
        {"extraEnv": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "Key": "k"}}}]},
        {"extraEnv": [{"name": "A", "valuefrom": {}}]},
        {"networkPolicy": {"webhookFrom": [{"podSelector": {"matchLabel": {"a": "b"}}}]}},
        {"podDisruptionBudget": {"minAvailable": 1}},
        {"podDisruptionBudget": {"maxUnavailable": 0}},
        {"podDisruptionBudget": {"maxUnavailable": "150%"}},
    ],
)
def test_schema_rejects_mistakes(change: dict[str, Any]) -> None:
    values = {**_values(), **change}
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.validate(values, _schema())
    # Refused for the mistake, not for something else in the values.
    (key,) = change
    error = refused.value
    assert list(error.absolute_path)[:1] == [key] or f"'{key}' was unexpected" in error.message


def test_schema_accepts_a_full_configuration() -> None:
    values = {
        **_values(),
        "watchNamespaces": ["team-a", "team-b"],
        "credentialsNamespace": "platform-creds",
        "allowTenantAmbientIdentity": True,
        "webhook": {"allowedCIDRs": ["10.20.0.0/16", "fd00::/8"]},
        "metrics": {"enabled": True, "port": 9090},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "serviceAccount": {
            "create": True,
            "name": "ocireg",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"},
        },
        "podLabels": {"azure.workload.identity/use": "true"},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["x"]}]}
                    ]
                }
            }
        },
        "image": {
            "repository": "registry.corp/ocireg",
            "tag": "0.1.0",
            "digest": "sha256:" + "a" * 64,
        },
    }
    jsonschema.validate(values, _schema())
