from __future__ import annotations

import base64
import json

import pytest

from ocireg.api.credential import Credential
from ocireg.api.spec import Format, LabelSelector, RegistrySpec, Targets
from ocireg.pullsecrets.plan import (
    ANNOTATION_SA_REFS,
    DOCKER_HUB_KEY,
    RegistryRef,
    argocd_namespace,
    argocd_secrets,
    desired_secrets,
    docker_config_json,
    namespace_selected,
    secret_decision,
    service_account_patch,
    service_account_selected,
)

CLUSTER = RegistryRef("ClusterOCIRegistry", "shared", uid="u1")
TENANT = RegistryRef("OCIRegistry", "mine", namespace="team-a", uid="u2")
BASIC = Credential("basic", ("registry.example.com:5000",), "robot$ci", "s3cret")


def _decoded(secret) -> dict:
    return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}


def test_docker_config_for_basic_credentials() -> None:
    config = json.loads(docker_config_json(BASIC))
    entry = config["auths"]["registry.example.com:5000"]
    assert entry["username"] == "robot$ci"
    assert entry["password"] == "s3cret"
    assert base64.b64decode(entry["auth"]).decode() == "robot$ci:s3cret"


def test_docker_hub_uses_its_legacy_key() -> None:
    config = json.loads(docker_config_json(Credential("basic", ("docker.io",), "me", "pat")))
    assert list(config["auths"]) == [DOCKER_HUB_KEY]


def test_tokens_are_written_as_clients_expect() -> None:
    identity = json.loads(docker_config_json(Credential("token", ("r.io",), identity_token="t")))
    assert identity["auths"]["r.io"]["identitytoken"] == "t"
    assert base64.b64decode(identity["auths"]["r.io"]["auth"]).decode() == "<token>:"
    registry = json.loads(docker_config_json(Credential("token", ("r.io",), registry_token="b")))
    assert registry["auths"]["r.io"] == {"registrytoken": "b"}


def test_all_formats() -> None:
    targets = Targets(secret_name="pull", formats=list(Format))
    secrets = desired_secrets(CLUSTER, targets, BASIC, "team-b")
    assert [(s.name, s.type) for s in secrets] == [
        ("pull", "kubernetes.io/dockerconfigjson"),
        ("pull-basic-auth", "kubernetes.io/basic-auth"),
        ("pull-env", "Opaque"),
    ]
    assert _decoded(secrets[1]) == {"username": "robot$ci", "password": "s3cret"}
    assert _decoded(secrets[2])["OCI_REGISTRY_PASSWORD"] == "s3cret"
    assert all(s.owner_references == [] for s in secrets)  # cross-namespace: no owner


def test_same_namespace_copy_is_owned() -> None:
    (secret,) = desired_secrets(TENANT, Targets(), BASIC, "team-a")
    assert secret.name == "mine"
    assert secret.owner_references[0]["uid"] == "u2"


def test_secret_decisions() -> None:
    (desired,) = desired_secrets(CLUSTER, Targets(), BASIC, "ns")
    assert secret_decision(desired, None) == "create"
    observed = desired.body()
    assert secret_decision(desired, observed) == "unchanged"
    assert secret_decision(desired, {**observed, "data": {".dockerconfigjson": "e30="}}) == "update"
    unmanaged = {**observed, "metadata": {"name": "shared", "labels": {}}}
    assert secret_decision(desired, unmanaged) == "conflict"
    other = desired_secrets(
        RegistryRef("ClusterOCIRegistry", "other"), Targets(secret_name="shared"), BASIC, "ns"
    )[0].body()
    assert secret_decision(desired, other) == "conflict"


@pytest.mark.parametrize(
    ("targets", "namespace", "labels", "expected"),
    [
        (Targets(namespaces=["team-*"]), "team-a", {}, True),
        (Targets(namespaces=["team-*"]), "kube-system", {}, False),
        (Targets(namespace_selector=LabelSelector()), "anything", {}, True),
        (
            Targets(namespace_selector=LabelSelector(), exclude_namespaces=["kube-*"]),
            "kube-public",
            {},
            False,
        ),
        (
            Targets(namespace_selector=LabelSelector(match_labels={"pull": "yes"})),
            "a",
            {"pull": "yes"},
            True,
        ),
        (
            Targets(namespace_selector=LabelSelector(match_labels={"pull": "yes"})),
            "a",
            {"pull": "no"},
            False,
        ),
        (
            Targets(
                namespace_selector=LabelSelector.model_validate(
                    {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}
                )
            ),
            "a",
            {"tier": "y"},
            True,
        ),
        (Targets(), "a", {}, False),  # a cluster registry selects nothing by default
    ],
)
def test_namespace_selection(
    targets: Targets, namespace: str, labels: dict, expected: bool
) -> None:
    assert namespace_selected(CLUSTER, targets, namespace, labels) is expected


def test_terminating_and_foreign_namespaces_are_not_selected() -> None:
    everything = Targets(namespace_selector=LabelSelector())
    assert not namespace_selected(CLUSTER, everything, "a", {}, phase="Terminating")
    assert namespace_selected(TENANT, Targets(), "team-a", {})
    assert not namespace_selected(TENANT, Targets(), "team-b", {})


def test_service_account_selection() -> None:
    assert service_account_selected(Targets(), "default")
    assert not service_account_selected(Targets(), "builder")
    assert service_account_selected(Targets(service_accounts=["*"]), "builder")
    assert not service_account_selected(Targets(formats=[Format.env]), "default")


def test_service_account_patches_touch_only_our_reference() -> None:
    sa = {
        "metadata": {"name": "default", "resourceVersion": "7"},
        "imagePullSecrets": [{"name": "users-own"}],
    }
    add = service_account_patch(sa, "pull", want=True)
    # The list is atomic: the patch carries all of it, guarded by the resourceVersion.
    assert add == {
        "metadata": {"resourceVersion": "7", "annotations": {ANNOTATION_SA_REFS: "pull"}},
        "imagePullSecrets": [{"name": "users-own"}, {"name": "pull"}],
    }
    patched = {
        "metadata": {
            "name": "default",
            "resourceVersion": "8",
            "annotations": {ANNOTATION_SA_REFS: "pull"},
        },
        "imagePullSecrets": [{"name": "users-own"}, {"name": "pull"}],
    }
    assert service_account_patch(patched, "pull", want=True) is None
    remove = service_account_patch(patched, "pull", want=False)
    assert remove == {
        "metadata": {"resourceVersion": "8", "annotations": {ANNOTATION_SA_REFS: None}},
        "imagePullSecrets": [{"name": "users-own"}],
    }
    # A reference the user added by hand is never removed.
    assert service_account_patch(sa, "users-own", want=False) is None


def test_a_reference_someone_else_added_is_left_to_them() -> None:
    sa = {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "pull"}]}
    assert service_account_patch(sa, "pull", want=True) is None
    assert service_account_patch(sa, "pull", want=False) is None


def test_removing_the_last_reference_drops_the_list() -> None:
    sa = {
        "metadata": {"name": "default", "annotations": {ANNOTATION_SA_REFS: "a,pull"}},
        "imagePullSecrets": [{"name": "pull"}],
    }
    patch = service_account_patch(sa, "pull", want=False)
    assert patch is not None
    assert patch["imagePullSecrets"] is None
    assert patch["metadata"]["annotations"][ANNOTATION_SA_REFS] == "a"


def test_long_names_fit_in_a_label() -> None:
    ref = RegistryRef("ClusterOCIRegistry", "x" * 200)
    assert len(ref.label_value) <= 63
    assert ref.label_value != RegistryRef("ClusterOCIRegistry", "x" * 199).label_value


# -- Argo CD repository credentials -------------------------------------------------------


def _spec(**fields) -> RegistrySpec:
    return RegistrySpec.model_validate(
        {"server": "registry.example.com:5000", "auth": {"anonymous": {}}, **fields}
    )


def test_argocd_secret_holds_what_argo_cd_reads_for_a_helm_oci_repository() -> None:
    """Argo CD's util/db (secretToRepoCred, secretToRepository) reads url, type, enableOCI,
    username and password; its repo-server runs `helm pull oci://<url>/<chart>`, so url has
    no scheme."""
    spec = _spec(repositoryPrefix="charts", targets={"argoCD": {}})
    (secret,) = argocd_secrets(CLUSTER, spec, BASIC, "argocd")
    assert secret.name == "shared-argocd"
    assert secret.type == "Opaque"
    assert secret.labels["argocd.argoproj.io/secret-type"] == "repo-creds"
    assert secret.labels["ocireg.dev/registry-uid"] == "u1"
    assert _decoded(secret) == {
        "type": "helm",
        "enableOCI": "true",
        "url": "registry.example.com:5000/charts",
        "username": "robot$ci",
        "password": "s3cret",
    }
    assert secret_decision(secret, secret.body()) == "unchanged"
    retyped = _spec(targets={"argoCD": {"secretType": "repository", "path": "a/b"}})
    (other,) = argocd_secrets(CLUSTER, retyped, BASIC, "argocd")
    assert _decoded(other)["url"] == "registry.example.com:5000/a/b"
    assert secret_decision(other, secret.body()) == "update"  # the type label changes


def test_argocd_secret_per_host_with_that_hosts_password() -> None:
    ecr = Credential(
        "ecr",
        ("1.dkr.ecr.us-east-1.amazonaws.com", "1.dkr.ecr.eu-west-1.amazonaws.com"),
        "AWS",
        "pw-us",
        passwords=(("1.dkr.ecr.eu-west-1.amazonaws.com", "pw-eu"),),
    )
    secrets = argocd_secrets(CLUSTER, _spec(targets={"argoCD": {}}), ecr, "argocd")
    assert [s.name for s in secrets] == ["shared-argocd", "shared-argocd-2"]
    assert [_decoded(s)["password"] for s in secrets] == ["pw-us", "pw-eu"]
    assert {_decoded(s)["username"] for s in secrets} == {"AWS"}
    hub = Credential("basic", ("docker.io",), "me", "pat")
    (secret,) = argocd_secrets(CLUSTER, _spec(targets={"argoCD": {"path": "me"}}), hub, "x")
    assert _decoded(secret)["url"] == "registry-1.docker.io/me"


def test_argocd_namespace_a_tenant_writes_at_home_only() -> None:
    targets = Targets.model_validate({"argoCD": {"namespace": "argocd"}})
    assert argocd_namespace(TENANT, targets) == "team-a"
    assert argocd_namespace(CLUSTER, targets) == "argocd"
    assert argocd_namespace(CLUSTER, Targets.model_validate({"argoCD": {}})) == "argocd"
    assert argocd_namespace(CLUSTER, Targets()) is None
    assert argocd_secrets(CLUSTER, _spec(), BASIC, "argocd") == []
