"""crds/ is generated from the models; these fail when the two disagree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ocireg.api.crd import crd, crd_files
from ocireg.api.spec import RegistrySpec

CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("name", sorted(crd_files()))
def test_committed_crds_match_the_models(name: str) -> None:
    committed = (CRDS / name).read_text()
    assert committed == crd_files()[name], f"crds/{name} is stale: run `ocireg crds`"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize("namespaced", [True, False])
def test_schema_is_structural(namespaced: bool) -> None:
    schema = crd(namespaced)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert "$ref" not in node
        assert "anyOf" not in node
        assert "x-ocireg-cluster-only" not in node
        assert "title" not in node


def _rules(namespaced: bool) -> list[str]:
    spec = crd(namespaced)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return [r["message"] for n in _walk(spec) for r in n.get("x-kubernetes-validations", [])]


def test_only_the_namespaced_kind_forbids_cross_namespace_fields() -> None:
    namespaced = [m for m in _rules(True) if "only allowed on ClusterOCIRegistry" in m]
    assert len(namespaced) >= 5  # namespaces, selector, excludes, secret and CA namespaces
    assert not [m for m in _rules(False) if "only allowed on ClusterOCIRegistry" in m]


def test_samples_in_docs_parse() -> None:
    spec = RegistrySpec.model_validate(
        yaml.safe_load("""
        server: registry.example.com:5000
        repositoryPrefix: platform/charts
        auth: {basic: {secretRef: {name: creds}, username: robot$ci}}
        tls: {caBundleRef: {configMap: corp-ca}}
        targets: {namespaceSelector: {matchLabels: {team: a}}, serviceAccounts: ["*"]}
    """)
    )
    assert spec.auth is not None
    assert spec.auth.method == "basic"
    assert spec.effective_targets.formats == ["dockerconfigjson"]
    assert spec.effective_refresh.renew_before == "20%"


@pytest.mark.parametrize("namespaced", [True, False])
@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_is_described(namespaced: bool, part: str) -> None:
    # `kubectl explain ociregistry.status.<field>` prints these; a field without one shows
    # an empty DESCRIPTION (status.conditions did).
    schema = crd(namespaced)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing: list[str] = []

    def walk(node: dict, path: str) -> None:
        for name, field in (node.get("properties") or {}).items():
            if not field.get("description"):
                missing.append(f"{path}.{name}")
            walk(field, f"{path}.{name}")
            walk(field.get("items") or {}, f"{path}.{name}[]")

    walk(schema["properties"][part], part)
    assert not missing


def test_printer_columns_show_no_future_time_as_a_date() -> None:
    # kubectl renders a `date` column as the time since it: `<invalid>` for a future time.
    # Only creationTimestamp (always past) is one; expiry and next refresh are strings.
    for namespaced in (True, False):
        columns = crd(namespaced)["spec"]["versions"][0]["additionalPrinterColumns"]
        dates = [c["jsonPath"] for c in columns if c["type"] == "date"]
        assert dates == [".metadata.creationTimestamp"]
        by_name = {c["name"]: c for c in columns}
        assert by_name["Expires"]["type"] == "string"
        assert by_name["Message"]["priority"] == 1  # -o wide
        assert by_name["Message"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].message'
