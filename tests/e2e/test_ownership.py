"""Ownership on the real control plane: a registry object only ever overwrites, deletes or
strips the references of its own copies (ocireg.api.ownership), whoever else has a registry
object of the same name.

- two tenants, each with an `OCIRegistry ghcr`: deleting one leaves the other's Secret (same
  resourceVersion) and ServiceAccount reference alone, for a window after the deletion;
- a `ClusterOCIRegistry ghcr` next to a tenant's `ghcr` in a namespace it targets: the
  second reports SecretConflict naming the first, and deleting either never deletes the
  other's Secret;
- an upgrade: Secrets labelled by the release before the uid label are taken over by their
  object, and one in another tenant's namespace is left to that tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocireg.api.ownership import (
    ANNOTATION_OWNER,
    LABEL_KIND,
    LABEL_REGISTRY,
    LABEL_UID,
    MANAGED_BY,
    MANAGER,
)
from ocireg.cli import build_parser
from ocireg.pullsecrets.plan import ANNOTATION_SA_REFS
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    apply,
    ca_config_map,
    condition,
    pull_secret_refs,
    registry,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

TENANT = "OCIRegistry"
CLUSTER = "ClusterOCIRegistry"
NAME = "ghcr"
# How long the untouched side is watched after a deletion has completed: the watch-fed jobs
# act within a second, a list-based reconcile within a tick (10 s).
WINDOW = 15.0
ROOT = Path(__file__).resolve().parents[2]


def _loopback_allowed() -> list[str]:
    # Tenants' registries here are on 127.0.0.1, which the tenant egress policy refuses
    # unless the operator allows it.
    allowed = ["--egress-allowed-cidr", "127.0.0.0/8"]
    try:
        build_parser().parse_args(["run", *allowed])
    except SystemExit:  # a release without the egress policy
        return []
    return allowed


@pytest.fixture
def namespaces(cluster: ControlPlane, namespace: str) -> Iterator[Callable[[str], str]]:
    """Make more namespaces named after the test's; all deleted afterwards."""
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{namespace}-{suffix}"
        cluster.kubectl("create", "namespace", name)
        wait_for(
            lambda: (
                cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0
            ),
            30,
            f"the default ServiceAccount of {name}",
        )
        made.append(name)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def _spec(registries: LocalRegistries, **more: Any) -> dict[str, Any]:
    return {
        "server": registries.basic.host,
        "auth": {"basic": {"secretRef": {"name": "login"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        **more,
    }


def _credentials(registries: LocalRegistries, namespace: str) -> list[dict[str, Any]]:
    basic = registries.basic
    return [
        secret_object("login", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file),
    ]


def _tenant(cluster: ControlPlane, registries: LocalRegistries, namespace: str) -> None:
    apply(
        cluster,
        *_credentials(registries, namespace),
        registry_object(TENANT, NAME, _spec(registries), namespace),
    )


def _version(cluster: ControlPlane, kind: str, name: str, namespace: str) -> str | None:
    found = cluster.kubectl(
        "get",
        kind,
        name,
        "-n",
        namespace,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def _written(cluster: ControlPlane, namespace: str) -> tuple[str, str]:
    """(Secret resourceVersion, ServiceAccount resourceVersion) once both are in place."""
    wait_for(lambda: secret(cluster, namespace, NAME), 30, f"Secret {namespace}/{NAME}")
    wait_for(
        lambda: pull_secret_refs(cluster, namespace) == [NAME],
        30,
        f"the default ServiceAccount of {namespace} to refer to {NAME}",
    )
    versions = (
        _version(cluster, "secret", NAME, namespace),
        _version(cluster, "sa", "default", namespace),
    )
    assert None not in versions
    return versions  # type: ignore[return-value]


def _untouched(cluster: ControlPlane, namespace: str, before: tuple[str, str]) -> None:
    """For WINDOW seconds, the Secret and the ServiceAccount of ``namespace`` stay exactly as
    they were: the same resourceVersions (a delete and re-create, or a reference stripped and
    put back, would each change one), the reference always there."""
    deadline = time.monotonic() + WINDOW
    while time.monotonic() < deadline:
        now = (
            _version(cluster, "secret", NAME, namespace),
            _version(cluster, "sa", "default", namespace),
        )
        assert now == before, f"{namespace}: (Secret, ServiceAccount) versions {before} -> {now}"
        assert pull_secret_refs(cluster, namespace) == [NAME]
        time.sleep(0.5)


def _delete(cluster: ControlPlane, kind: str, namespace: str | None = None) -> None:
    where = ["-n", namespace] if namespace else []
    cluster.kubectl("delete", kind.lower(), NAME, *where, "--wait=true", "--timeout=60s")


def _gone(cluster: ControlPlane, namespace: str) -> None:
    wait_for(lambda: secret(cluster, namespace, NAME) is None, 30, f"{namespace}/{NAME} removed")
    wait_for(
        lambda: pull_secret_refs(cluster, namespace) == [],
        30,
        f"the reference in {namespace} removed",
    )


def test_deleting_one_tenants_registry_leaves_the_other_tenants_of_the_same_name(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator: Callable[..., OperatorProcess],
    namespaces: Callable[[str], str],
) -> None:
    team_a, team_b = namespaces("a"), namespaces("b")
    run_operator(*_loopback_allowed())
    for team in (team_a, team_b):
        _tenant(cluster, registries, team)
    for team in (team_a, team_b):
        wait_for_reason(cluster, TENANT, NAME, "Ready", team)
    _written(cluster, team_a)
    before = _written(cluster, team_b)
    uid_b = registry(cluster, TENANT, NAME, team_b)["metadata"]["uid"]
    labels = secret(cluster, team_b, NAME)["metadata"]["labels"]  # type: ignore[index]
    assert (labels[LABEL_KIND], labels[LABEL_UID]) == (TENANT, uid_b)

    _delete(cluster, TENANT, team_a)
    _gone(cluster, team_a)
    _untouched(cluster, team_b, before)
    assert condition(cluster, TENANT, NAME, "Ready", team_b)["status"] == "True"


def test_a_cluster_registry_next_to_a_tenants_of_the_same_name(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator: Callable[..., OperatorProcess],
    namespace: str,
    namespaces: Callable[[str], str],
) -> None:
    team, shared = namespaces("tenant"), namespaces("shared")
    apply(cluster, *_credentials(registries, namespace))  # the credentials namespace
    run_operator("--credentials-namespace", namespace, *_loopback_allowed())
    _tenant(cluster, registries, team)
    wait_for_reason(cluster, TENANT, NAME, "Ready", team)
    tenants = _written(cluster, team)
    platform = registry_object(
        CLUSTER, NAME, _spec(registries, targets={"namespaces": [team, shared]})
    )
    try:
        apply(cluster, platform)
        found = wait_for_reason(cluster, CLUSTER, NAME, "SecretConflict", type_="TargetsSynced")
        assert team in found["message"]
        failed = registry(cluster, CLUSTER, NAME)["status"]["targets"]["failed"]
        assert [f["namespace"] for f in failed] == [team]
        assert f"belongs to {TENANT}/{team}/{NAME}" in failed[0]["message"]
        platforms = _written(cluster, shared)
        assert _version(cluster, "secret", NAME, team) == tenants[0]  # never overwritten

        # Deleting the cluster object removes its own copy only.
        _delete(cluster, CLUSTER)
        _gone(cluster, shared)
        _untouched(cluster, team, tenants)

        # Deleting the tenant's leaves the cluster object's copies alone.
        apply(cluster, platform)
        wait_for_reason(cluster, CLUSTER, NAME, "SecretConflict", type_="TargetsSynced")
        platforms = _written(cluster, shared)
        _delete(cluster, TENANT, team)
        _untouched(cluster, shared, platforms)
        # The name is free in the tenant's namespace now: the cluster object writes its own
        # there (status.targets catches up at its next resync).
        wait_for(
            lambda: (
                (found := secret(cluster, team, NAME))
                and found["metadata"]["labels"].get(LABEL_KIND) == CLUSTER
            ),
            30,
            f"the cluster object's Secret in {team}",
        )
    finally:
        cluster.kubectl("delete", "clusterociregistry", NAME, "--ignore-not-found")


def _old_style(namespace: str, owner: str) -> dict[str, Any]:
    """A pull secret as the release before the uid label wrote it for ``owner``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            "labels": {MANAGED_BY: MANAGER, LABEL_REGISTRY: NAME, LABEL_KIND: TENANT},
            "annotations": {ANNOTATION_OWNER: owner},
        },
        "stringData": {".dockerconfigjson": '{"auths":{}}'},
    }


def test_secrets_of_the_previous_release_are_taken_over_by_their_object_only(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator: Callable[..., OperatorProcess],
    namespaces: Callable[[str], str],
) -> None:
    team_a, team_b = namespaces("a"), namespaces("b")
    # What the previous release left: team-a's and team-b's `ghcr` copies, and the default
    # ServiceAccounts' references recorded as ours. Only team-a's object exists from now on.
    for team in (team_a, team_b):
        apply(cluster, _old_style(team, f"{TENANT}/{team}/{NAME}"))
        cluster.kubectl(
            "patch", "sa", "default", "-n", team, "--type=merge", "-p",
            f'{{"metadata":{{"annotations":{{"{ANNOTATION_SA_REFS}":"{NAME}"}}}},'
            f'"imagePullSecrets":[{{"name":"{NAME}"}}]}}',
        )  # fmt: skip
    old_a = secret(cluster, team_a, NAME)
    assert old_a is not None
    before_b = _written(cluster, team_b)

    run_operator(*_loopback_allowed())
    _tenant(cluster, registries, team_a)
    wait_for_reason(cluster, TENANT, NAME, "Ready", team_a)
    uid = registry(cluster, TENANT, NAME, team_a)["metadata"]["uid"]
    taken = wait_for(
        lambda: (s := secret(cluster, team_a, NAME)) and LABEL_UID in s["metadata"]["labels"] and s,
        30,
        "the old Secret relabelled",
    )
    assert taken["metadata"]["uid"] == old_a["metadata"]["uid"]  # updated in place
    assert taken["metadata"]["labels"][LABEL_UID] == uid
    assert taken["data"] != old_a["data"]  # and given the real credentials
    assert condition(cluster, TENANT, NAME, "TargetsSynced", team_a)["reason"] == "Synced"
    assert pull_secret_refs(cluster, team_a) == [NAME]  # one reference, not two

    # Deleting team-a's object removes the copy it took over, never team-b's.
    _delete(cluster, TENANT, team_a)
    _gone(cluster, team_a)
    _untouched(cluster, team_b, before_b)
