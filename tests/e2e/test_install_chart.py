"""What users of a chart expect of it, checked with the real helm and API server: `helm lint`
without a remark, a values schema that refuses a misspelt key at any depth, the Kubernetes
versions it installs on, a PodDisruptionBudget that fits the replicas, and Artifact Hub
examples that the API server accepts."""

from __future__ import annotations

import copy
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import Tools

from .helpers import HELM_KUBE_VERSION
from .test_install import CHART, ROOT, _helm, _one, _render


def test_helm_lint_has_nothing_to_say(tools: Tools) -> None:
    result = _helm(tools, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    # Not even "[INFO] Chart.yaml: icon is recommended".
    remarks = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert remarks == [], result.stdout


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"watchNamespace": ["a"]}, "watchNamespace"),
        ({"securityContext": {"readOnlyRootFileSystem": True}}, "readOnlyRootFileSystem"),
        ({"podSecurityContext": {"runAsNonroot": True}}, "runAsNonroot"),
        ({"tolerations": [{"key": "dedicated", "opertor": "Exists"}]}, "opertor"),
        ({"affinity": {"podAntiAfinity": {}}}, "podAntiAfinity"),
        (
            {"extraEnv": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "Key": "k"}}}]},
            "Key",
        ),
        (
            {
                "networkPolicy": {
                    "enabled": True,
                    "webhookFrom": [{"podSelector": {"matchLabel": {}}}],
                }
            },
            "matchLabel",
        ),
        ({"podDisruptionBudget": {"minAvailable": 1}}, "minAvailable"),
        ({"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
    ],
)
def test_helm_refuses_a_misspelt_or_wrong_value_at_any_depth(
    tools: Tools, tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    for command in ("template", "lint"):
        if command == "template":
            args = ["template", "x", str(CHART), *HELM_KUBE_VERSION, "-f", str(file)]
        else:
            args = ["lint", str(CHART), "-f", str(file)]
        result = _helm(tools, *args)
        assert result.returncode != 0, f"helm {command} accepted {values}"
        said = result.stdout + result.stderr
        assert "values don't meet the specifications of the schema" in said, said
        assert named in said, said


@pytest.mark.parametrize(
    ("version", "installs"),
    [("v1.29.9", False), ("v1.30.0", True), ("v1.30.4-eks-2f008fe", True), ("v1.36.3", True)],
)
def test_the_chart_installs_on_kubernetes_1_30_and_later(
    tools: Tools, version: str, installs: bool
) -> None:
    result = _helm(tools, "template", "x", str(CHART), "--kube-version", version)
    assert (result.returncode == 0) == installs, result.stderr
    if not installs:
        assert "chart requires kubeVersion: >=1.30.0-0" in result.stderr


def test_the_tests_render_the_chart_for_the_control_planes_version(cluster: ControlPlane) -> None:
    server = cluster.kubectl("version", "-o", "json").stdout
    assert json.loads(server)["serverVersion"]["gitVersion"] == HELM_KUBE_VERSION[1]


def test_the_disruption_budget_keeps_a_replica_through_drains(tools: Tools) -> None:
    objects = _render(tools, "ocireg", "ocireg-system")
    budget = _one(objects, "PodDisruptionBudget")
    deployment = _one(objects, "Deployment")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["metadata"]["namespace"] == "ocireg-system"
    share = _render(
        tools, "ocireg", "ocireg-system", None, "--set", "podDisruptionBudget.maxUnavailable=50%"
    )
    assert _one(share, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"
    # One replica: a budget could only block drains, so there is none.
    single = _render(
        tools,
        "ocireg",
        "ocireg-system",
        None,
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicas=1",
    )
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"]
    off = _render(
        tools, "ocireg", "ocireg-system", None, "--set", "podDisruptionBudget.enabled=false"
    )
    assert not [o for o in off if o["kind"] == "PodDisruptionBudget"]


def test_the_artifact_hub_examples_are_accepted_by_the_api_server(
    cluster: ControlPlane, crds: None, namespace: str, tmp_path: Path
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    examples = yaml.safe_load(chart["annotations"]["artifacthub.io/crdsExamples"])
    for example in examples:
        if "namespace" in example["metadata"]:
            example["metadata"]["namespace"] = namespace
    file = tmp_path / "examples.yaml"
    file.write_text(yaml.safe_dump_all(examples))
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(file), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created (server dry run)") == len(examples), result.stdout


# The Helm upgrade of docs/install.md: new CRDs over the ones `helm install` created.
CRD_UPGRADE = "kubectl apply --server-side --force-conflicts -f helm/ocireg/crds/"


def test_the_documented_crd_upgrade_applies_over_the_crds_helm_installed(
    tools: Tools, cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    assert CRD_UPGRADE in (ROOT / "docs" / "install.md").read_text()
    # The chart's CRDs under a group of their own (the session's CRDs stay as they are), and
    # an older release of them that differs in a description.
    group = f"t{secrets.token_hex(3)}.ocireg.dev"
    new = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crd["spec"]["group"] = group
        crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
        new.append(crd)
    old = copy.deepcopy(new)
    for crd in old:
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "older"
    chart = tmp_path / "old-chart"
    (chart / "crds").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: old-crds\nversion: 0.0.1\n")
    (chart / "crds" / "crds.yaml").write_text(yaml.safe_dump_all(old))
    kubeconfig = f"--kubeconfig={cluster.admin_kubeconfig}"
    installed = _helm(tools, "install", "old-crds", str(chart), "-n", namespace, kubeconfig)
    assert installed.returncode == 0, installed.stderr
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "crds.yaml").write_text(yaml.safe_dump_all(new))
    names = [f"crd/{crd['metadata']['name']}" for crd in new]
    try:
        # Without forcing, Helm's ownership of the changed fields refuses the upgrade.
        unforced = cluster.kubectl("apply", "--server-side", "-f", str(crds), check=False)
        assert unforced.returncode != 0
        assert 'conflict with "helm"' in unforced.stderr, unforced.stderr
        args = CRD_UPGRADE.split()[1:-1]
        upgraded = cluster.kubectl(*args, str(crds), check=False)
        assert upgraded.returncode == 0, upgraded.stderr
        for name, crd in zip(names, new, strict=True):
            schema = cluster.get_json(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            assert (
                schema["description"]
                == crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
            )
    finally:
        _helm(tools, "uninstall", "old-crds", "-n", namespace, kubeconfig)
        cluster.kubectl("delete", *names, "--ignore-not-found", "--wait=false", check=False)


def test_helm_install_checks_the_clusters_version_not_a_default(
    tools: Tools, cluster: ControlPlane, crds: None, namespace: str
) -> None:
    # Against a cluster, helm takes its version from the API server (1.36 here): no
    # --kube-version needed, and the kubeVersion check passes.
    result = _helm(
        tools,
        "install",
        "ocireg",
        str(CHART),
        "-n",
        namespace,
        "--dry-run=server",
        f"--kubeconfig={cluster.admin_kubeconfig}",
    )
    assert result.returncode == 0, result.stderr
    assert "STATUS: pending-install" in result.stdout
