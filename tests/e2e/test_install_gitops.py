"""The install as GitOps tools apply it, on the real API server: the kustomize manifests (with
the admission and NetworkPolicy components) and the chart's rendered output (`helm template`,
as Argo CD renders a Helm source). First applied client-side (`kubectl apply`: an install
later handed to a GitOps tool), then server-side by one applier after another, each with its
own field manager and forcing (APPLIERS): a person's `kubectl apply --server-side`, Argo CD,
Flux, and someone else applying the same files without forcing.

Each must succeed without a conflict, and applying again must change nothing: `kubectl diff`
(server-side with the applier's field manager, and client-side) finds no difference and a
second apply writes no object (every resourceVersion stays). A struct the API server replaces
whole on apply (a fieldRef, a policy's matchConstraints) from which the files leave out a
field the API server defaults (the fieldRef's apiVersion; matchPolicy, namespaceSelector,
objectSelector) differs from the live object, and an applier that does not force is refused
with a conflict over it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import Tools

from .helpers import HELM_KUBE_VERSION
from .test_install import CHART, MANIFESTS, _helm

# Who applies the install server-side, in this order, after a client-side `kubectl apply`:
# (field manager, flags).
APPLIERS = [
    # The issue's report: a person's `kubectl apply --server-side`, without forcing.
    ("kubectl", []),
    # Argo CD with ServerSideApply=true: gitops-engine's resource_ops.go sets ForceConflicts
    # whenever it applies server-side.
    ("argocd-controller", ["--force-conflicts"]),
    # Flux's kustomize-controller: fluxcd/pkg/ssa applies (and dry-runs) with ForceOwnership.
    ("kustomize-controller", ["--force-conflicts"]),
    # Anyone else applying the very same files next to them, without forcing.
    ("another-applier", []),
]
# The chart with every optional object and every downward-API variable in it.
CHART_EVERYTHING: dict[str, Any] = {
    "admission": {"enabled": True},
    "metrics": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/28"}}],
        "metricsFrom": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
    },
    "extraEnv": [
        {
            "name": "NODE_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
        },
    ],
}


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _ref(o: dict[str, Any]) -> str:
    namespace = o["metadata"].get("namespace")
    return f"{o['kind']}/{namespace + '/' if namespace else ''}{o['metadata']['name']}"


def _resource_versions(cluster: ControlPlane, rendered: Path) -> dict[str, str]:
    live = cluster.get_json("-f", str(rendered))
    items = live["items"] if live.get("kind") == "List" else [live]
    return {_ref(o): o["metadata"]["resourceVersion"] for o in items}


def _delete(cluster: ControlPlane, objects: list[dict[str, Any]]) -> None:
    """Everything applied but the CRDs (which every test of the session uses) and namespaces
    (deleted by the caller)."""
    for o in objects:
        if o["kind"] in ("CustomResourceDefinition", "Namespace"):
            continue
        args = ["delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found"]
        if "/" in o["apiVersion"]:
            args[1] += "." + o["apiVersion"].split("/")[0]
        if o["metadata"].get("namespace"):
            args += ["-n", o["metadata"]["namespace"]]
        cluster.kubectl(*args, "--wait=false", check=False)


def _assert_applies_cleanly(
    cluster: ControlPlane, rendered: Path, objects: list[dict[str, Any]]
) -> None:
    # An install made with plain `kubectl apply`, applied again: nothing to change.
    cluster.kubectl("apply", "-f", str(rendered))
    diff = cluster.kubectl("diff", "-f", str(rendered), check=False)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr

    for manager, force in APPLIERS:
        server_side = ["--server-side", f"--field-manager={manager}", *force]
        # Taking the install over: no conflict, even without forcing (the same values are
        # co-owned).
        taken = cluster.kubectl("apply", *server_side, "-f", str(rendered), check=False)
        assert taken.returncode == 0, f"{manager}: {taken.stderr}"
        versions = _resource_versions(cluster, rendered)
        assert len(versions) == len(objects)

        # What a tool does on every sync: a diff (a server-side dry run), then an apply.
        # Neither sees a change, and nothing is written.
        dry = cluster.kubectl("diff", *server_side, "-f", str(rendered), check=False)
        assert (dry.returncode, dry.stdout) == (0, ""), f"{manager}: {dry.stdout}{dry.stderr}"
        again = cluster.kubectl("apply", *server_side, "-f", str(rendered), check=False)
        assert again.returncode == 0, f"{manager}: {again.stderr}"
        assert _resource_versions(cluster, rendered) == versions, f"{manager} wrote again"
        client_side = cluster.kubectl("diff", "-f", str(rendered), check=False)
        assert (client_side.returncode, client_side.stdout) == (0, ""), client_side.stdout


@pytest.fixture
def install_namespace(cluster: ControlPlane) -> Iterator[str]:
    name = f"ocireg-gitops-{secrets.token_hex(3)}"
    yield name
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


def _kustomize_overlay(cluster: ControlPlane, tmp_path: Path, namespace: str) -> str:
    """The manifests with the admission and NetworkPolicy components, in their own namespace
    and under their own names (so nothing of another test's install is touched); the CRDs
    keep their names."""
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "namePrefix": f"{namespace}-",
        "resources": [os.path.relpath(MANIFESTS, tmp_path)],
        "components": [
            os.path.relpath(MANIFESTS / "admission", tmp_path),
            os.path.relpath(MANIFESTS / "admission" / "networkpolicy", tmp_path),
        ],
    }
    tmp_path.mkdir()
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return cluster.kubectl("kustomize", str(tmp_path)).stdout


def test_manifests_apply_server_side_after_client_side_and_again_without_changes(
    cluster: ControlPlane, crds: None, tmp_path: Path, install_namespace: str
) -> None:
    text = _kustomize_overlay(cluster, tmp_path / "overlay", install_namespace)
    objects = _objects(text)
    crd_names = sorted(
        o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"
    )
    assert crd_names == ["clusterociregistries.ocireg.dev", "ociregistries.ocireg.dev"]
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "MutatingWebhookConfiguration",
        "NetworkPolicy",
        "PodDisruptionBudget",
    } <= kinds
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(text)
    try:
        _assert_applies_cleanly(cluster, rendered, objects)
    finally:
        _delete(cluster, objects)


@pytest.mark.parametrize("values", ["defaults", "everything"])
def test_chart_applies_server_side_after_client_side_and_again_without_changes(
    tools: Tools,
    cluster: ControlPlane,
    crds: None,
    tmp_path: Path,
    install_namespace: str,
    values: str,
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(CHART_EVERYTHING if values == "everything" else {}))
    release = f"r{secrets.token_hex(3)}"
    result = _helm(
        tools,
        "template",
        release,
        str(CHART),
        "--namespace",
        install_namespace,
        "--include-crds",
        *HELM_KUBE_VERSION,
        "--values",
        str(values_file),
    )
    assert result.returncode == 0, result.stderr
    objects = _objects(result.stdout)
    if values == "everything":
        kinds = {o["kind"] for o in objects}
        assert {"MutatingWebhookConfiguration", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    cluster.kubectl("create", "namespace", install_namespace)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(result.stdout)
    try:
        _assert_applies_cleanly(cluster, rendered, objects)
    finally:
        _delete(cluster, objects)
