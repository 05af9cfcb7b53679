"""The chart's metadata says what is true of the chart: the Kubernetes versions it needs, its
icon, and the Artifact Hub annotations (the CRDs it ships, the image it runs, the license the
project declares, examples of its objects). tests/e2e/test_install_gitops.py and
test_install.py render, lint and apply the chart with the real helm and API server; the
examples are applied there too (server dry run)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from ocireg.api.names import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"


def _chart() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def _annotation(name: str) -> Any:
    return yaml.safe_load(_chart()["annotations"][f"artifacthub.io/{name}"])


def test_the_chart_needs_the_kubernetes_version_its_policies_need() -> None:
    # admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is GA in 1.30.
    assert _chart()["kubeVersion"] == ">=1.30.0-0"
    policies = [
        yaml.safe_load(p.read_text()) for p in sorted((CHART / "files").glob("*-policy.yaml"))
    ]
    assert policies
    assert {p["apiVersion"] for p in policies} == {"admissionregistration.k8s.io/v1"}


def test_the_crds_annotation_lists_the_crds_the_chart_ships() -> None:
    shipped = set()
    for path in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            shipped.add((crd["spec"]["names"]["kind"], version["name"], crd["metadata"]["name"]))
    listed = {(c["kind"], c["version"], c["name"]) for c in _annotation("crds")}
    assert listed == shipped
    examples = _annotation("crdsExamples")
    assert {e["kind"] for e in examples} == {kind for kind, _, _ in shipped}
    assert {e["apiVersion"] for e in examples} == {f"{GROUP}/{VERSION}"}


def test_the_images_annotation_is_the_image_the_chart_runs() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (image,) = _annotation("images")
    assert image["image"] == f"{values['image']['repository']}:{_chart()['appVersion']}"


def test_the_license_is_the_projects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _chart()["annotations"]["artifacthub.io/license"] == project["license"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_the_icon_and_links_point_into_the_repository() -> None:
    chart = _chart()
    repository = chart["home"]
    assert chart["sources"] == [repository]
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/")
    icon = chart["icon"]
    assert icon.startswith(raw + "/main/")
    assert (ROOT / icon.removeprefix(raw + "/main/")).is_file()
    for link in _annotation("links"):
        assert link["url"].startswith(repository)
        path = link["url"].removeprefix(repository).removeprefix("/")
        if path:
            assert (ROOT / path.split("/", 2)[-1]).exists(), link


def _open_objects(schema: Any, path: str = "") -> list[str]:
    """Paths of object schemas that accept keys they do not name."""
    found = []
    if isinstance(schema, dict):
        closed = "additionalProperties" in schema or "$ref" in schema
        if schema.get("type") == "object" and not closed:
            found.append(path or "/")
        for key, value in schema.items():
            found += _open_objects(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            found += _open_objects(item, f"{path}/{i}")
    return found


def test_every_object_in_the_values_schema_is_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    # `global` is Helm's: a parent chart passes its global values to every subchart.
    assert _open_objects(schema) == ["/properties/global"]
