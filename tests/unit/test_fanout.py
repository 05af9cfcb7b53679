"""Namespace jobs from the index: one job per namespace at a time, urgent before bulk,
every registry's Secrets and one ServiceAccount patch per job, repairs after a copy is
deleted or edited, nothing done on a partial view, and a resync that writes only what
differs (against the in-memory stand-in for the API of test_reconcile)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ocireg.api.credential import Credential
from ocireg.api.spec import RegistrySpec
from ocireg.backoff import Backoff
from ocireg.pullsecrets import plan
from ocireg.pullsecrets.fanout import JOB_BACKOFF as BACKOFF
from ocireg.pullsecrets.fanout import Fanout, Registries
from ocireg.pullsecrets.index import ClusterIndex
from ocireg.workers import KeyedQueue

from .test_index import ns
from .test_reconcile import FakeKube, index_of

BASIC = Credential("basic", ("registry.example.com",), "robot", "pw-1")


# -- the queue ------------------------------------------------------------------------------


def test_a_key_runs_once_at_a_time_and_a_waiting_key_is_queued_once() -> None:
    started, release, runs = threading.Event(), threading.Event(), []

    def run(key: str) -> str:
        runs.append(key)
        started.set()
        release.wait(5)
        return f"done {key}"

    q: KeyedQueue[str, str] = KeyedQueue(run, 4, "t", BACKOFF)
    first = q.submit("a")
    started.wait(5)
    second, third = q.submit("a"), q.submit("a")  # while "a" runs: one more run, shared
    assert second is third
    assert second is not first
    time.sleep(0.1)
    assert runs == ["a"]  # not two at once, though workers are free
    release.set()
    assert first.result(5) == "done a"
    assert second.result(5) == "done a"
    assert runs == ["a", "a"]
    q.stop()


def test_urgent_keys_go_before_bulk_ones() -> None:
    gate, order = threading.Event(), []

    def run(key: str) -> None:
        if key == "busy":
            gate.wait(5)
        order.append(key)

    q: KeyedQueue[str, None] = KeyedQueue(run, 1, "t", BACKOFF)
    q.submit("busy")
    time.sleep(0.05)
    futures = [q.submit(f"bulk-{i}") for i in range(3)]
    futures.append(q.submit("new-namespace", urgent=True))
    futures.append(q.submit("bulk-2", urgent=True))  # promoted
    gate.set()
    for future in futures:
        future.result(5)
    assert order == ["busy", "new-namespace", "bulk-2", "bulk-0", "bulk-1"]
    q.stop()


def test_a_failed_job_reports_to_its_callers_and_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[str] = []

    def run(key: str) -> None:
        attempts.append(key)
        if len(attempts) == 1:
            raise ConnectionError("API server away")

    q: KeyedQueue[str, None] = KeyedQueue(run, 2, "t", Backoff(0.05, 0.05, 0.0))
    with pytest.raises(ConnectionError):
        q.submit("a").result(5)
    deadline = time.monotonic() + 5
    while len(attempts) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert attempts == ["a", "a"]
    q.stop()


def test_barrier_waits_for_the_jobs_running_now() -> None:
    release, finished = threading.Event(), []

    def run(key: str) -> None:
        release.wait(5)
        finished.append(key)

    q: KeyedQueue[str, None] = KeyedQueue(run, 2, "t", BACKOFF)
    q.submit("a")
    time.sleep(0.05)
    threading.Timer(0.2, release.set).start()
    q.barrier()
    assert finished == ["a"]
    q.stop()


# -- namespace jobs -------------------------------------------------------------------------


def spec(name: str, **targets: Any) -> RegistrySpec:
    return RegistrySpec.model_validate(
        {
            "server": "registry.example.com",
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "targets": {"namespaceSelector": {"matchLabels": {"pull": "yes"}}, **targets},
        }
    )


class Cluster:
    """The fake API, an index that follows it the way the watches would, and a Fanout."""

    def __init__(self) -> None:
        self.kube = FakeKube()
        for name in ("team-a", "team-b", "other"):
            self.kube.add_namespace(name, **({"pull": "yes"} if name != "other" else {}))
        self.registries = Registries()
        self.fanout = Fanout(self.kube, ClusterIndex(), self.registries, workers=4)  # type: ignore[arg-type]
        self.watch()

    def watch(self) -> None:
        """The watches catch up with the fake API."""
        self.fanout.index = index_of(self.kube)

    def serve(self, name: str, credential: Credential = BASIC, **targets: Any) -> plan.RegistryRef:
        ref = plan.RegistryRef("ClusterOCIRegistry", name, None, f"uid-{name}")
        self.registries.get(ref).publish(spec(name, **targets), credential)
        return ref

    def resync(self, ref: plan.RegistryRef) -> tuple[dict, list]:
        tracked = self.registries.get(ref)
        assert tracked.spec is not None
        assert tracked.credential is not None
        status, events = self.fanout.resync(self.kube, ref, tracked.spec, tracked.credential, 4)  # type: ignore[arg-type]
        self.watch()
        return status, events

    def refs(self, namespace: str) -> list[str]:
        return [
            r["name"]
            for r in self.kube.accounts[(namespace, "default")].get("imagePullSecrets") or []
        ]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    yield cluster
    cluster.fanout.queue.stop()


def test_one_job_writes_every_registry_and_patches_the_account_once(cluster: Cluster) -> None:
    for name in ("alpha", "beta", "gamma"):
        cluster.serve(name)
    results = cluster.fanout.namespace("team-a")
    assert {(ns, name) for ns, name in cluster.kube.secrets} >= {
        ("team-a", "alpha"),
        ("team-a", "beta"),
        ("team-a", "gamma"),
    }
    assert cluster.refs("team-a") == ["alpha", "beta", "gamma"]
    assert cluster.kube.writes == 3 + 1  # three Secrets, one ServiceAccount patch
    assert all(r.written == 1 and r.failure is None for r in results.values())
    cluster.watch()
    cluster.fanout.namespace("team-a")
    assert cluster.kube.writes == 4  # the same again: nothing to write


def test_resync_writes_only_what_differs(cluster: Cluster) -> None:
    ref = cluster.serve("corp")
    status, events = cluster.resync(ref)
    assert status["namespaces"] == 2
    assert status["serviceAccounts"] == 2
    assert [e[1] for e in events] == ["SecretsWritten"]
    writes = cluster.kube.writes
    status, events = cluster.resync(ref)
    assert cluster.kube.writes == writes
    assert not events
    assert status["namespaces"] == 2
    # A rotated credential rewrites every copy, and only the copies.
    cluster.registries.get(ref).publish(
        cluster.registries.get(ref).spec, Credential("basic", BASIC.endpoints, "robot", "pw-2")
    )
    cluster.resync(ref)
    assert cluster.kube.writes == writes + 2


def test_a_resync_is_quiet_only_while_nothing_it_decided_from_changed(cluster: Cluster) -> None:
    ref = cluster.serve("corp")
    tracked = cluster.registries.get(ref)
    fanout = cluster.fanout

    def resync() -> None:
        assert tracked.spec is not None
        assert tracked.credential is not None
        fanout.resync(cluster.kube, ref, tracked.spec, tracked.credential, 4)  # type: ignore[arg-type]

    resync()  # writes the copies: what it decided from changed under it
    assert not fanout.quiet(ref)
    resync()  # finds every namespace as it wants it
    assert fanout.quiet(ref)
    # A namespace relabelled (its watch event reaches the index): look again.
    fanout.index.namespaces.apply("MODIFIED", ns("other", "9", pull="yes"))
    assert not fanout.quiet(ref)
    resync()
    resync()
    assert fanout.quiet(ref)
    # An event that changes nothing the index keeps (a new resourceVersion only): still quiet.
    fanout.index.namespaces.apply("MODIFIED", ns("other", "10", pull="yes"))
    assert fanout.quiet(ref)
    # Another registry object served, or a new credential: look again.
    cluster.serve("other-registry")
    assert not fanout.quiet(ref)
    resync()
    assert fanout.quiet(ref)
    tracked.publish(tracked.spec, Credential("basic", BASIC.endpoints, "robot", "pw-2"))
    assert not fanout.quiet(ref)


def test_a_resync_that_found_a_conflict_is_never_quiet(cluster: Cluster) -> None:
    cluster.kube.put_secret("team-b", "corp", {"mine": "keep"})
    ref = cluster.serve("corp")
    tracked = cluster.registries.get(ref)
    for _ in range(3):
        assert tracked.spec is not None
        assert tracked.credential is not None
        status, _events = cluster.fanout.resync(
            cluster.kube,  # type: ignore[arg-type]
            ref,
            tracked.spec,
            tracked.credential,
            4,
        )
        assert status["failedCount"] == 1
    # Its removal, which would mend it, is not in the index: only a resync sees it.
    assert not cluster.fanout.quiet(ref)


def test_a_copy_deleted_or_edited_by_hand_is_repaired_on_its_event(cluster: Cluster) -> None:
    ref = cluster.serve("corp")
    cluster.resync(ref)
    good = cluster.kube.secrets[("team-a", "corp")]["data"]
    del cluster.kube.secrets[("team-a", "corp")]
    cluster.watch()  # the DELETED event reached the index ...
    cluster.fanout.changed("team-a").result(5)  # ... and asked for the namespace's job
    assert cluster.kube.secrets[("team-a", "corp")]["data"] == good
    cluster.kube.secrets[("team-b", "corp")]["data"] = {".dockerconfigjson": "e30="}
    cluster.watch()
    cluster.fanout.changed("team-b").result(5)
    assert cluster.kube.secrets[("team-b", "corp")]["data"] == good


@pytest.mark.parametrize("version", ["48000007", "007", "opaque-7"])
def test_an_update_sends_back_the_version_it_saw_as_the_api_wrote_it(
    cluster: Cluster, version: str
) -> None:
    """The index keeps a numeric resourceVersion as a number; an update's precondition is
    still the text the API wrote (the fake API answers 409 to any other)."""
    ref = cluster.serve("corp")
    cluster.resync(ref)
    copy = cluster.kube.secrets[("team-a", "corp")]
    good = copy["data"]
    copy["metadata"]["resourceVersion"] = version
    copy["data"] = {".dockerconfigjson": "e30="}
    cluster.watch()
    writes = cluster.kube.writes
    results = cluster.fanout.changed("team-a").result(5)
    assert [(r.written, r.failure) for r in results.values()] == [(1, None)]
    assert cluster.kube.writes == writes + 1  # one update, no 409 and retry
    assert cluster.kube.secrets[("team-a", "corp")]["data"] == good


def test_nothing_is_done_before_the_index_is_complete(cluster: Cluster) -> None:
    cluster.serve("corp")
    cluster.fanout.index = ClusterIndex()
    cluster.fanout.index.namespaces.replace([])  # namespaces listed, the rest not yet
    assert cluster.fanout.changed("team-a") is None
    time.sleep(0.05)
    assert cluster.kube.writes == 0


def test_unselected_namespace_loses_only_our_secret_and_reference(cluster: Cluster) -> None:
    ours, theirs = cluster.serve("corp"), cluster.serve("keep")
    cluster.resync(ours)
    cluster.resync(theirs)
    sa = cluster.kube.accounts[("team-b", "default")]
    sa["imagePullSecrets"].append({"name": "teams-own"})
    cluster.kube.namespaces_["team-b"] = {}  # relabelled: neither registry selects it
    cluster.registries.get(theirs).publish(None, None)  # not ready: its copy is left alone
    cluster.watch()
    cluster.fanout.changed("team-b").result(5)
    assert ("team-b", "corp") not in cluster.kube.secrets
    assert ("team-b", "keep") in cluster.kube.secrets
    assert cluster.refs("team-b") == ["keep", "teams-own"]
    assert ("team-a", "corp") in cluster.kube.secrets


def test_a_registry_named_secret_of_someone_else_is_a_conflict(cluster: Cluster) -> None:
    cluster.kube.put_secret("team-b", "corp", {"mine": "keep"})
    ref = cluster.serve("corp")
    status, events = cluster.resync(ref)
    assert status["failedCount"] == 1
    assert status["failed"][0]["namespace"] == "team-b"
    assert ("Warning", "SecretConflict") in [e[:2] for e in events]
    assert "corp" not in cluster.refs("team-b")


def test_a_tenant_registry_writes_its_own_namespace_only(cluster: Cluster) -> None:
    ref = plan.RegistryRef("OCIRegistry", "mine", "team-a", "uid-mine")
    tracked = cluster.registries.get(ref)
    tracked.publish(spec("mine", namespaces=["*"]), BASIC)
    status, _ = cluster.resync(ref)
    assert status["namespaces"] == 1
    assert [key for key in cluster.kube.secrets if key[1] == "mine"] == [("team-a", "mine")]
    owner = cluster.kube.secrets[("team-a", "mine")]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-mine"
    cluster.fanout.changed("team-b").result(5)  # another namespace's job leaves it alone
    assert ("team-b", "mine") not in cluster.kube.secrets


def test_a_tenants_resync_stays_quiet_while_only_other_namespaces_change(
    cluster: Cluster,
) -> None:
    ref = plan.RegistryRef("OCIRegistry", "mine", "team-a", "uid-mine")
    tracked = cluster.registries.get(ref)
    tracked.publish(spec("mine"), BASIC)
    fanout = cluster.fanout
    for _ in range(2):  # the first writes; the second finds it as wanted
        fanout.resync(cluster.kube, ref, spec("mine"), BASIC, 4)  # type: ignore[arg-type]
    assert fanout.quiet(ref)
    fanout.index.namespaces.apply("MODIFIED", ns("team-b", "7", pull="no"))
    other = {"metadata": {"name": "x", "namespace": "team-b", "resourceVersion": "9"}}
    fanout.index.accounts.apply("ADDED", other)
    assert fanout.quiet(ref)  # a busy cluster elsewhere
    fanout.index.accounts.apply(
        "ADDED", {**other, "metadata": {**other["metadata"], "namespace": "team-a"}}
    )
    assert not fanout.quiet(ref)  # a new ServiceAccount of its own namespace
    fanout.resync(cluster.kube, ref, spec("mine"), BASIC, 4)  # type: ignore[arg-type]
    fanout.resync(cluster.kube, ref, spec("mine"), BASIC, 4)  # type: ignore[arg-type]
    assert fanout.quiet(ref)
    fanout.index.namespaces.apply("MODIFIED", ns("team-a", "8", pull="no"))
    assert not fanout.quiet(ref)  # its own namespace relabelled


def test_a_namespace_job_looks_only_at_the_objects_that_can_select_it() -> None:
    # 1,000 tenants' objects: a namespace job of team-7 sees the cluster objects and team-7's.
    registries = Registries()
    cluster = plan.RegistryRef("ClusterOCIRegistry", "corp", None, "c")
    tenants = [plan.RegistryRef("OCIRegistry", "r", f"team-{i}", f"t{i}") for i in range(1000)]
    spec = RegistrySpec.model_validate(
        {"server": "registry.example.com", "auth": {"basic": {"secretRef": {"name": "creds"}}}}
    )
    for ref in (cluster, *tenants):
        registries.get(ref).publish(spec, BASIC)
    assert [ref for ref, _ in registries.ready("team-7")] == [cluster, tenants[7]]
    assert [ref for ref, _ in registries.ready("elsewhere")] == [cluster]
    assert len(registries.ready()) == 1001
    live = registries.live()
    assert registries.live() is live  # made once, not per namespace job
    registries.forget(tenants[7])
    assert [ref for ref, _ in registries.ready("team-7")] == [cluster]
    assert "t7" not in registries.live()


# -- Argo CD repository credentials (targets.argoCD) -----------------------------------------


def _argocd(cluster: Cluster) -> dict[str, dict]:
    return {name: s for (ns, name), s in cluster.kube.secrets.items() if ns == "argocd"}


def test_argocd_secrets_go_to_the_argocd_namespace_only_and_follow_every_rotation(
    cluster: Cluster,
) -> None:
    cluster.kube.add_namespace("argocd")  # not selected for pull secrets
    cluster.watch()
    ref = cluster.serve("corp", argoCD={})
    status, _ = cluster.resync(ref)
    assert list(_argocd(cluster)) == ["corp-argocd"]
    written = _argocd(cluster)["corp-argocd"]
    assert written["metadata"]["labels"]["argocd.argoproj.io/secret-type"] == "repo-creds"
    assert cluster.refs("argocd") == []  # no ServiceAccount of Argo CD's is touched
    assert status["namespaces"] == 3  # team-a, team-b and argocd
    assert ("team-a", "corp-argocd") not in cluster.kube.secrets
    writes = cluster.kube.writes
    cluster.resync(ref)
    assert cluster.kube.writes == writes  # in sync: nothing written again
    tracked = cluster.registries.get(ref)
    tracked.publish(tracked.spec, Credential("basic", BASIC.endpoints, "robot", "pw-2"))
    cluster.resync(ref)
    assert cluster.kube.writes == writes + 3  # two pull secrets and the Argo CD Secret
    assert _argocd(cluster)["corp-argocd"]["data"]["password"] == "cHctMg=="  # pw-2


def test_argocd_secret_is_removed_when_no_longer_wanted_and_relabelled_when_retyped(
    cluster: Cluster,
) -> None:
    cluster.kube.add_namespace("argocd")
    cluster.watch()
    ref = cluster.serve("corp", argoCD={})
    cluster.resync(ref)
    tracked = cluster.registries.get(ref)
    tracked.publish(spec("corp", argoCD={"secretType": "repository"}), BASIC)
    cluster.resync(ref)
    labels = _argocd(cluster)["corp-argocd"]["metadata"]["labels"]
    assert labels["argocd.argoproj.io/secret-type"] == "repository"
    tracked.publish(spec("corp"), BASIC)
    cluster.resync(ref)
    assert _argocd(cluster) == {}
    assert ("team-a", "corp") in cluster.kube.secrets  # the pull secrets stay


def test_a_format_dropped_from_targets_is_removed_with_nothing_else(cluster: Cluster) -> None:
    ref = cluster.serve("corp", formats=["dockerconfigjson", "env"])
    cluster.resync(ref)
    assert ("team-a", "corp-env") in cluster.kube.secrets
    cluster.kube.put_secret("team-a", "corp-other", {"mine": "keep"})  # not ours
    cluster.watch()
    cluster.registries.get(ref).publish(spec("corp"), BASIC)
    cluster.resync(ref)
    assert ("team-a", "corp-env") not in cluster.kube.secrets
    assert ("team-a", "corp") in cluster.kube.secrets
    assert ("team-a", "corp-other") in cluster.kube.secrets
    assert cluster.refs("team-a") == ["corp"]


def test_a_tenant_argocd_secret_stays_in_her_namespace_whatever_the_spec_says(
    cluster: Cluster,
) -> None:
    """The CRD refuses targets.argoCD.namespace on an OCIRegistry; the code does not rely on
    it: a spec that carries one anyway (an older CRD, a test) still writes only at home."""
    cluster.kube.add_namespace("argocd")
    cluster.watch()
    ref = plan.RegistryRef("OCIRegistry", "mine", "team-a", "uid-mine")
    cluster.registries.get(ref).publish(spec("mine", argoCD={"namespace": "argocd"}), BASIC)
    cluster.resync(ref)
    cluster.fanout.changed("argocd").result(5)
    assert _argocd(cluster) == {}
    written = cluster.kube.secrets[("team-a", "mine-argocd")]
    assert written["metadata"]["ownerReferences"][0]["uid"] == "uid-mine"
