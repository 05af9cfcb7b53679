"""The local control plane is the real thing: schema validation, controllers, RBAC, tokens."""

from __future__ import annotations

import base64
import json
import time

import pytest
import yaml

from ocireg_devenv.controlplane import ControlPlane

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.ocireg.dev"},
    "spec": {
        "group": "smoke.ocireg.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "server": {"type": "string"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.server) || !self.server.contains('://')",
                                        "message": "server is host[:port] without a scheme",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_server_reports_the_stamped_version(cluster: ControlPlane) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"
    assert version["clientVersion"]["gitVersion"] == "v1.36.3"


@pytest.fixture(scope="module")
def widget_crd(cluster: ControlPlane) -> str:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.smoke.ocireg.dev"
    )
    return "widgets.smoke.ocireg.dev"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"size": 0}, "spec.size in body should be greater than or equal to 1"),
        ({"size": "big"}, 'spec.size: Invalid value: "string"'),
        ({}, "spec.size: Required value"),
        ({"size": 1, "server": "https://example.com"}, "server is host[:port] without a scheme"),
    ],
    ids=["below-minimum", "wrong-type", "missing-required", "cel-rule"],
)
def test_structural_schema_rejects_invalid_objects(
    cluster: ControlPlane, widget_crd: str, namespace: str, spec: dict, message: str
) -> None:
    obj = {
        "apiVersion": "smoke.ocireg.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec,
    }
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert cluster.kubectl("get", "widgets", "-n", namespace, "-o", "name").stdout == ""


def test_valid_object_is_stored_and_unknown_fields_refused(
    cluster: ControlPlane, widget_crd: str, namespace: str
) -> None:
    obj = {
        "apiVersion": "smoke.ocireg.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "good", "namespace": namespace},
        "spec": {"size": 3, "server": "registry.example.com:5000", "colour": "red"},
    }
    # kubectl asks for strict server-side field validation: a typo is an error, not a loss.
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert refused.returncode != 0
    assert 'unknown field "spec.colour"' in refused.stderr
    del obj["spec"]["colour"]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    stored = cluster.get_json("widget", "good", "-n", namespace)
    assert stored["spec"] == {"size": 3, "server": "registry.example.com:5000"}


def test_new_namespace_gets_default_service_account(cluster: ControlPlane, namespace: str) -> None:
    _wait(
        lambda: (
            cluster.kubectl(
                "get", "serviceaccount", "default", "-n", namespace, check=False
            ).returncode
            == 0
        ),
        30,
        "the default ServiceAccount",
    )


def test_deleted_namespace_goes_away_with_its_content(cluster: ControlPlane) -> None:
    cluster.kubectl("create", "namespace", "smoke-doomed")
    cluster.kubectl("create", "configmap", "cargo", "-n", "smoke-doomed", "--from-literal=a=b")
    cluster.kubectl("delete", "namespace", "smoke-doomed", "--wait=false")
    _wait(
        lambda: cluster.kubectl("get", "namespace", "smoke-doomed", check=False).returncode != 0,
        90,
        "the namespace to be deleted by the namespace controller",
    )


def test_garbage_collector_removes_owned_objects(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner_uid = cluster.get_json("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(owned))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    _wait(
        lambda: (
            cluster.kubectl("get", "configmap", "owned", "-n", namespace, check=False).returncode
            != 0
        ),
        60,
        "the garbage collector to remove the owned ConfigMap",
    )


def _jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_service_account_token_request(cluster: ControlPlane, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "puller", "-n", namespace)
    token = cluster.kubectl(
        "create",
        "token",
        "puller",
        "-n",
        namespace,
        "--audience=sts.amazonaws.com",
        "--duration=10m",
    ).stdout.strip()
    claims = _jwt_claims(token)
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["sub"] == f"system:serviceaccount:{namespace}:puller"
    assert 590 <= claims["exp"] - claims["iat"] <= 600

    # A token for the API server's own audience authenticates as the ServiceAccount.
    kubeconfig = cluster.kubeconfig_for_service_account(namespace, "puller")
    whoami = json.loads(
        cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    )
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:puller"


def test_rbac_is_enforced_for_a_restricted_user(cluster: ControlPlane, namespace: str) -> None:
    kubeconfig = cluster.kubeconfig_for_user("tenant-alice", ["tenants"])
    denied = cluster.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "secret-reader", "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "tenants-read", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "secret-reader",
        },
        "subjects": [{"kind": "Group", "name": "tenants", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))
    _wait(
        lambda: (
            cluster.kubectl(
                "get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
            ).returncode
            == 0
        ),
        30,
        "RBAC to allow the list",
    )
    # Still nothing outside the namespace the role was granted in.
    assert (
        cluster.kubectl(
            "get", "secrets", "-n", "default", kubeconfig=kubeconfig, check=False
        ).returncode
        != 0
    )
