"""Helm charts in the local registries: real charts pushed with helm, the operator's index
and status, and helm pulling every listed version with the pull secret the operator wrote."""

from __future__ import annotations

import base64
import re
import secrets
import time
from pathlib import Path

import yaml

from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries, RegistryServer

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    condition,
    events_for,
    registry,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

DIGEST = re.compile(r"Digest:\s*(sha256:[0-9a-f]{64})")


def make_chart(clients: Clients, workdir: Path, name: str, version: str) -> Path:
    """A small real chart, packaged by helm."""
    source = workdir / "src" / f"{name}-{version}" / name
    (source / "templates").mkdir(parents=True)
    chart = {
        "apiVersion": "v2",
        "name": name,
        "version": version,
        "appVersion": f"app-{version}",
        "description": f"{name} for the ocireg chart tests",
        "type": "application",
        "icon": "https://example.com/icon.png",
    }
    (source / "Chart.yaml").write_text(yaml.safe_dump(chart))
    (source / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
    )
    result = clients.helm("package", str(source), "--destination", str(workdir / "packages"))
    assert result.returncode == 0, result.stderr
    return workdir / "packages" / f"{name}-{version}.tgz"


def push_chart(
    clients: Clients, server: RegistryServer, config: Path, package: Path, where: str
) -> str:
    """helm push; the digest helm reports."""
    result = clients.helm(
        "push",
        str(package),
        f"oci://{server.host}/{where}",
        "--ca-file",
        str(clients.ca_file),
        registry_config=config,
    )
    assert result.returncode == 0, result.stderr
    found = DIGEST.search(result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return found.group(1)


def registry_config(tmp_path: Path, name: str, server: RegistryServer) -> Path:
    directory = tmp_path / name
    # Read the password now: other tests may have changed it.
    write_docker_config(directory, docker_config({server.host: (server.username, server.password)}))
    return directory / "config.json"


def charts_status(cluster: ControlPlane, kind: str, name: str, namespace: str | None) -> dict:
    return (registry(cluster, kind, name, namespace).get("status") or {}).get("charts") or {}


def index_of(cluster: ControlPlane, namespace: str, name: str) -> dict:
    found = cluster.kubectl("get", "configmap", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return {}
    return yaml.safe_load(yaml.safe_load(found.stdout)["data"]["index.yaml"])


def versions_in(index: dict, chart: str) -> list[str]:
    return [e["version"] for e in (index.get("entries") or {}).get(chart, [])]


def helm_pull(
    clients: Clients, tmp_path: Path, url: str, version: str, authfile: Path
) -> tuple[int, str]:
    destination = tmp_path / "pulled" / secrets.token_hex(4)
    destination.mkdir(parents=True)
    result = clients.helm(
        "pull",
        url,
        "--version",
        version,
        "--destination",
        str(destination),
        "--ca-file",
        str(clients.ca_file),
        registry_config=authfile,
    )
    return result.returncode, result.stdout + result.stderr


def test_chart_repositories_are_indexed_and_every_listed_version_pulls(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    prefix = f"t{secrets.token_hex(3)}"
    push_config = registry_config(tmp_path, "push", basic)
    pushed: dict[tuple[str, str], str] = {}
    for version in ("0.9.0", "1.0.0", "1.1.0", "1.1.0+build.7", "2.0.0-rc.1"):
        package = make_chart(clients, tmp_path, "podinfo", version)
        pushed[("podinfo", version)] = push_chart(
            clients, basic, push_config, package, f"{prefix}/charts"
        )
    for patch in range(5):  # more than one page of tags (the operator asks for pages of 2)
        package = make_chart(clients, tmp_path, "many", f"3.0.{patch}")
        pushed[("many", f"3.0.{patch}")] = push_chart(
            clients, basic, push_config, package, f"{prefix}/charts"
        )
    # An image beside the charts, tagged like a version.
    clients.push_image(
        f"{basic.host}/{prefix}/charts/podinfo:1.5.0", b"not a chart", push_config.parent
    )

    apply(
        cluster,
        secret_object("creds", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file, name="corp-ca"),
    )
    run_operator(*ALLOW_LOCAL_REGISTRIES, env={"OCIREG_CHARTS_PAGE_SIZE": "2"})
    spec = {
        "server": basic.host,
        "repositoryPrefix": prefix,
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": {"configMap": "corp-ca"}},
        "charts": {
            "repositories": ["charts/podinfo", "charts/many", "charts/missing"],
            "versions": {"constraint": ">=1.0.0"},
            "interval": "10m",
        },
    }
    apply(cluster, registry_object("OCIRegistry", "corp", spec, namespace))
    wait_for_reason(cluster, "OCIRegistry", "corp", "Ready", namespace)

    # One missing repository is reported and does not stop the others.
    found = wait_for_reason(
        cluster, "OCIRegistry", "corp", "RepositoriesFailed", namespace, "ChartsSynced", 60
    )
    assert "charts/missing" in found["message"]
    status = charts_status(cluster, "OCIRegistry", "corp", namespace)
    assert status["repositories"] == 2
    assert status["versions"] == 8
    assert status["skipped"] == 1  # the image
    assert status["configMap"] == f"{namespace}/corp-charts"
    items = {i["repository"]: i for i in status["items"]}
    assert items["charts/podinfo"] == {
        "repository": "charts/podinfo",
        "name": "podinfo",
        "latest": "1.1.0+build.7",
        "versions": 3,
    }
    assert items["charts/many"]["versions"] == 5
    assert [(e["repository"], e["reason"]) for e in status["errors"]] == [
        ("charts/missing", "RepositoryNotFound")
    ]

    index = index_of(cluster, namespace, "corp-charts")
    assert index["apiVersion"] == "v1"
    assert versions_in(index, "podinfo") == ["1.1.0+build.7", "1.1.0", "1.0.0"]
    assert versions_in(index, "many") == ["3.0.4", "3.0.3", "3.0.2", "3.0.1", "3.0.0"]
    entry = index["entries"]["podinfo"][0]
    assert entry["urls"] == [f"oci://{basic.host}/{prefix}/charts/podinfo:1.1.0_build.7"]
    assert entry["appVersion"] == "app-1.1.0+build.7"
    assert entry["description"] == "podinfo for the ocireg chart tests"
    assert entry["icon"] == "https://example.com/icon.png"
    assert entry["created"]
    assert wait_for(
        lambda: any(e["reason"] == "ChartsIndexed" for e in events_for(cluster, "corp")),
        30,
        "a ChartsIndexed Event",
    )

    # A new version, and the missing repository dropped: synced at once (the spec changed).
    pushed[("podinfo", "1.2.0")] = push_chart(
        clients,
        basic,
        push_config,
        make_chart(clients, tmp_path, "podinfo", "1.2.0"),
        f"{prefix}/charts",
    )
    spec["charts"]["repositories"] = ["charts/podinfo", "charts/many"]
    apply(cluster, registry_object("OCIRegistry", "corp", spec, namespace))
    wait_for_reason(cluster, "OCIRegistry", "corp", "Synced", namespace, "ChartsSynced", 60)
    index = index_of(cluster, namespace, "corp-charts")
    assert versions_in(index, "podinfo")[0] == "1.2.0"
    assert charts_status(cluster, "OCIRegistry", "corp", namespace)["errors"] == []
    assert wait_for(
        lambda: any(
            e["reason"] == "ChartVersionAdded" and "podinfo 1.2.0" in e["message"]
            for e in events_for(cluster, "corp")
        ),
        30,
        "a ChartVersionAdded Event for podinfo 1.2.0",
    )
    # The credential reconcile leaves ChartsSynced alone.
    assert condition(cluster, "OCIRegistry", "corp", "Ready", namespace)["status"] == "True"

    # helm pulls every listed version, authenticated by the pull secret the operator wrote.
    pull_secret = secret(cluster, namespace, "corp")
    assert pull_secret is not None
    authfile = tmp_path / "operator-written" / "config.json"
    authfile.parent.mkdir()
    authfile.write_bytes(base64.b64decode(pull_secret["data"][".dockerconfigjson"]))
    for chart, rows in index["entries"].items():
        for row in rows:
            assert row["digest"] == pushed[(chart, row["version"])]
            url = row["urls"][0].rsplit(":", 1)[0]
            code, output = helm_pull(clients, tmp_path, url, row["version"], authfile)
            assert code == 0, output
            assert row["digest"] in output  # helm reports the digest the index lists

    # Synced and verified, both loops go quiet: more ticks (every 10 s) write nothing.
    version = cluster.get_json("ociregistry", "corp", "-n", namespace)["metadata"][
        "resourceVersion"
    ]
    time.sleep(12)
    assert (
        cluster.get_json("ociregistry", "corp", "-n", namespace)["metadata"]["resourceVersion"]
        == version
    )

    # Deleting the registry object removes its index.
    cluster.kubectl("delete", "ociregistry", "corp", "-n", namespace)
    wait_for(lambda: not index_of(cluster, namespace, "corp-charts"), 60, "the index removed")


def test_discovered_repositories_on_a_bearer_registry(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    token = registries.token
    prefix = f"d{secrets.token_hex(3)}"
    push_config = registry_config(tmp_path, "push", token)
    pushed = {}
    for name, version in (("alpha", "1.0.0"), ("alpha", "1.0.1+build.1"), ("beta", "0.1.0")):
        package = make_chart(clients, tmp_path, name, version)
        pushed[(name, version)] = push_chart(clients, token, push_config, package, prefix)
    apply(
        cluster,
        secret_object("token-creds", namespace, username=token.username, password=token.password),
        ca_config_map(namespace, registries.ca_file, name="corp-ca"),
    )
    run_operator("--credentials-namespace", namespace)
    name = f"charts-{namespace}"[:63]
    spec = {
        "server": token.host,
        "repositoryPrefix": prefix,
        "auth": {"basic": {"secretRef": {"name": "token-creds"}}},
        "tls": {"caBundleRef": {"configMap": "corp-ca"}},
        "targets": {"namespaces": [namespace]},
        "charts": {"discover": True, "versions": {"keep": 1}},
    }
    apply(cluster, registry_object("ClusterOCIRegistry", name, spec))
    try:
        wait_for_reason(cluster, "ClusterOCIRegistry", name, "Synced", None, "ChartsSynced", 60)
        status = charts_status(cluster, "ClusterOCIRegistry", name, None)
        assert sorted((i["repository"], i["latest"], i["versions"]) for i in status["items"]) == [
            ("alpha", "1.0.1+build.1", 1),
            ("beta", "0.1.0", 1),
        ]
        # The cluster kind's index lives in the operator's credentials namespace.
        index = index_of(cluster, namespace, f"{name}-charts")
        assert versions_in(index, "alpha") == ["1.0.1+build.1"]
        row = index["entries"]["alpha"][0]
        assert row["digest"] == pushed[("alpha", "1.0.1+build.1")]
        written = wait_for(lambda: secret(cluster, namespace, name), 30, "the pull secret")
        authfile = tmp_path / "operator-written" / "config.json"
        authfile.parent.mkdir()
        authfile.write_bytes(base64.b64decode(written["data"][".dockerconfigjson"]))
        code, output = helm_pull(
            clients, tmp_path, row["urls"][0].rsplit(":", 1)[0], row["version"], authfile
        )
        assert code == 0, output
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)


def test_a_refused_catalog_and_a_bad_constraint_are_explained(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    plain = registries.plain
    run_operator(*ALLOW_LOCAL_REGISTRIES)
    spec = {
        "server": plain.host,
        "repositoryPrefix": f"none{secrets.token_hex(3)}",
        "auth": {"anonymous": {}},
        "tls": {"insecure": True},
        "charts": {"discover": True},
    }
    apply(cluster, registry_object("OCIRegistry", "empty", spec, namespace))
    found = wait_for_reason(
        cluster, "OCIRegistry", "empty", "NoRepositories", namespace, "ChartsSynced", 60
    )
    assert "charts.repositories" in found["message"]
    assert found["status"] == "False"

    spec["charts"] = {"repositories": ["charts/x"], "versions": {"constraint": ">=one"}}
    apply(cluster, registry_object("OCIRegistry", "empty", spec, namespace))
    found = wait_for_reason(
        cluster, "OCIRegistry", "empty", "InvalidConstraint", namespace, "ChartsSynced", 60
    )
    assert "'>=one'" in found["message"]
    # The credential side is unaffected.
    assert condition(cluster, "OCIRegistry", "empty", "Ready", namespace)["status"] == "True"
