"""The watch-fed index: what it keeps of each object, how watch events and re-lists change
it, and the watch loop (list, watch, resume, 410 Gone, errors) against a scripted source."""

from __future__ import annotations

import copy
import gc
import queue
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ocireg.kube import cache as index_module
from ocireg.kube.cache import Store, Watcher
from ocireg.pullsecrets import plan
from ocireg.pullsecrets.fanout import Fanout, Registries
from ocireg.pullsecrets.index import ClusterIndex, NamespaceState, namespace_state

REF = plan.RegistryRef("ClusterOCIRegistry", "corp")


def ns(name: str, version: str = "1", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels, "resourceVersion": version}}


def pull_secret(namespace: str, version: str, data: str = "e30=") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "corp",
            "namespace": namespace,
            "uid": f"uid-{namespace}",
            "resourceVersion": version,
            "labels": {**REF.labels(), "team": "ignored"},
            "annotations": {plan.ANNOTATION_OWNER: REF.display, "other": "ignored"},
            "managedFields": [{"manager": "big"}] * 3,
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": data},
    }


def test_a_managed_secret_is_kept_as_a_few_fields_and_a_digest() -> None:
    state = plan.secret_state(pull_secret("team-a", "7"))
    assert state.labels == tuple(REF.labels().items())
    assert state.annotations == ((plan.ANNOTATION_OWNER, REF.display),)
    assert state.digest == plan.data_digest({".dockerconfigjson": "e30="})
    assert (state.uid, state.resource_version) == ("uid-team-a", "7")
    assert "e30=" not in repr(state)  # the data itself is not kept
    assert sys.getsizeof(state.digest) < 64


UID = "6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718"


def test_a_uuid_uid_and_a_numeric_version_are_kept_packed_and_given_back_as_written() -> None:
    body = pull_secret("team-a", "48000007")
    body["metadata"]["uid"] = UID
    state = plan.secret_state(body)
    assert state.compact
    assert uuid.UUID(UID).bytes in state  # 16 bytes, not 36 characters
    assert (48000007).to_bytes(8, "little") in state  # one number, which the store orders by
    assert (state.uid, state.resource_version, state.version) == (UID, "48000007", 48000007)


def test_a_secret_from_the_api_is_kept_as_one_object_of_45_bytes() -> None:
    body = pull_secret("team-a", "48000007")
    body["metadata"]["uid"] = UID
    state = plan.secret_state(body)
    # One bytes object, referring to nothing but its class: no tuple, int or string of its own.
    assert isinstance(state, bytes)
    assert gc.get_referents(state) == [plan.SecretState]
    assert len(state) == 45
    assert state.digest in state
    assert sys.getsizeof(state) < 100
    assert (state.uid, state.resource_version, state.version) == (UID, "48000007", 48000007)
    # The shared parts are given back as they were read.
    assert (state.labels, state.type) == (tuple(REF.labels().items()), body["type"])
    assert state.annotations == ((plan.ANNOTATION_OWNER, REF.display),)
    # Equal: the same observed state; any field that differs makes it another.
    assert state == plan.secret_state(copy.deepcopy(body))
    assert copy.copy(state) == state
    assert "e30=" not in repr(state)
    assert UID in str(state)
    for path, value in [
        (("metadata", "resourceVersion"), "48000008"),
        (("metadata", "uid"), str(uuid.uuid4())),
        (("metadata", "annotations"), {}),
        (("metadata", "labels"), {}),
        (("type",), "Opaque"),
        (("data",), {".dockerconfigjson": "eA=="}),
    ]:
        other = copy.deepcopy(body)
        *parents, key = path
        target = other
        for parent in parents:
            target = target[parent]
        target[key] = value
        assert plan.secret_state(other) != state, path


@pytest.mark.parametrize(("uid", "version"), [(UID, "48000007"), ("uid-team-a", "opaque-7")])
def test_label_changes_past_the_shape_table_add_no_memory_for_good(
    monkeypatch: pytest.MonkeyPatch, uid: str, version: str
) -> None:
    """Anyone who may label a Secret as ocireg's can give it new labels again and again: past
    SHAPES_MAX a state carries its own shape (read back exactly), and the shared tables stop
    growing, so what the index holds goes when the Secret does."""
    monkeypatch.setattr(plan, "SHAPES_MAX", len(plan._SHAPES))
    monkeypatch.setattr(plan, "SHARED_MAX", len(plan._SHARED))
    shapes, shared = len(plan._SHAPES), len(plan._SHARED)
    for i in range(50):
        body = pull_secret("team-a", version)
        body["metadata"]["uid"] = uid
        body["metadata"]["labels"][plan.LABEL_REGISTRY] = f"hostile-\ud800-{i}"
        body["type"] = f"example.com/{i}"
        state = plan.secret_state(body)
        assert state.label(plan.LABEL_REGISTRY) == f"hostile-\ud800-{i}"
        assert (state.type, state.uid, state.resource_version) == (body["type"], uid, version)
        assert state.annotations == ((plan.ANNOTATION_OWNER, REF.display),)
        assert state == plan.secret_state(copy.deepcopy(body))
        assert gc.get_referents(state) == [plan.SecretState]
    assert (len(plan._SHAPES), len(plan._SHARED)) == (shapes, shared)


@pytest.mark.parametrize(
    ("uid", "version"),
    [
        ("uid-team-a", "opaque-7"),
        (UID, "opaque-7"),  # one field that does not pack keeps both as text
        ("uid-team-a", "7"),
        (UID, str(2**64)),  # a number, but more than 8 bytes: kept as text, still ordered
        ("\ud800 lone surrogate", "\udfff"),
        ("", ""),
        (None, None),
    ],
)
def test_a_uid_or_version_that_does_not_pack_is_given_back_exactly(
    uid: str | None, version: str | None
) -> None:
    body = pull_secret("team-a", "7")
    body["metadata"].update(uid=uid, resourceVersion=version)
    state = plan.secret_state(body)
    assert not state.compact
    assert (state.uid, state.resource_version) == (uid, version)
    assert state.version == plan.version_number(version)
    assert gc.get_referents(state) == [plan.SecretState]
    assert copy.deepcopy(state) == state
    assert state.digest == plan.data_digest({".dockerconfigjson": "e30="})
    assert state.labels == tuple(REF.labels().items())


@pytest.mark.parametrize(
    "uid",
    [
        "uid-team-a",  # not a UUID
        UID.upper(),  # a UUID, but not as the API writes it: kept as it is
        "{" + UID[1:-1] + "}",
        UID.replace("-", "") + "abcd",  # 36 characters, no hyphens
        "x" * 36,
        "",
        None,
        42,  # not even text
        ["a"],
    ],
)
def test_any_other_uid_is_kept_as_text_and_given_back_unchanged(uid: Any) -> None:
    body = pull_secret("team-a", "7")
    body["metadata"]["uid"] = uid
    state = plan.secret_state(body)
    assert state.uid == (None if uid is None else str(uid))
    assert not state.compact


@pytest.mark.parametrize(
    "version",
    ["opaque-7", "007", "7.0", "-7", " 7", "\u00b2", "\u0661\u0662", "9" * 21, "9" * 5000, ""],
)
def test_a_version_that_is_not_a_plain_number_is_kept_as_text_and_never_ordered(
    version: str,
) -> None:
    state = plan.secret_state(pull_secret("a", version))
    assert (state.resource_version, state.version) == (version, None)
    store = ClusterIndex().secrets
    store.apply("MODIFIED", pull_secret("a", "20"))
    # Not comparable with what is known: taken, whichever came first.
    assert store.apply("MODIFIED", pull_secret("a", version, data="b2xk")) == ("a", "corp")
    assert store.get("a", "corp").resource_version == version
    assert store.apply("MODIFIED", pull_secret("a", "19")) == ("a", "corp")
    assert store.get("a", "corp").version == 19


def test_a_version_without_a_known_one_is_taken_as_it_is() -> None:
    state = plan.secret_state({"metadata": {"name": "corp", "namespace": "a"}})
    assert (state.uid, state.resource_version, state.version) == (None, None, None)
    assert plan.version_number("0") == 0
    assert plan.version_number("18446744073709551615") == 2**64 - 1  # etcd's largest


def test_namespace_state_marks_a_deleting_namespace_terminating() -> None:
    assert namespace_state(ns("a", pull="yes")) == NamespaceState({"pull": "yes"}, "Active")
    deleting = {"metadata": {"name": "a", "deletionTimestamp": "now"}, "status": {}}
    assert namespace_state(deleting).phase == "Terminating"


def test_events_change_the_store_and_say_what_changed() -> None:
    store = ClusterIndex().secrets
    assert store.apply("ADDED", pull_secret("a", "5")) == ("a", "corp")
    assert store.apply("MODIFIED", pull_secret("a", "6")) == ("a", "corp")  # new version
    again = pull_secret("a", "6")
    assert store.apply("MODIFIED", again) is None  # nothing new
    assert store.apply("MODIFIED", pull_secret("a", "7", data="eA==")) == ("a", "corp")
    assert store.get("a", "corp").digest == plan.data_digest({".dockerconfigjson": "eA=="})
    assert store.apply("DELETED", pull_secret("a", "8")) == ("a", "corp")
    assert store.get("a", "corp") is None
    assert store.apply("DELETED", pull_secret("a", "9")) is None  # unknown: no change


def test_an_event_older_than_our_own_write_is_ignored() -> None:
    store = ClusterIndex().secrets
    store.apply("MODIFIED", pull_secret("a", "20"))  # noted from the API's answer
    assert store.apply("MODIFIED", pull_secret("a", "19", data="b2xk")) is None
    assert store.apply("DELETED", pull_secret("a", "18")) is None  # the one before a re-create
    assert store.get("a", "corp").resource_version == "20"
    assert store.apply("MODIFIED", pull_secret("a", "100", data="b2xk")) == ("a", "corp")
    assert store.apply("MODIFIED", pull_secret("a", "99")) is None  # numbers, not text
    assert store.apply("DELETED", pull_secret("a", "101")) == ("a", "corp")
    assert store.get("a", "corp") is None


def test_the_store_keeps_the_value_alone_and_asks_it_for_its_version() -> None:
    accounts = ClusterIndex().accounts
    account = {"metadata": {"name": "default", "namespace": "a", "resourceVersion": "30"}}
    accounts.apply("MODIFIED", account)
    older = {**account, "metadata": {**account["metadata"], "resourceVersion": "29"}}
    assert accounts.apply("MODIFIED", {**older, "imagePullSecrets": [{"name": "x"}]}) is None
    assert accounts.get("a", "default") == plan.AccountState((), "", "30")
    # A store without a version takes every event as it comes (a watch's are in order).
    plain = Store("plain", lambda body: body["metadata"]["resourceVersion"])
    plain.apply("ADDED", account)
    assert plain.apply("MODIFIED", older) == ("a", "default")
    assert plain.get("a", "default") == "29"
    assert plain.in_namespace("a") == {"default": "29"}
    assert plain.items() == [("a", "default", "29")] == list(plain.scan())


def test_a_relist_replaces_everything_and_reports_the_differences() -> None:
    store = ClusterIndex().namespaces
    assert not store.synced.is_set()
    assert store.replace([ns("a"), ns("b", pull="yes")]) == {("", "a"), ("", "b")}
    assert store.synced.is_set()
    changed = store.replace([ns("b", "2", pull="no"), ns("c")])
    assert changed == {("", "a"), ("", "b"), ("", "c")}
    assert store.replace([ns("b", "3", pull="no"), ns("c", "4")]) == set()  # versions only
    assert {name for _, name, _ in store.items()} == {"b", "c"}


def test_a_namespace_change_count_moves_only_with_what_is_known_there() -> None:
    store = Store("secrets", plan.secret_state, lambda s: s.version)
    store.replace([pull_secret("team-a", "1"), pull_secret("team-b", "2")])
    a, b = store.changes_in("team-a"), store.changes_in("team-b")
    assert a > 0
    assert b > 0
    store.apply("MODIFIED", pull_secret("team-b", "3", data="bmV3"))
    assert store.changes_in("team-a") == a  # another namespace's change
    assert store.changes_in("team-b") > b
    store.apply("MODIFIED", pull_secret("team-a", "1"))  # the same again: no change
    assert store.changes_in("team-a") == a
    store.forget("team-a", "corp")  # emptied: nothing kept, and the answer moves
    assert store.changes_in("team-a") == 0
    store.apply("ADDED", pull_secret("team-a", "4"))
    assert store.changes_in("team-a") > b
    store.replace([pull_secret("team-a", "4")])  # a relist: team-b is gone
    assert store.changes_in("team-b") == 0
    assert store._changed_in.keys() == {"team-a"}  # no count kept for a namespace gone


def test_the_index_is_synced_only_when_every_store_is() -> None:
    index = ClusterIndex()
    index.namespaces.replace([])
    index.accounts.replace([])
    assert not index.synced
    assert not index.wait_synced(0.01)
    index.secrets.replace([])
    assert index.synced
    assert index.wait_synced(0)


class ScriptedSource:
    """Pages and watch streams handed out in order; a stream ends with the server timeout,
    raises, or blocks until the test is done."""

    def __init__(self, lists: list[list[dict]], streams: list[Any]) -> None:
        self.lists, self.streams = lists, streams
        self.pages: list[str | None] = []
        self.watched_from: list[str] = []
        self.idle = queue.Queue[None]()

    def page(self, token: str | None) -> dict[str, Any]:
        self.pages.append(token)
        pages = self.lists[0]
        index = int(token or 0)
        if index == len(pages) - 1:
            self.lists.pop(0)
        return pages[index]

    def watch(self, resource_version: str, timeout: int) -> Iterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        if not self.streams:
            self.idle.put(None)
            threading.Event().wait(5)
            return
        stream = self.streams.pop(0)
        if isinstance(stream, Exception):
            raise stream
        yield from stream


def _page(items: list[dict], version: str, token: str | None = None) -> dict[str, Any]:
    return {"items": items, "metadata": {"resourceVersion": version, "continue": token}}


def run_until_idle(source: ScriptedSource, store: Store[Any]) -> list[tuple[str, str]]:
    changes: list[tuple[str, str]] = []
    watcher = Watcher(source, store, lambda *key: changes.append(key), relist=3600).start()
    source.idle.get(timeout=10)
    watcher.stop.set()
    return changes


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "backoff", lambda failures: 0.0)


def test_watcher_lists_in_pages_then_watches_and_resumes() -> None:
    source = ScriptedSource(
        [[_page([ns("a")], "10", token="1"), _page([ns("b")], "10")]],
        [
            [
                {"type": "ADDED", "object": ns("c", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],
            [{"type": "DELETED", "object": ns("a", "16")}],
        ],
    )
    store = ClusterIndex().namespaces
    changes = run_until_idle(source, store)
    assert source.pages == [None, "1"]
    assert source.watched_from == ["10", "15", "16"]  # each resumed where the last stopped
    assert changes == [("", "c"), ("", "a")]  # the list itself is no change to act on
    assert {name for _, name, _ in store.items()} == {"b", "c"}


def test_watcher_relists_after_410_gone_and_reports_what_it_missed() -> None:
    source = ScriptedSource(
        [[_page([ns("a"), ns("b")], "10")], [_page([ns("b", "30", pull="yes"), ns("c")], "30")]],
        [[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]],
    )
    store = ClusterIndex().namespaces
    changes = run_until_idle(source, store)
    assert source.watched_from == ["10", "30"]
    assert sorted(changes) == [("", "a"), ("", "b"), ("", "c")]


def test_watcher_retries_after_errors_without_losing_its_place() -> None:
    source = ScriptedSource(
        [[_page([ns("a")], "10")]],
        [
            ConnectionResetError("reset by peer"),
            ApiException(status=500, reason="etcd"),
            [{"type": "ADDED", "object": ns("b", "12")}],
        ],
    )
    store = ClusterIndex().namespaces
    changes = run_until_idle(source, store)
    assert source.pages == [None]  # no re-list needed
    assert source.watched_from == ["10", "10", "10", "12"]
    assert changes == [("", "b")]


def test_a_failing_listener_does_not_stop_the_watch() -> None:
    source = ScriptedSource(
        [[_page([], "1")]],
        [[{"type": "ADDED", "object": ns("a", "2")}, {"type": "ADDED", "object": ns("b", "3")}]],
    )
    store = ClusterIndex().namespaces
    seen = []

    def listener(_: str, name: str) -> None:
        seen.append(name)
        raise RuntimeError("boom")

    watcher = Watcher(source, store, listener).start()
    source.idle.get(timeout=10)
    watcher.stop.set()
    assert seen == ["a", "b"]


# -- who read what ---------------------------------------------------------------------------


def test_dependents_find_the_objects_that_read_a_secret_and_follow_their_reads() -> None:
    from ocireg.pullsecrets.index import Dependents

    a = plan.RegistryRef("OCIRegistry", "a", "team-a", "u1")
    b = plan.RegistryRef("OCIRegistry", "b", "team-b", "u2")
    deps = Dependents()
    deps.record(a, [("Secret", "team-a", "creds"), ("ConfigMap", "team-a", "ca")])
    deps.add(b, ("Secret", "team-b", "creds"))  # as it is read, before its run ends
    assert deps.of("Secret", "team-a", "creds") == [a]
    assert deps.of("Secret", "team-b", "creds") == [b]
    assert deps.of("Secret", "team-c", "creds") == []  # same name, another tenant: nobody
    # A new spec reads another Secret: the old one no longer runs it.
    deps.record(a, [("Secret", "team-a", "robot")])
    assert deps.of("Secret", "team-a", "creds") == []
    assert deps.of("ConfigMap", "team-a", "ca") == []
    assert deps.of("Secret", "team-a", "robot") == [a]
    deps.forget(a)
    deps.forget(b)
    assert deps.of("Secret", "team-a", "robot") == deps.of("Secret", "team-b", "creds") == []
    assert not deps._readers  # nothing left behind
    assert not deps._reads


def test_a_scan_gives_what_items_gives_and_survives_changes_while_it_runs() -> None:
    store = ClusterIndex().secrets
    bodies = [
        {"metadata": {"name": "pull", "namespace": f"team-{i}", "resourceVersion": "1"}}
        for i in range(5)
    ]
    store.replace(bodies)
    assert sorted(store.scan()) == sorted(store.items())
    seen = []
    for namespace, _, _ in store.scan():
        seen.append(namespace)
        store.apply("DELETED", bodies[4])  # a watch event meanwhile: no error
    assert len(seen) in (4, 5)
    assert "team-4" not in seen[:-1]


def test_the_secrets_are_counted_by_the_object_whose_uid_they_carry() -> None:
    """What ocireg_managed_secrets reports: Secrets as the index holds them, not namespaces
    remembered as written (a set per object, 5 MB at 10,000 namespaces x 10 objects)."""
    mine = plan.RegistryRef("ClusterOCIRegistry", "corp", uid="uid-corp")
    theirs = plan.RegistryRef("ClusterOCIRegistry", "other", uid="uid-other")

    def secret(ref: plan.RegistryRef, namespace: str, version: str) -> dict[str, Any]:
        body = pull_secret(namespace, version)
        body["metadata"]["labels"] = ref.labels()
        return body

    secrets = ClusterIndex().secrets
    secrets.replace([secret(mine, "a", "1"), secret(mine, "b", "1"), secret(theirs, "c", "1")])
    assert (secrets.count("uid-corp"), secrets.count("uid-other")) == (2, 1)
    secrets.apply("ADDED", secret(mine, "c", "2"))  # another name's namespace: "corp" in c
    assert (secrets.count("uid-corp"), secrets.count("uid-other")) == (3, 0)  # c's taken over
    secrets.apply("MODIFIED", secret(mine, "c", "3"))  # the same owner: counted once
    secrets.apply("DELETED", secret(mine, "a", "4"))
    secrets.forget("b", "corp")
    assert (secrets.count("uid-corp"), secrets.count("uid-other")) == (1, 0)
    secrets.replace([secret(theirs, "a", "5")])
    assert (secrets.count("uid-corp"), secrets.count("uid-other")) == (0, 1)


def test_another_tenant_cannot_add_to_a_tenant_objects_count() -> None:
    tenant = plan.RegistryRef("OCIRegistry", "corp", "team-a", uid="uid-tenant")
    index = ClusterIndex()
    fanout = Fanout(None, index, Registries(), 1)  # type: ignore[arg-type]
    try:
        for namespace in ("team-a", "team-b"):  # team-b's copy: planted with team-a's uid
            body = pull_secret(namespace, "1")
            body["metadata"]["labels"] = tenant.labels()
            index.secrets.apply("ADDED", body)
        assert fanout.managed(tenant) == 1
        assert fanout.holds(tenant, "team-a", "corp")
    finally:
        fanout.queue.stop()
