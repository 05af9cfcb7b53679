"""A tenant's OCIRegistry: Secrets only in its own namespace, all three formats, every
ServiceAccount including ones created later, extends, and cleanup on delete."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import requests

from ocireg_devenv.clients import Clients
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import free_port
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    events_for,
    pull_secret_refs,
    registry_object,
    secret,
    secret_text,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"


def test_tenant_registry_formats_service_accounts_extends_and_cleanup(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "robot", "namespace": namespace},
            # Only the password in the Secret; the username is literal in the spec.
            "stringData": {"token": basic.password},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "corp-ca", "namespace": namespace},
            "data": {"bundle.pem": registries.ca_file.read_text()},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "builder", "namespace": namespace},
        },
    )
    metrics_port = free_port()
    run_operator(
        *ALLOW_LOCAL_REGISTRIES,
        "--metrics-port",
        str(metrics_port),
        "--metrics-address",
        "127.0.0.1",
    )
    base = {
        "server": basic.host,
        "auth": {
            "basic": {
                "secretRef": {"name": "robot"},
                "username": basic.username,
                "passwordKey": "token",
            }
        },
        "tls": {"caBundleRef": {"configMap": "corp-ca", "key": "bundle.pem"}},
    }
    apply(
        cluster,
        registry_object(KIND, "base", base, namespace),
        registry_object(
            KIND,
            "tools",
            {
                "extends": "base",
                "targets": {
                    "secretName": "registry",
                    "serviceAccounts": ["*"],
                    "formats": ["dockerconfigjson", "basic-auth", "env"],
                },
            },
            namespace,
        ),
    )
    wait_for_reason(cluster, KIND, "tools", "Ready", namespace)

    # dockerconfigjson works with a real client.
    pull = secret(cluster, namespace, "registry")
    assert pull is not None
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    image = f"{basic.host}/tenant/app:1"
    authfile = tmp_path / "docker" / "config.json"
    authfile.parent.mkdir()
    authfile.write_bytes(base64.b64decode(pull["data"][".dockerconfigjson"]))
    clients.push_image(image, b"tenant", authfile.parent)  # crane reads DOCKER_CONFIG
    assert clients.skopeo_pull(image, authfile, tmp_path / "pulled").returncode == 0

    # basic-auth and env formats carry the same credentials under their conventional keys.
    assert secret(cluster, namespace, "registry-basic-auth")["type"] == "kubernetes.io/basic-auth"
    assert secret_text(cluster, namespace, "registry-basic-auth", "username") == basic.username
    assert secret_text(cluster, namespace, "registry-basic-auth", "password") == basic.password
    assert secret_text(cluster, namespace, "registry-env", "OCI_REGISTRY_USERNAME") == (
        basic.username
    )
    assert secret_text(cluster, namespace, "registry-env", "OCI_REGISTRY_PASSWORD") == (
        basic.password
    )

    # Same-namespace copies are owned by the registry object (garbage collection backs up
    # the finalizer) and say who wrote them.
    owners = pull["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [(KIND, "tools")]
    assert pull["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ocireg"

    # ["*"]: existing ServiceAccounts, and one created afterwards.
    for account in ("default", "builder"):
        wait_for(
            lambda a=account: "registry" in pull_secret_refs(cluster, namespace, a),
            20,
            f"ServiceAccount {account} to reference the pull secret",
        )
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "late", "namespace": namespace},
        },
    )
    wait_for(
        lambda: pull_secret_refs(cluster, namespace, "late") == ["registry"],
        20,
        "a ServiceAccount created later to reference the pull secret",
    )
    status = cluster.get_json("ociregistry", "tools", "-n", namespace)["status"]
    assert status["targets"]["namespaces"] == 1
    assert status["targets"]["serviceAccounts"] >= 2
    assert any(e["reason"] == "SecretsWritten" for e in events_for(cluster, "tools"))

    # The metrics endpoint reports the work and the Secrets per object.
    scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'ocireg_reconciles_total{kind="OCIRegistry",result="success"}' in scraped
    assert (
        f'ocireg_managed_secrets{{kind="OCIRegistry",name="tools",namespace="{namespace}"}} 3.0'
        in scraped
    )
    assert "ocireg_secret_writes_total" in scraped
    assert "ocireg_reconcile_duration_seconds_bucket" in scraped

    # `kubectl get` shows what a user needs at a glance.
    table = cluster.kubectl("get", "ocir", "-n", namespace).stdout
    assert "tools" in table
    assert "basic" in table
    assert "True" in table

    # Deleting the object removes its Secrets and only its references.
    cluster.kubectl("delete", "ociregistry", "tools", "-n", namespace, "--timeout=60s")
    for name in ("registry", "registry-basic-auth", "registry-env"):
        assert secret(cluster, namespace, name) is None
    for account in ("default", "builder", "late"):
        assert "registry" not in pull_secret_refs(cluster, namespace, account)
    # The base object still has its own pull secret.
    assert secret(cluster, namespace, "base") is not None
    assert pull_secret_refs(cluster, namespace, "default") == ["base"]
    assert basic.password not in json.dumps(events_for(cluster, "tools"))
