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

from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    apply,
    ca_config_map,
    condition,
    events_for,
    pull_secret_refs,
    registry_object,
    secret,
    secret_object,
    secret_text,
    wait_for,
    wait_for_reason,
)


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

        written = wait_for(lambda: secret(cluster, target, "pull"), 30, "the pull secret")
        assert written["type"] == "kubernetes.io/dockerconfigjson"
        assert secret(cluster, other, "pull") is None
        authfile = tmp_path / "pull.json"
        authfile.write_bytes(base64.b64decode(written["data"][".dockerconfigjson"]))
        pulled = clients.skopeo_pull(image, authfile, tmp_path / "pulled")
        assert pulled.returncode == 0, pulled.stderr
        wait_for(
            lambda: condition(cluster, "ClusterOCIRegistry", name, "Ready").get("status") == "True",
            20,
            "Ready=True",
        )
        sa = wait_for(
            lambda: len(names := pull_secret_refs(cluster, target)) == 2 and names,
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
        wait_for(lambda: secret(cluster, late, "pull"), 20, "the secret in a new namespace")
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
                    secret(cluster, target, "pull")["data"][".dockerconfigjson"]
                ).decode()
            ),
            45,
            "the pull secret to carry the new password",
        )

        # A wrong password: the condition says so, and the working Secret stays as it was.
        good = secret(cluster, target, "pull")["data"]
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
                (c := condition(cluster, "ClusterOCIRegistry", name, "CredentialsReady")).get(
                    "reason"
                )
                == "AuthenticationFailed"
                and c
            ),
            45,
            "AuthenticationFailed",
        )
        assert failed["status"] == "False"
        assert secret(cluster, target, "pull")["data"] == good
        events = cluster.kubectl(
            "get", "events", "-A", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
        assert "AuthenticationFailed" in events
        assert new_password not in events
        assert "wrong" not in json.dumps(cluster.get_json("clusterociregistry", name).get("status"))

        # Relabelled out of the selector: the Secret and our reference go.
        cluster.kubectl("label", "namespace", late, "pull-")
        wait_for(
            lambda: secret(cluster, late, "pull") is None,
            30,
            "the Secret to leave an unselected namespace",
        )
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", name, "--ignore-not-found", "--timeout=60s", check=False
        )
    assert secret(cluster, target, "pull") is None
    assert pull_secret_refs(cluster, target) == ["teams-own"]
    for extra in (target, other, f"{namespace}-late"):
        cluster.kubectl("delete", "namespace", extra, "--wait=false", check=False)


def test_registry_deleted_while_a_target_namespace_is_terminating(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    """A namespace stuck in Terminating (a finalizer holds it) must not block the registry's
    own deletion, and the healthy namespace's copy is still cleaned up."""
    registry = registries.basic
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
    dying, healthy = f"{namespace}-dying", f"{namespace}-healthy"
    for extra in (dying, healthy):
        cluster.kubectl("create", "namespace", extra)
    name = f"reg-{secrets.token_hex(3)}"
    run_operator("--credentials-namespace", namespace)
    apply(
        cluster,
        registry_object(
            "ClusterOCIRegistry",
            name,
            {
                "server": registry.host,
                "auth": {"basic": {"secretRef": {"name": "creds"}}},
                "tls": {"insecureSkipVerify": True},
                "targets": {"namespaces": [dying, healthy], "secretName": "pull"},
            },
        ),
    )
    for extra in (dying, healthy):
        wait_for(lambda n=extra: secret(cluster, n, "pull"), 30, f"the pull secret in {extra}")
    # Hold the namespace in Terminating with a finalizer on an object inside it.
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "hold", "namespace": dying, "finalizers": ["example.com/hold"]},
        },
    )
    cluster.kubectl("delete", "namespace", dying, "--wait=false")
    wait_for(
        lambda: cluster.get_json("namespace", dying)["status"]["phase"] == "Terminating",
        20,
        "the namespace to be Terminating",
    )
    try:
        cluster.kubectl("delete", "clusterociregistry", name, "--timeout=30s")
        assert secret(cluster, healthy, "pull") is None
        assert cluster.get_json("namespace", dying)["status"]["phase"] == "Terminating"
    finally:
        cluster.kubectl(
            "patch",
            "configmap",
            "hold",
            "-n",
            dying,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        cluster.kubectl("delete", "namespace", healthy, "--wait=false", check=False)
    wait_for(
        lambda: cluster.kubectl("get", "namespace", dying, check=False).returncode != 0,
        60,
        "the held namespace to finish deleting",
    )


def test_copies_are_repaired_and_follow_the_credentials_within_seconds(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    """The operator watches its own pull secrets and the credentials namespace: a copy
    deleted or edited by hand is back within seconds (the drift-repair resync is 5 minutes
    away), and a changed login Secret reaches every copy within seconds, not at the next
    10 s tick."""
    basic = registries.basic
    apply(
        cluster,
        secret_object("login", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file),
    )
    label = f"repair-{namespace[-6:]}"
    targets = [f"{namespace[:50]}-{i}" for i in range(3)]
    for target in targets:
        apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": target, "labels": {"pull": label}},
            },
        )
    name = f"repair-{secrets.token_hex(3)}"
    run_operator("--credentials-namespace", namespace)
    try:
        apply(
            cluster,
            registry_object(
                "ClusterOCIRegistry",
                name,
                {
                    "server": basic.host,
                    "auth": {"basic": {"secretRef": {"name": "login"}}},
                    "tls": {"caBundleRef": {"configMap": "registry-ca"}},
                    "targets": {
                        "namespaceSelector": {"matchLabels": {"pull": label}},
                        "secretName": "pull",
                    },
                },
            ),
        )
        wait_for_reason(cluster, "ClusterOCIRegistry", name, "Ready")
        good = wait_for(lambda: secret(cluster, targets[0], "pull"), 20, "the pull secret")

        def took(check: Callable[[], object], what: str, bound: float = 5) -> float:
            started = time.monotonic()
            wait_for(check, bound, what)
            return time.monotonic() - started

        # Deleted by hand: back, with the same content.
        cluster.kubectl("delete", "secret", "pull", "-n", targets[0])
        repaired = took(
            lambda: (
                (found := secret(cluster, targets[0], "pull"))
                and found["metadata"]["uid"] != good["metadata"]["uid"]
                and found["data"] == good["data"]
            ),
            "the deleted copy to be back",
        )
        # Edited by hand: its content is put back.
        cluster.kubectl(
            "patch", "secret", "pull", "-n", targets[1], "--type=merge",
            "-p", json.dumps({"data": {".dockerconfigjson": base64.b64encode(b"{}").decode()}}),
        )  # fmt: skip
        restored = took(
            lambda: secret(cluster, targets[1], "pull")["data"] == good["data"],
            "the edited copy to be restored",
        )
        # A new login (twice, so a lucky tick cannot pass for the watch): every copy follows.
        follows = []
        for _ in range(2):
            user, password = f"robot-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
            registries.set_user("basic", user, password)
            cluster.kubectl(
                "patch", "secret", "login", "-n", namespace, "--type=merge",
                "-p", json.dumps({"stringData": {"username": user, "password": password}}),
            )  # fmt: skip
            follows.append(
                took(
                    lambda password=password: all(
                        password in secret_text(cluster, t, "pull", ".dockerconfigjson") or ""
                        for t in targets
                    ),
                    "every copy to carry the new login",
                    bound=6,
                )
            )
        print(f"repaired {repaired:.1f}s, restored {restored:.1f}s, followed {follows}")
        assert condition(cluster, "ClusterOCIRegistry", name, "Ready")["status"] == "True"
        # Work started by the credentials watch posts its Events as a tick's would.
        wait_for(
            lambda: (
                sum(
                    e.get("count") or 1
                    for e in events_for(cluster, name)
                    if e["reason"] == "SecretsWritten"
                )
                >= 3
            ),
            10,
            "an Event for the first write and for each new login",
        )
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--timeout=60s", check=False)
        for target in targets:
            cluster.kubectl("delete", "namespace", target, "--wait=false", check=False)
