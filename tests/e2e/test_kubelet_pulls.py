"""The user's outcome through a real kubelet and containerd: pods pull private images from the
local TLS registries with the pull secrets ocireg writes, and do not without them.

Each check is a fresh pod placed on the node with ``nodeName`` and ``imagePullPolicy:
Always``; what is asserted is what ``kubectl get pod`` and ``kubectl get events`` show: the
container Running, or ErrImagePull/ImagePullBackOff with the kubelet's Failed event naming
the registry's refusal (401 Unauthorized from the htpasswd registry; the token registry's
"authorization failed" for a token without access)."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocireg.api.credential import Credential
from ocireg.pullsecrets.plan import docker_config_json
from ocireg_devenv.clients import docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.node import LocalNode
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import LOOPBACK, free_port
from ocireg_devenv.registries import LocalRegistries, RegistryServer
from ocireg_devenv.standins import AwsStandIn, WebhookStandIn

from .helpers import (
    apply,
    ca_config_map,
    pull_secret_refs,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)
from .pods import assert_denied, assert_runs, pod_pull_secrets, run_pod

CLUSTER = "ClusterOCIRegistry"
TENANT = "OCIRegistry"
DENIED_BY = {"basic": "401 Unauthorized", "token": "authorization failed"}
MOTO_PASSWORD = "123456789012-auth-token"  # moto's ECR password for its default account


def private_image(node: LocalNode, registry: RegistryServer, workdir: Path, repo: str) -> str:
    """Push a runnable image only ``registry``'s own user can read; return its reference."""
    pusher = write_docker_config(
        workdir / f"pusher-{secrets.token_hex(3)}",
        docker_config({registry.host: (registry.username, registry.password)}),
    ).parent
    image = f"{registry.host}/kubelet/{repo}-{secrets.token_hex(3)}:1"
    node.push_image(image, pusher)
    return image


@dataclass
class Tenancy:
    """Namespaces made for one test, deleted at its end."""

    cluster: ControlPlane
    made: list[str]

    def namespace(self, stem: str, labels: dict[str, str] | None = None) -> str:
        name = f"{stem}-{secrets.token_hex(3)}"
        metadata: dict = {"name": name, "labels": labels or {}}
        apply(self.cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
        self.made.append(name)
        wait_for(
            lambda: (
                self.cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode
                == 0
            ),
            30,
            f"the default ServiceAccount in {name}",
        )
        return name


@pytest.fixture
def tenancy(cluster: ControlPlane) -> Iterator[Tenancy]:
    made = Tenancy(cluster, [])
    yield made
    for name in made.made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def login_secret(cluster: ControlPlane, namespace: str, registries: LocalRegistries, kind: str):
    registry = registries.servers[kind]
    apply(
        cluster,
        secret_object("creds", namespace, username=registry.username, password=registry.password),
        ca_config_map(namespace, registries.ca_file),
    )


def cluster_registry(name: str, registry: RegistryServer, targets: dict) -> dict:
    spec = {
        "server": registry.host,
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {"secretName": name, **targets},
    }
    return registry_object(CLUSTER, name, spec)


def selecting(label: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {label: "yes"}}}


def delete_cluster_registry(cluster: ControlPlane, name: str) -> None:
    cluster.kubectl("delete", "clusterociregistry", name, "--ignore-not-found", check=False)


def selected_namespace(
    cluster: ControlPlane, tenancy: Tenancy, name: str, label: str, account: str = "default"
) -> str:
    """A namespace selected by ``label``, once its ServiceAccount refers to pull secret
    ``name``."""
    target = tenancy.namespace("app", {label: "yes"})
    wait_for(
        lambda: name in pull_secret_refs(cluster, target, account),
        60,
        f"{account} in {target} to refer to {name}",
    )
    return target


# ------------------------------------------------------------------ ClusterOCIRegistry


def test_a_selected_namespace_pulls_through_its_default_service_account(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    image = private_image(node, registries.basic, tmp_path, "cluster")
    login_secret(cluster, namespace, registries, "basic")
    run_operator("--credentials-namespace", namespace)
    name, label = f"corp-{secrets.token_hex(3)}", f"pull-{secrets.token_hex(3)}"
    try:
        apply(cluster, cluster_registry(name, registries.basic, selecting(label)))
        target = selected_namespace(cluster, tenancy, name, label)
        other = tenancy.namespace("not-selected")

        # The pod names no pull secret; the ServiceAccount admission plugin copies the
        # default ServiceAccount's, and the kubelet pulls with it.
        pod = run_pod(cluster, node, target, image)
        assert pod_pull_secrets(cluster, target, pod) == [name]
        assert_runs(cluster, target, pod)

        # The same pod in a namespace the registry object does not select cannot pull.
        denied = run_pod(cluster, node, other, image)
        assert pod_pull_secrets(cluster, other, denied) == []
        assert_denied(cluster, other, denied, DENIED_BY["basic"])
    finally:
        delete_cluster_registry(cluster, name)


def test_a_rotated_password_reaches_new_pods_and_the_old_one_is_refused(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    image = private_image(node, basic, tmp_path, "rotation")
    login_secret(cluster, namespace, registries, "basic")
    run_operator("--credentials-namespace", namespace)
    name, label = f"rot-{secrets.token_hex(3)}", f"pull-{secrets.token_hex(3)}"
    try:
        apply(cluster, cluster_registry(name, basic, selecting(label)))
        target = selected_namespace(cluster, tenancy, name, label)
        assert_runs(cluster, target, run_pod(cluster, node, target, image))
        before = wait_for(lambda: secret(cluster, target, name), 30, "the pull secret")
        # A hand-made copy of today's pull secret, as a team might have pasted it somewhere.
        apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "pasted-copy", "namespace": target},
                "type": before["type"],
                "data": before["data"],
            },
        )

        # The password changes at the registry and in the login Secret.
        new_password = secrets.token_urlsafe(18)
        registries.set_password("basic", new_password)
        apply(
            cluster,
            secret_object("creds", namespace, username=basic.username, password=new_password),
        )
        wait_for(
            lambda: (now := secret(cluster, target, name)) and now["data"] != before["data"],
            60,
            "the pull secret to follow the new password",
        )

        assert_runs(cluster, target, run_pod(cluster, node, target, image))
        stale = run_pod(cluster, node, target, image, pull_secrets=("pasted-copy",))
        assert_denied(cluster, target, stale, DENIED_BY["basic"])
        # Listed before ocireg's copy, the stale one costs a refused try, not the pull: the
        # kubelet tries each matching credential in order.
        both = run_pod(cluster, node, target, image, pull_secrets=("pasted-copy", name))
        assert_runs(cluster, target, both)
    finally:
        delete_cluster_registry(cluster, name)


def test_a_deleted_registry_object_takes_its_copies_and_new_pods_cannot_pull(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    image = private_image(node, registries.basic, tmp_path, "deleted")
    login_secret(cluster, namespace, registries, "basic")
    run_operator("--credentials-namespace", namespace)
    name, label = f"gone-{secrets.token_hex(3)}", f"pull-{secrets.token_hex(3)}"
    try:
        apply(cluster, cluster_registry(name, registries.basic, selecting(label)))
        target = selected_namespace(cluster, tenancy, name, label)
        assert_runs(cluster, target, run_pod(cluster, node, target, image))

        cluster.kubectl("delete", "clusterociregistry", name, "--timeout=60s")
        wait_for(lambda: secret(cluster, target, name) is None, 60, "the copy to be deleted")
        wait_for(
            lambda: name not in pull_secret_refs(cluster, target),
            60,
            "the ServiceAccount reference to go",
        )
        pod = run_pod(cluster, node, target, image)
        assert pod_pull_secrets(cluster, target, pod) == []
        assert_denied(cluster, target, pod, DENIED_BY["basic"])
    finally:
        delete_cluster_registry(cluster, name)


def test_a_pull_secret_whose_key_the_kubelet_does_not_match_fails_to_pull(
    cluster: ControlPlane,
    registries: LocalRegistries,
    node: LocalNode,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    """What the tier exists to catch: ocireg's own Docker config bytes for the registry, and
    the same bytes keyed by another spelling of the same address (a bug ocireg could have).
    The kubelet matches keys by host and port as written, so only the first pulls."""
    basic = registries.basic
    image = private_image(node, basic, tmp_path, "keys")
    target = tenancy.namespace("keys")
    port = basic.host.rsplit(":", 1)[1]
    for secret_name, host in (("right-key", basic.host), ("wrong-key", f"localhost:{port}")):
        credential = Credential("basic", (host,), basic.username, basic.password)
        data = base64.b64encode(docker_config_json(credential)).decode()
        apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": target},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": data},
            },
        )
    assert_runs(cluster, target, run_pod(cluster, node, target, image, pull_secrets=("right-key",)))
    wrong = run_pod(cluster, node, target, image, pull_secrets=("wrong-key",))
    assert_denied(cluster, target, wrong, DENIED_BY["basic"])


# ------------------------------------------------------------------ OCIRegistry (tenant)


def test_a_tenant_registry_serves_its_named_service_account_only(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tmp_path: Path,
) -> None:
    """A tenant's own OCIRegistry for the Bearer-token registry (containerd does the token
    dance with the username and password ocireg wrote), for ServiceAccount `builder`."""
    token = registries.token
    image = private_image(node, token, tmp_path, "tenant")
    login_secret(cluster, namespace, registries, "token")
    cluster.kubectl("create", "serviceaccount", "builder", "-n", namespace)
    run_operator(*TENANT_LOOPBACK_ARGS)
    spec = {
        "server": token.host,
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {"secretName": "team-pull", "serviceAccounts": ["builder"]},
    }
    apply(cluster, registry_object(TENANT, "team", spec, namespace))
    wait_for(
        lambda: "team-pull" in pull_secret_refs(cluster, namespace, "builder"),
        60,
        "builder to refer to team-pull",
    )
    pod = run_pod(cluster, node, namespace, image, service_account="builder")
    assert pod_pull_secrets(cluster, namespace, pod) == ["team-pull"]
    assert_runs(cluster, namespace, pod)

    # `default` was not listed: its pods get no reference and the registry refuses them.
    assert "team-pull" not in pull_secret_refs(cluster, namespace, "default")
    denied = run_pod(cluster, node, namespace, image)
    assert_denied(cluster, namespace, denied, DENIED_BY["token"])


# Tenant objects may not reach loopback unless the operator allows it; the tests' registries
# live there.
TENANT_LOOPBACK_ARGS = ("--egress-allowed-cidr", f"{LOOPBACK}/32")


# ------------------------------------------------------------------ admission webhook


def test_with_the_webhook_a_pod_created_with_its_namespace_pulls(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    """The gap the webhook closes: a pod created the moment its namespace exists copies
    the ServiceAccount's references once; with the webhook the first version of `default`
    already has them, and the kubelet pulls (retrying until the Secret itself is there)."""
    image = private_image(node, registries.basic, tmp_path, "admission")
    login_secret(cluster, namespace, registries, "basic")
    configuration = f"ocireg-kubelet-{secrets.token_hex(3)}"
    name, label = f"adm-{secrets.token_hex(3)}", f"pull-{secrets.token_hex(3)}"
    run_operator(
        "--credentials-namespace",
        namespace,
        "--admission-webhook",
        f"--admission-address={LOOPBACK}",
        f"--admission-port={free_port()}",
        f"--admission-configuration={configuration}",
        "--admission-timeout=2",
    )
    try:
        apply(cluster, cluster_registry(name, registries.basic, selecting(label)))
        # Verified and the webhook published: a first namespace got its Secret.
        selected_namespace(cluster, tenancy, name, label)
        wait_for(
            lambda: (
                cluster.kubectl(
                    "get", "mutatingwebhookconfiguration", configuration, check=False
                ).returncode
                == 0
            ),
            30,
            "the MutatingWebhookConfiguration",
        )

        rushed = f"rushed-{secrets.token_hex(3)}"
        tenancy.made.append(rushed)
        started = time.monotonic()
        metadata = {"name": rushed, "labels": {label: "yes"}}
        apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
        pod = wait_for(
            lambda: _try_run_pod(cluster, node, rushed, image), 30, "a pod to be accepted"
        )
        created_after = time.monotonic() - started
        assert pod_pull_secrets(cluster, rushed, pod) == [name], (
            f"pod created {created_after:.1f}s after its namespace has no reference"
        )
        assert_runs(cluster, rushed, pod)
    finally:
        delete_cluster_registry(cluster, name)
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", configuration, "--ignore-not-found"
        )


def _try_run_pod(cluster: ControlPlane, node: LocalNode, namespace: str, image: str) -> str:
    """Create the pod, or "" while the namespace has no `default` ServiceAccount yet (the
    API refuses the pod then; a ReplicaSet controller retries the same way)."""
    try:
        return run_pod(cluster, node, namespace, image)
    except subprocess.CalledProcessError as error:
        if "serviceaccount" in (error.stderr or "") and "not found" in (error.stderr or ""):
            return ""
        raise


# ------------------------------------------------------------------ cloud and webhook


def test_an_ecr_token_minted_through_moto_pulls(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    """boto3's real ECR code against moto; the local registry is taught moto's token (user
    AWS), so the minted credential is what lets the kubelet in."""
    basic = registries.basic
    image = private_image(node, basic, tmp_path, "ecr")
    registries.set_user("basic", "AWS", MOTO_PASSWORD)
    aws = AwsStandIn().start()
    target = tenancy.namespace("ecr")
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object(
                "aws-keys", namespace, accessKeyId="AKIDKUBELET", secretAccessKey="kubelet-key-1"
            ),
        )
        run_operator(
            "--credentials-namespace", namespace, "--aws-endpoint-url", aws.url,
            env={"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "eu-west-1"},
        )  # fmt: skip
        keys = {"secretRef": {"name": "aws-keys"}}
        spec = {
            "server": basic.host,
            "auth": {"ecr": {"regions": ["eu-west-1"], "credentials": keys}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaces": [target], "secretName": "ecr"},
        }
        apply(cluster, registry_object(CLUSTER, "kubelet-ecr", spec))
        wait_for_reason(cluster, CLUSTER, "kubelet-ecr", "Ready", timeout=60)
        written = json.loads(
            base64.b64decode(secret(cluster, target, "ecr")["data"][".dockerconfigjson"])
        )
        assert written["auths"][basic.host]["username"] == "AWS"
        wait_for(lambda: "ecr" in pull_secret_refs(cluster, target), 30, "the reference")
        assert_runs(cluster, target, run_pod(cluster, node, target, image))
    finally:
        delete_cluster_registry(cluster, "kubelet-ecr")
        aws.stop()


def test_a_webhook_minted_token_pulls(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    node: LocalNode,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    tenancy: Tenancy,
    tmp_path: Path,
) -> None:
    """A Cycle-style credentials webhook mints a token per call; the registry accepts each
    minted token, the kubelet pulls with the one ocireg wrote."""
    basic = registries.basic
    image = private_image(node, basic, tmp_path, "webhook")
    hook = WebhookStandIn(
        lambda user, password: registries.set_user("basic", user, password),
        header=("X-Api-Key", "kubelet-hook-key"),
        lifetime=None,
    ).start()
    target = tenancy.namespace("hook")
    try:
        apply(
            cluster,
            ca_config_map(namespace, registries.ca_file),
            secret_object("hook-headers", namespace, **{"X-Api-Key": "kubelet-hook-key"}),
        )
        run_operator("--credentials-namespace", namespace)
        webhook = {
            "url": f"{hook.url}/credentials",
            "insecure": True,
            "headersSecretRef": {"name": "hook-headers"},
        }
        spec = {
            "server": basic.host,
            "auth": {"webhook": webhook},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaces": [target], "secretName": "hook"},
        }
        apply(cluster, registry_object(CLUSTER, "kubelet-hook", spec))
        wait_for_reason(cluster, CLUSTER, "kubelet-hook", "Ready", timeout=60)
        written = json.loads(
            base64.b64decode(secret(cluster, target, "hook")["data"][".dockerconfigjson"])
        )
        assert written["auths"][basic.host]["username"] == "webhook-user"
        wait_for(lambda: "hook" in pull_secret_refs(cluster, target), 30, "the reference")
        assert_runs(cluster, target, run_pod(cluster, node, target, image))
    finally:
        delete_cluster_registry(cluster, "kubelet-hook")
        hook.stop()
