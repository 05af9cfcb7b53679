"""The install artefacts hold copies that must not drift: the CRDs (generated into crds/) in
manifests/crds/ and the chart's crds/, and the ClusterRole, the admission policies, the alerts
and the dashboard (written once, under manifests/) in the chart's files/. `make manifests`
refreshes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `make manifests` to copy it, then commit the copies"


def _crds() -> list[Path]:
    found = sorted((ROOT / "crds").glob("*.yaml"))
    assert found, "no CRDs in crds/"
    return found


@pytest.mark.parametrize("copies", ["manifests/crds", "helm/ocireg/crds"])
def test_crd_copies_match_the_generated_crds(copies: str) -> None:
    names = {p.name for p in _crds()}
    assert {p.name for p in (ROOT / copies).glob("*.yaml")} == names, FIX
    for source in _crds():
        copy = ROOT / copies / source.name
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: {FIX}"


def test_kustomization_installs_every_crd_and_the_rbac_file() -> None:
    kustomization = yaml.safe_load((ROOT / "manifests/kustomization.yaml").read_text())
    resources = kustomization["resources"]
    for source in _crds():
        assert f"crds/{source.name}" in resources
    for name in (
        "namespace.yaml",
        "rbac/clusterrole.yaml",
        "rbac/leader-election.yaml",
        "deployment.yaml",
    ):
        assert name in resources
    for entry in resources:
        assert (ROOT / "manifests" / entry).is_file(), entry


@pytest.mark.parametrize(
    "source",
    [
        "rbac/clusterrole.yaml",
        "rbac/token-request-policy.yaml",  # the chart renders its validations
        "rbac/own-objects-policy.yaml",
        "rbac/service-account-policy.yaml",
        "admission/webhook-policy.yaml",
        "monitoring/prometheus-operator/prometheusrule.yaml",  # the chart sets thresholds
        "monitoring/grafana/dashboard.json",
    ],
)
def test_chart_rules_are_the_manifests_rules(source: str) -> None:
    original = ROOT / "manifests" / source
    copy = ROOT / "helm/ocireg/files" / Path(source).name
    assert copy.read_bytes() == original.read_bytes(), f"{copy} differs from {original}: {FIX}"


def test_chart_version_follows_the_operator() -> None:
    from ocireg import __version__

    chart = yaml.safe_load((ROOT / "helm/ocireg/Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    kustomization = yaml.safe_load((ROOT / "manifests/kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "ghcr.io/ocireg/ocireg", "newTag": __version__}]
