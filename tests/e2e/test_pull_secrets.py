"""The core loop on the real control plane: a ClusterOCIRegistry with basic credentials
writes working pull secrets into selected namespaces, patches ServiceAccounts, follows a
password change, keeps the last good Secret on a wrong password, and cleans up on delete."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ocireg.devenv.clients import Clients, docker_config, write_docker_config
from ocireg.devenv.controlplane import ControlPlane
from ocireg.devenv.registries import LocalRegistries


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _secret(cluster: ControlPlane, namespace: str, name: str) -> dict | None:
    result = cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _condition(cluster: ControlPlane, name: str, kind: str) -> dict:
    body = cluster.get_json("clusterociregistry", name)
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return condition
    return {}


def _pull_secret_refs(cluster: ControlPlane, namespace: str) -> list[str]:
    sa = cluster.get_json("serviceaccount", "default", "-n", namespace)
    return [r["name"] for r in sa.get("imagePullSecrets") or []]


def test_cluster_registry_lifecycle(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    clients: Clients,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    registry = registries.basic
    image = f"{registry.host}/core/app:1"
    pusher = write_docker_config(
        tmp_path / "pusher", docker_config({registry.host: (registry.username, registry.password)})
    ).parent
    clients.push_image(image, b"core", pusher)

    # Credentials and CA live in the operator's credentials namespace (`namespace` here).
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        namespace,
        f"--from-literal=username={registry.username}",
        f"--from-literal=password={registry.password}",
    )
    cluster.kubectl(
        "create",
        "configmap",
        "registry-ca",
        "-n",
        namespace,
        f"--from-file=ca.crt={registries.ca_file}",
    )
    target = f"{namespace}-target"
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", target)
    cluster.kubectl("label", "namespace", target, "pull=yes")
    cluster.kubectl("create", "namespace", other)
    # The team's own reference on the default ServiceAccount must survive everything we do.
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", target, check=False).returncode == 0,
        20,
        "the default ServiceAccount",
    )
    cluster.kubectl(
        "patch", "sa", "default", "-n", target, "-p", '{"imagePullSecrets":[{"name":"teams-own"}]}'
    )
    name = f"reg-{secrets.token_hex(3)}"
    try:
        run_operator("--credentials-namespace", namespace)
        spec = {
            "server": registry.host,
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {
                "namespaceSelector": {"matchLabels": {"pull": "yes"}},
                "secretName": "pull",
            },
        }
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "ocireg.dev/v1alpha1",
                    "kind": "ClusterOCIRegistry",
                    "metadata": {"name": name},
                    "spec": spec,
                }
            ),
        )

        secret = wait_for(lambda: _secret(cluster, target, "pull"), 30, "the pull secret")
        assert secret["type"] == "kubernetes.io/dockerconfigjson"
        assert _secret(cluster, other, "pull") is None
        authfile = tmp_path / "pull.json"
        authfile.write_bytes(base64.b64decode(secret["data"][".dockerconfigjson"]))
        pulled = clients.skopeo_pull(image, authfile, tmp_path / "pulled")
        assert pulled.returncode == 0, pulled.stderr
        wait_for(
            lambda: _condition(cluster, name, "Ready").get("status") == "True", 20, "Ready=True"
        )
        sa = wait_for(
            lambda: len(names := _pull_secret_refs(cluster, target)) == 2 and names,
            20,
            "the default ServiceAccount to reference the pull secret",
        )
        assert sa == ["teams-own", "pull"]

        # A namespace labelled later gets its Secret, and its default ServiceAccount the ref.
        late = f"{namespace}-late"
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": late, "labels": {"pull": "yes"}},
                }
            ),
        )
        wait_for(lambda: _secret(cluster, late, "pull"), 20, "the secret in a new namespace")
        wait_for(
            lambda: (
                cluster.kubectl(
                    "get",
                    "sa",
                    "default",
                    "-n",
                    late,
                    "-o",
                    "jsonpath={.imagePullSecrets[*].name}",
                    check=False,
                ).stdout
                == "pull"
            ),
            20,
            "the new namespace's default ServiceAccount",
        )

        # The password changes in the registry and in the credentials Secret: copies follow.
        new_password = secrets.token_urlsafe(18)
        registries.set_password("basic", new_password)
        cluster.kubectl(
            "patch",
            "secret",
            "creds",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"stringData": {"password": new_password}}),
        )
        wait_for(
            lambda: (
                new_password
                in base64.b64decode(
                    _secret(cluster, target, "pull")["data"][".dockerconfigjson"]
                ).decode()
            ),
            45,
            "the pull secret to carry the new password",
        )

        # A wrong password: the condition says so, and the working Secret stays as it was.
        good = _secret(cluster, target, "pull")["data"]
        cluster.kubectl(
            "patch",
            "secret",
            "creds",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"stringData": {"password": "wrong"}}),
        )
        failed = wait_for(
            lambda: (
                (c := _condition(cluster, name, "CredentialsReady")).get("reason")
                == "AuthenticationFailed"
                and c
            ),
            45,
            "AuthenticationFailed",
        )
        assert failed["status"] == "False"
        assert _secret(cluster, target, "pull")["data"] == good
        events = cluster.kubectl(
            "get", "events", "-A", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
        assert "AuthenticationFailed" in events
        assert new_password not in events
        assert "wrong" not in json.dumps(cluster.get_json("clusterociregistry", name).get("status"))

        # Relabelled out of the selector: the Secret and our reference go.
        cluster.kubectl("label", "namespace", late, "pull-")
        wait_for(
            lambda: _secret(cluster, late, "pull") is None,
            30,
            "the Secret to leave an unselected namespace",
        )
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", name, "--ignore-not-found", "--timeout=60s", check=False
        )
    assert _secret(cluster, target, "pull") is None
    assert _pull_secret_refs(cluster, target) == ["teams-own"]
    for extra in (target, other, f"{namespace}-late"):
        cluster.kubectl("delete", "namespace", extra, "--wait=false", check=False)
