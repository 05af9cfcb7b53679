"""The one definition of "ours" (ocireg.api.ownership.claim) and the decisions built on it:
which Secrets a registry object may overwrite, take over or delete, for two tenants with
registries of the same name, a cluster registry next to a tenant's, an upgrade from the
labels of the release before the uid label, and an object deleted and re-created."""

from __future__ import annotations

import pytest

from ocireg.api import ownership
from ocireg.api.credential import Credential
from ocireg.api.ownership import Claim, RegistryRef, claim
from ocireg.api.spec import Targets
from ocireg.pullsecrets import plan

A = RegistryRef("OCIRegistry", "ghcr", "team-a", "uid-a")
B = RegistryRef("OCIRegistry", "ghcr", "team-b", "uid-b")
CLUSTER = RegistryRef("ClusterOCIRegistry", "ghcr", None, "uid-c")
OTHER_CLUSTER = RegistryRef("ClusterOCIRegistry", "quay", None, "uid-q")
BASIC = Credential("basic", ("ghcr.io",), "robot", "s3cret")


def written_for(ref: RegistryRef) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) as ocireg writes them for ``ref`` today."""
    return ref.labels(), ref.annotations()


def written_by_the_old_release(ref: RegistryRef) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) as the release before the uid label wrote them."""
    labels = {
        ownership.MANAGED_BY: ownership.MANAGER,
        ownership.LABEL_REGISTRY: ref.label_value,
        ownership.LABEL_KIND: ref.kind,
    }
    return labels, {ownership.ANNOTATION_OWNER: ref.display}


def test_labels_name_the_owner_exactly_and_fit() -> None:
    long = RegistryRef("OCIRegistry", "r" * 253, "n" * 63, "0" * 36)
    labels = long.labels()
    assert labels[ownership.LABEL_UID] == "0" * 36
    assert labels[ownership.LABEL_KIND] == "OCIRegistry"
    assert all(len(v) <= 63 for v in labels.values())
    # The full name is in the annotation, for people.
    assert long.annotations()[ownership.ANNOTATION_OWNER] == f"OCIRegistry/{'n' * 63}/{'r' * 253}"
    # What the Secret watch selects is what every object ocireg writes carries.
    key, value = ownership.MANAGED_SELECTOR.split("=")
    assert labels[key] == value


def test_two_tenants_registries_of_the_same_name_never_own_each_others() -> None:
    labels, annotations = written_for(B)
    assert claim(B, "team-b", labels, annotations) is Claim.OURS
    assert claim(A, "team-b", labels, annotations) is Claim.FOREIGN
    # A's labels copied onto a Secret in team-b (by hand, or forged by team-b): A still
    # owns nothing outside team-a.
    labels, annotations = written_for(A)
    assert claim(A, "team-b", labels, annotations) is Claim.FOREIGN
    assert claim(B, "team-b", labels, annotations) is Claim.FOREIGN


def test_a_cluster_registry_and_a_tenant_registry_of_the_same_name() -> None:
    labels, annotations = written_for(A)
    assert claim(CLUSTER, "team-a", labels, annotations) is Claim.FOREIGN
    labels, annotations = written_for(CLUSTER)
    assert claim(CLUSTER, "team-a", labels, annotations) is Claim.OURS
    assert claim(A, "team-a", labels, annotations) is Claim.FOREIGN
    assert claim(OTHER_CLUSTER, "team-a", labels, annotations) is Claim.FOREIGN


def test_what_ocireg_did_not_write_is_never_ours() -> None:
    assert claim(A, "team-a", {}, {}) is Claim.UNMANAGED
    labels = {**A.labels(), ownership.MANAGED_BY: "helm"}
    assert claim(A, "team-a", labels, A.annotations()) is Claim.UNMANAGED
    assert not Claim.UNMANAGED.mine
    assert not Claim.FOREIGN.mine


@pytest.mark.parametrize("ref", [A, CLUSTER])
def test_a_secret_of_the_old_release_is_taken_over_by_its_object_only(ref: RegistryRef) -> None:
    labels, annotations = written_by_the_old_release(ref)
    namespace = ref.namespace or "team-x"
    assert claim(ref, namespace, labels, annotations) is Claim.ADOPT
    assert Claim.ADOPT.mine
    # Without the owner annotation the labels and the namespace still say whose it is.
    assert claim(ref, namespace, labels, {}) is Claim.ADOPT
    for other in (B, CLUSTER, OTHER_CLUSTER, A):
        if other != ref:
            assert claim(other, namespace, labels, annotations) is Claim.FOREIGN


def test_an_old_tenant_copy_belongs_to_the_object_in_its_namespace() -> None:
    # The old labels of team-b's "ghcr" are the same as team-a's: the namespace decides.
    labels, annotations = written_by_the_old_release(B)
    assert claim(B, "team-b", labels, annotations) is Claim.ADOPT
    assert claim(A, "team-b", labels, annotations) is Claim.FOREIGN
    assert claim(A, "team-b", labels, {}) is Claim.FOREIGN
    # An old-style copy in team-a that says it is team-b's is nobody's to take.
    assert claim(A, "team-a", labels, annotations) is Claim.FOREIGN


def test_a_recreated_object_takes_over_its_predecessors_copies_only() -> None:
    old_a = RegistryRef("OCIRegistry", "ghcr", "team-a", "uid-a-before")
    labels, annotations = written_for(old_a)
    assert claim(A, "team-a", labels, annotations) is Claim.ADOPT
    # ... unless that uid is a live object (the labels were copied by hand).
    assert claim(A, "team-a", labels, annotations, live={"uid-a-before"}) is Claim.FOREIGN
    # A live other object's copy, even under the same name elsewhere, never.
    labels, annotations = written_for(B)
    assert claim(A, "team-a", labels, annotations) is Claim.FOREIGN
    old_cluster = RegistryRef("ClusterOCIRegistry", "ghcr", None, "uid-c-before")
    labels, annotations = written_for(old_cluster)
    assert claim(CLUSTER, "team-x", labels, annotations) is Claim.ADOPT
    assert claim(OTHER_CLUSTER, "team-x", labels, annotations) is Claim.FOREIGN


def test_the_recorded_owner_is_shown_only_when_it_is_a_plain_name() -> None:
    assert ownership.recorded_owner(*written_for(B)) == "OCIRegistry/team-b/ghcr"
    assert ownership.recorded_owner(*written_for(CLUSTER)) == "ClusterOCIRegistry/ghcr"
    labels = CLUSTER.labels()
    assert ownership.recorded_owner(labels, {ownership.ANNOTATION_OWNER: "x\nfake"}) is None
    assert ownership.recorded_owner({}, CLUSTER.annotations()) is None


# -- the decisions built on it (plan) ----------------------------------------------------------


def desired(ref: RegistryRef, namespace: str) -> plan.DesiredSecret:
    (found,) = plan.desired_secrets(ref, Targets(), BASIC, namespace)
    return found


def test_a_secret_is_written_for_its_exact_owner() -> None:
    body = desired(A, "team-a").body()["metadata"]
    assert body["labels"][plan.LABEL_UID] == "uid-a"
    assert body["annotations"][plan.ANNOTATION_OWNER] == "OCIRegistry/team-a/ghcr"


def test_another_tenants_secret_of_the_same_name_is_a_conflict() -> None:
    # Not reachable through namespace selection (a tenant writes home only); decided anyway.
    theirs = desired(B, "team-b").body()
    assert plan.secret_decision(desired(A, "team-b"), theirs) == "conflict"
    assert not plan.secret_owned_by(A, "team-b", theirs)
    assert plan.secret_owned_by(B, "team-b", theirs)


def test_the_cluster_registry_and_the_tenants_conflict_both_ways() -> None:
    tenant = desired(A, "team-a").body()
    cluster = desired(CLUSTER, "team-a").body()
    assert plan.secret_decision(desired(CLUSTER, "team-a"), tenant) == "conflict"
    assert plan.secret_decision(desired(A, "team-a"), cluster) == "conflict"
    assert plan.secret_owner(tenant) == "OCIRegistry/team-a/ghcr"
    assert not plan.secret_owned_by(CLUSTER, "team-a", tenant)


def test_an_old_release_secret_is_relabelled_then_unchanged() -> None:
    want = desired(A, "team-a")
    old = want.body()
    del old["metadata"]["labels"][plan.LABEL_UID]
    # Same data, old labels: taken over (rewritten with the uid label), not a conflict.
    assert plan.secret_decision(want, old) == "update"
    assert plan.secret_owned_by(A, "team-a", old)
    assert plan.secret_decision(want, want.body()) == "unchanged"
    # team-b's old-style "ghcr" had the same labels as team-a's: it is team-b's to take over.
    theirs = desired(B, "team-b").body()
    del theirs["metadata"]["labels"][plan.LABEL_UID]
    assert theirs["metadata"]["labels"] == old["metadata"]["labels"]
    assert plan.secret_decision(desired(B, "team-b"), theirs) == "update"
    assert not plan.secret_owned_by(A, "team-b", theirs)


def test_a_predecessors_copy_is_taken_over_but_not_a_live_objects() -> None:
    before = RegistryRef("ClusterOCIRegistry", "ghcr", None, "uid-c-before")
    theirs = desired(before, "team-x").body()
    want = desired(CLUSTER, "team-x")
    assert plan.secret_decision(want, theirs) == "update"
    live = plan.DesiredSecret(**{**want.__dict__, "live": frozenset({"uid-c-before"})})
    assert plan.secret_decision(live, theirs) == "conflict"


def test_the_index_keeps_what_ownership_reads() -> None:
    state = plan.secret_state(desired(A, "team-a").body())
    assert dict(state.labels)[plan.LABEL_UID] == "uid-a"
    assert plan.secret_claim(A, "team-a", state) is Claim.OURS
    assert plan.secret_claim(B, "team-a", state) is Claim.FOREIGN


# -- the chart index ConfigMap follows the same rule ------------------------------------------


def _index_config_map(ref: RegistryRef, namespace: str) -> dict:
    from ocireg.charts import publish
    from ocireg.charts.helm_index import build_index

    return publish.desired_config_map(ref, namespace, build_index([], "ghcr.io"), "now")


def test_the_chart_index_config_map_is_owned_the_same_way() -> None:
    from ocireg.charts import publish

    # team-a's ghcr-charts and a copy carrying team-b's labels in team-a.
    mine = _index_config_map(A, "team-a")
    assert mine["metadata"]["labels"][ownership.LABEL_UID] == "uid-a"
    written = mine
    assert publish.config_map_decision(mine, written) == "unchanged"
    theirs = _index_config_map(B, "team-b")
    theirs["metadata"]["namespace"] = "team-a"
    assert publish.config_map_decision(mine, theirs) == "conflict"
    assert not publish.owns(A, theirs)
    # The cluster object's index next to a tenant's of the same name: neither's to touch.
    cluster = _index_config_map(CLUSTER, "team-a")
    assert publish.config_map_decision(mine, cluster) == "conflict"
    assert not publish.owns(A, cluster)
    assert not publish.owns(CLUSTER, mine)
    # Written before the uid label: taken over (relabelled) by its object.
    old = {
        **written,
        "metadata": {**written["metadata"], "labels": dict(mine["metadata"]["labels"])},
    }
    del old["metadata"]["labels"][ownership.LABEL_UID]
    assert publish.owns(A, old)
    assert publish.config_map_decision(mine, old) == "update"
