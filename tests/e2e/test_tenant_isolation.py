"""Tenant isolation, acting as a namespaced tenant (user alice, allowed by RBAC to manage
OCIRegistry objects and Secrets in her namespace only) against the real API server and a
running operator (admin identity, as in a real install):

- what reaches across namespaces or to the operator's own identity is refused at apply;
- what only the operator can tell (an empty credentials block, an extends name, a webhook's
  resolved address) is refused by the operator with a precise condition, without a call;
- the operator never writes a Secret outside the namespace of the OCIRegistry it serves.

Also: the suite's secret-hygiene scan itself really finds a leaked value in an Event."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg.pullsecrets.plan import ANNOTATION_OWNER, LABEL_KIND, MANAGED_BY, MANAGER
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.hygiene import KNOWN_SECRETS, remember
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import WebhookStandIn
from tests.conftest import check_secret_hygiene

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    condition,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"
NAMESPACE_ONLY_CLUSTER = "namespace is only allowed on ClusterOCIRegistry"


def _role(namespace: str, user: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "registry-tenant", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["ocireg.dev"],
                    "resources": ["ociregistries", "ociregistries/status"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "registry-tenant", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "registry-tenant",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]


class Tenant:
    """kubectl as alice."""

    def __init__(self, cluster: ControlPlane, kubeconfig: Path, namespace: str) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def apply(self, *objects: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(
            "apply",
            "-f",
            "-",
            kubeconfig=self.kubeconfig,
            input=yaml.safe_dump_all(objects),
            check=False,
        )

    def registry(self, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.apply(registry_object(KIND, name, spec, self.namespace))


@pytest.fixture
def other_namespace(cluster: ControlPlane, namespace: str) -> Any:
    name = f"{namespace[:50]}-other"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def alice(cluster: ControlPlane, crds: None, namespace: str) -> Tenant:
    user = f"alice-{secrets.token_hex(3)}"
    apply(cluster, *_role(namespace, user))
    tenant = Tenant(cluster, cluster.kubeconfig_for_user(user), namespace)
    # RBAC is in force: alice can act in her namespace (the Role may take a moment).
    wait_for(
        lambda: cluster.kubectl(
            "auth", "can-i", "create", "ociregistries.ocireg.dev", "-n", namespace,
            kubeconfig=tenant.kubeconfig, check=False,
        ).stdout.strip() == "yes",
        30,
        "alice's Role to take effect",
    )  # fmt: skip
    return tenant


def test_tenant_cannot_reach_outside_her_namespace(
    cluster: ControlPlane,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    other_namespace: str,
    alice: Tenant,
) -> None:
    basic = registries.basic
    # Another team's namespace holds a working Secret and a base registry object.
    apply(
        cluster,
        secret_object("shared-creds", other_namespace, password=basic.password),
        registry_object(
            KIND,
            "corp-base",
            {
                "server": basic.host,
                "auth": {
                    "basic": {"secretRef": {"name": "shared-creds"}, "username": basic.username}
                },
            },
            other_namespace,
        ),
    )

    # RBAC: alice cannot touch the other namespace at all.
    denied = alice.apply(secret_object("planted", other_namespace, password="x" * 12))
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    # ---------------------------------------------------------------- refused at apply
    own = {"secretRef": {"name": "mine"}, "username": basic.username}
    table: list[tuple[str, dict[str, Any], str]] = [
        (
            "basic secretRef in another namespace",
            {
                "server": basic.host,
                "auth": {
                    "basic": {
                        "secretRef": {"name": "shared-creds", "namespace": other_namespace},
                        "username": basic.username,
                    }
                },
            },
            NAMESPACE_ONLY_CLUSTER,
        ),
        (
            "dockerConfig secretRef in another namespace",
            {
                "server": basic.host,
                "auth": {
                    "dockerConfig": {"secretRef": {"name": "x", "namespace": other_namespace}}
                },
            },
            NAMESPACE_ONLY_CLUSTER,
        ),
        (
            "CA bundle from another namespace",
            {
                "server": basic.host,
                "auth": {"basic": own},
                "tls": {"caBundleRef": {"configMap": "ca", "namespace": other_namespace}},
            },
            NAMESPACE_ONLY_CLUSTER,
        ),
        (
            "write into other namespaces",
            {
                "server": basic.host,
                "auth": {"basic": own},
                "targets": {"namespaces": [other_namespace]},
            },
            "namespaces is only allowed on ClusterOCIRegistry",
        ),
        (
            "write into namespaces by label",
            {"server": basic.host, "auth": {"basic": own}, "targets": {"namespaceSelector": {}}},
            "namespaceSelector is only allowed on ClusterOCIRegistry",
        ),
        (
            "ECR with the operator's own identity",
            {"server": "1.dkr.ecr.eu-west-1.amazonaws.com", "auth": {"ecr": {}}},
            "an OCIRegistry must set credentials",
        ),
        (
            "GCP with the operator's own identity",
            {"server": "europe-docker.pkg.dev", "auth": {"gcp": {}}},
            "an OCIRegistry must set credentials",
        ),
        (
            "ECR web identity of another namespace's ServiceAccount",
            {
                "server": "1.dkr.ecr.eu-west-1.amazonaws.com",
                "auth": {
                    "ecr": {
                        "roleArn": "arn:aws:iam::123456789012:role/x",
                        "credentials": {
                            "serviceAccountRef": {"name": "default", "namespace": other_namespace}
                        },
                    }
                },
            },
            NAMESPACE_ONLY_CLUSTER,
        ),
    ]
    for what, spec, message in table:
        refused = alice.registry("refused", spec)
        assert refused.returncode != 0, f"{what}: accepted"
        assert message in refused.stderr, f"{what}: {refused.stderr}"
    assert cluster.kubectl("get", "ociregistry", "refused", "-n", namespace, check=False).returncode

    # ---------------------------------------------------------------- refused by the operator
    # The registries' CA, put in alice's namespace by an admin.
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ca", "namespace": namespace},
            "data": {"ca.crt": registries.ca_file.read_text()},
        },
    )
    hook = WebhookStandIn(lambda user, password: None, ("X-Key", "k"), lifetime=None).start()
    try:
        # "own" is on the local registry (127.0.0.1, allowed); every other loopback address
        # stays refused, 127.0.0.2 included (all of 127.0.0.0/8 is local).
        run_operator(*ALLOW_LOCAL_REGISTRIES)
        mine = secret_object("mine", namespace, password=basic.password)
        assert alice.apply(mine).returncode == 0
        accepted = [
            ("ambient-ecr", {"server": "1.dkr.ecr.eu-west-1.amazonaws.com",
                             "auth": {"ecr": {"regions": ["eu-west-1"], "credentials": {}}}}),
            ("ambient-gcp", {"server": "europe-docker.pkg.dev",
                             "auth": {"gcp": {"credentials": {}}}}),
            ("borrowed-base", {"extends": "corp-base"}),
            ("hook-loopback", _webhook(f"http://127.0.0.2:{hook.port}/creds")),
            ("hook-nat64", _webhook(f"http://[64:ff9b::7f00:2]:{hook.port}/creds")),
            ("hook-6to4", _webhook(f"http://[2002:7f00:2::1]:{hook.port}/creds")),
            ("hook-metadata", _webhook("http://169.254.169.254/latest/meta-data/")),
            ("hook-private", _webhook("http://10.0.0.1/creds")),
            ("hook-ipv6-loopback", _webhook(f"http://[::1]:{hook.port}/creds")),
            ("hook-mapped", _webhook("http://[::ffff:169.254.169.254]/")),
            ("own", {"server": basic.host, "auth": {"basic": own},
                     "tls": {"caBundleRef": {"configMap": "ca"}},
                     "targets": {"secretName": "own-pull"}}),
        ]  # fmt: skip
        for name, spec in accepted:
            applied = alice.registry(name, spec)
            assert applied.returncode == 0, f"{name}: {applied.stderr}"

        for name in ("ambient-ecr", "ambient-gcp"):
            refused = wait_for_reason(cluster, KIND, name, "AmbientIdentityNotAllowed", namespace)
            assert refused["status"] == "False"
        base = wait_for_reason(cluster, KIND, "borrowed-base", "BaseNotFound", namespace)
        assert "corp-base" in base["message"]
        for name in ("hook-loopback", "hook-nat64", "hook-6to4", "hook-metadata",
                     "hook-private", "hook-ipv6-loopback", "hook-mapped"):  # fmt: skip
            wait_for_reason(cluster, KIND, name, "WebhookAddressNotAllowed", namespace)
        # Refusals only the tenant can fix are Stalled, not retried in a hot loop.
        for name in ("ambient-ecr", "borrowed-base", "hook-metadata"):
            assert condition(cluster, KIND, name, "Stalled", namespace)["status"] == "True", name
        assert not hook.calls, "a tenant's webhook reached a loopback address"
        wait_for_reason(cluster, KIND, "own", "Ready", namespace)
        assert secret(cluster, namespace, "own-pull") is not None

        # Nothing alice made was written anywhere but her namespace, and nothing of the
        # other team's was written into it.
        managed = cluster.get_json(
            "secrets", "-A", "-l", f"{MANAGED_BY}={MANAGER},{LABEL_KIND}={KIND}"
        )["items"]
        alices = [
            (s["metadata"]["namespace"], s["metadata"]["name"])
            for s in managed
            if s["metadata"]["annotations"][ANNOTATION_OWNER].startswith(f"{KIND}/{namespace}/")
        ]
        assert alices == [(namespace, "own-pull")]
        for written in managed:
            # Cluster-wide: every OCIRegistry's Secret lies in that OCIRegistry's namespace.
            owner = written["metadata"]["annotations"][ANNOTATION_OWNER]
            assert owner.split("/")[1] == written["metadata"]["namespace"], owner
        assert secret(cluster, other_namespace, "own-pull") is None
        assert not cluster.get_json(
            "secrets", "-n", other_namespace, "-l", f"{MANAGED_BY}={MANAGER}"
        )["items"]
        # The other team's credentials were never read into a status or Event of alice's.
        status = json.dumps(cluster.get_json("ociregistries", "-n", namespace)["items"])
        assert "shared-creds" not in status
    finally:
        hook.stop()


def _webhook(url: str) -> dict[str, Any]:
    return {
        "server": "registry.example.com",
        "auth": {"webhook": {"url": url, "insecure": True}},
    }


def test_hygiene_scan_finds_a_leaked_value_in_an_event(
    cluster: ControlPlane, registries: LocalRegistries, run_operator, namespace: str
) -> None:
    """The suite-wide scan (tests/conftest.py) is only worth something if it can fail: a
    known value planted in an Event is found, by label, and the registries' passwords are
    among the values looked for."""
    operator = run_operator()
    assert any("registry basic password" in label for label in KNOWN_SECRETS.labels())
    canary = f"canary-{secrets.token_urlsafe(12)}"
    remember(canary, "hygiene canary")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "leaky", "namespace": namespace},
        "involvedObject": {
            "kind": "ServiceAccount",
            "name": "default",
            "namespace": namespace,
            "apiVersion": "v1",
        },
        "reason": "Leaky",
        "message": f"oops: {canary}",
        "type": "Warning",
    }
    created = cluster.kubectl("apply", "-f", "-", input=json.dumps(event), check=False)
    assert created.returncode == 0, created.stderr
    try:
        leaks = check_secret_hygiene(cluster, [operator])
        assert [(leak.label, leak.where) for leak in leaks] == [
            ("hygiene canary", f"Event {namespace}/leaky")
        ]
    finally:
        # Cleaned up, so this test's own teardown scan passes.
        cluster.kubectl("delete", "event", "leaky", "-n", namespace)


def test_tenant_argo_cd_secret_stays_in_her_namespace(
    cluster: ControlPlane,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    other_namespace: str,
    alice: Tenant,
) -> None:
    """An Argo CD repository Secret is a way into Argo CD: a tenant may not aim hers at Argo
    CD's namespace (the API server refuses targets.argoCD.namespace on an OCIRegistry), and
    the one she may have is written into her own namespace only (for an Argo CD running
    there), owned by her object; Argo CD's namespace gets nothing of hers."""
    basic = registries.basic
    argocd = other_namespace  # where the platform's Argo CD runs
    alice_secret = secret_object("mine", namespace, password=basic.password)
    assert alice.apply(alice_secret).returncode == 0
    spec: dict[str, Any] = {
        "server": basic.host,
        "auth": {"basic": {"secretRef": {"name": "mine"}, "username": basic.username}},
        "tls": {"insecureSkipVerify": True},
        "targets": {"argoCD": {"namespace": argocd}},
    }
    refused = alice.registry("helm", spec)
    assert refused.returncode != 0
    assert NAMESPACE_ONLY_CLUSTER in refused.stderr, refused.stderr
    # Nor through `extends`: a base object is an OCIRegistry too, refused by the same rule.
    assert alice.registry("helm-base", spec).returncode != 0

    run_operator(*ALLOW_LOCAL_REGISTRIES)
    spec["targets"] = {"argoCD": {"secretType": "repository"}}
    assert alice.registry("helm", spec).returncode == 0
    wait_for_reason(cluster, KIND, "helm", "Ready", namespace, timeout=60)
    written = wait_for(lambda: secret(cluster, namespace, "helm-argocd"), 30, "her Argo CD Secret")
    uid = cluster.get_json("ociregistry", "helm", "-n", namespace)["metadata"]["uid"]
    assert written["metadata"]["ownerReferences"][0]["uid"] == uid
    assert written["metadata"]["labels"]["argocd.argoproj.io/secret-type"] == "repository"
    everywhere = cluster.get_json("secrets", "-A", "-l", f"ocireg.dev/registry-uid={uid}")
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in everywhere["items"]} == {
        (namespace, "helm"),
        (namespace, "helm-argocd"),
    }
    assert cluster.get_json("secrets", "-n", argocd)["items"] == []
