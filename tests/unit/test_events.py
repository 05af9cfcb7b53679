"""kube.events: where each kind's Events go, and client-go's counting (a repeat updates the
Event already posted, similar ones are combined, an object's flood is cut), against a fake API;
e2e/test_events.py shows them in `kubectl describe` on the real control plane."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocireg.api.ownership import RegistryRef
from ocireg.kube.client import ApiError
from ocireg.kube.events import (
    BURST,
    COMBINED,
    MAX_QUEUED,
    REFILL_SECONDS,
    SIMILAR_MAX,
    SIMILAR_SECONDS,
    Correlator,
    Event,
    EventRecorder,
)

TENANT = RegistryRef("OCIRegistry", "team", "team-a", "uid-t")
CLUSTER = RegistryRef("ClusterOCIRegistry", "corp", None, "uid-c")
T0 = 1_800_000_000.0


def test_where_each_kind_s_events_go_and_what_they_say() -> None:
    correlator = Correlator("pod-1")
    tenant = correlator.correlate(Event(TENANT, "Normal", "Verified", "accepted"), T0)
    cluster = correlator.correlate(Event(CLUSTER, "Warning", "Unreachable", "no answer"), T0)
    assert tenant is not None
    assert cluster is not None
    assert tenant.namespace == "team-a"
    assert tenant.body["involvedObject"] == {
        "apiVersion": "ocireg.dev/v1alpha1",
        "kind": "OCIRegistry",
        "name": "team",
        "namespace": "team-a",
        "uid": "uid-t",
    }
    # Cluster-scoped: no involvedObject.namespace (what kubectl describe selects), and the
    # one namespace the API server takes such an Event in.
    assert cluster.namespace == "default"
    assert "namespace" not in cluster.body["involvedObject"]
    assert cluster.body["source"] == {"component": "ocireg"}
    assert (cluster.body["reportingComponent"], cluster.body["reportingInstance"]) == (
        "ocireg",
        "pod-1",
    )
    assert (cluster.body["type"], cluster.body["reason"], cluster.body["message"]) == (
        "Warning",
        "Unreachable",
        "no answer",
    )
    assert (
        cluster.body["firstTimestamp"] == cluster.body["lastTimestamp"] == ("2027-01-15T08:00:00Z")
    )
    assert cluster.count == 1
    assert cluster.name.startswith("corp.")
    assert cluster.name != tenant.name


def test_a_repeat_updates_the_count_of_the_event_already_posted() -> None:
    correlator = Correlator("pod-1")
    event = Event(CLUSTER, "Warning", "SecretConflict", "namespace a: taken")
    first = correlator.correlate(event, T0)
    again = correlator.correlate(event, T0 + 90)
    assert first is not None
    assert again is not None
    assert (again.name, again.count) == (first.name, 2)
    assert again.body["firstTimestamp"] == first.body["firstTimestamp"]
    assert again.patch() == {
        "count": 2,
        "lastTimestamp": "2027-01-15T08:01:30Z",
        "message": "namespace a: taken",
    }
    other = correlator.correlate(Event(CLUSTER, "Warning", "SecretConflict", "b: taken"), T0)
    assert other is not None
    assert other.count == 1
    assert other.name != first.name


def test_many_messages_of_one_reason_become_one_combined_event() -> None:
    correlator = Correlator("pod-1")
    writes = [
        correlator.correlate(Event(CLUSTER, "Warning", "SecretConflict", f"namespace n{i}"), T0)
        for i in range(SIMILAR_MAX + 5)
    ]
    assert all(w is not None for w in writes)
    separate = writes[: SIMILAR_MAX - 1]
    combined = writes[SIMILAR_MAX - 1 :]
    assert len({w.name for w in separate if w}) == SIMILAR_MAX - 1
    assert {w.name for w in combined if w} == {combined[0].name if combined[0] else ""}
    assert [w.count for w in combined if w] == [1, 2, 3, 4, 5, 6]
    assert combined[-1] is not None
    assert combined[-1].body["message"] == COMBINED + f"namespace n{SIMILAR_MAX + 4}"
    # Another reason, or the same one after the window, is counted on its own again.
    fresh = correlator.correlate(
        Event(CLUSTER, "Warning", "SecretConflict", "namespace n0"), T0 + SIMILAR_SECONDS + 1
    )
    assert fresh is not None
    assert not fresh.body["message"].startswith(COMBINED)


def test_an_object_gets_a_burst_then_one_event_per_refill() -> None:
    correlator = Correlator("pod-1")

    def post(i: int, now: float, about: RegistryRef = CLUSTER) -> Any:
        # Different reasons: no combining, only the flood limit applies.
        return correlator.correlate(Event(about, "Warning", f"Reason{i}", "m"), now)

    sent = [post(i, T0) for i in range(BURST + 10)]
    assert sum(w is not None for w in sent) == BURST
    assert post(100, T0 + 1) is None
    assert post(101, T0 + REFILL_SECONDS) is not None  # one token back
    assert post(102, T0 + REFILL_SECONDS) is None
    # Other objects and the other type have their own budget.
    assert post(0, T0, TENANT) is not None
    normal = correlator.correlate(Event(CLUSTER, "Normal", "SecretsWritten", "m"), T0)
    assert normal is not None


def test_a_long_message_is_cut_to_the_api_limit() -> None:
    write = Correlator("pod").correlate(Event(TENANT, "Warning", "X", "m" * 5000), T0)
    assert write is not None
    assert len(write.body["message"]) == 1024


class FakeCore:
    """kube.client.CoreV1's Event calls, recording them; `gone` names Events the API server
    no longer has (expired), `down` makes every call fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.gone: set[str] = set()
        self.down = False

    def create_namespaced_event(self, namespace: str, body: Any, timeout: float) -> dict[str, Any]:
        if self.down:
            raise ConnectionRefusedError("api server away")
        self.calls.append(("create", namespace, body["metadata"]["name"], body))
        return dict(body)

    def patch_namespaced_event(
        self, name: str, namespace: str, body: Any, timeout: float
    ) -> dict[str, Any]:
        if self.down:
            raise ConnectionRefusedError("api server away")
        if name in self.gone:
            raise ApiError(status=404, reason="Not Found")
        self.calls.append(("patch", namespace, name, body))
        return dict(body)


@pytest.fixture
def recorder() -> tuple[EventRecorder, FakeCore]:
    recorder = EventRecorder(None, instance="pod-1", clock=lambda: T0)  # type: ignore[arg-type]
    core = FakeCore()
    recorder.core = core  # type: ignore[assignment]
    return recorder, core


def test_the_recorder_creates_then_patches_and_recreates_an_expired_event(
    recorder: tuple[EventRecorder, FakeCore],
) -> None:
    events, core = recorder
    event = Event(TENANT, "Warning", "Unreachable", "no answer")
    events.send(event)
    events.send(event)
    assert [(verb, ns) for verb, ns, _, _ in core.calls] == [
        ("create", "team-a"),
        ("patch", "team-a"),
    ]
    assert core.calls[1][3]["count"] == 2
    core.gone.add(core.calls[0][2])  # the API server dropped it after its hour
    events.send(event)
    assert core.calls[-1][0] == "create"
    assert core.calls[-1][3]["count"] == 3


def test_a_failing_api_is_logged_once_and_posting_goes_on(
    recorder: tuple[EventRecorder, FakeCore], caplog: pytest.LogCaptureFixture
) -> None:
    events, core = recorder
    core.down = True
    for reason in ("A", "B", "C"):
        events.send(Event(CLUSTER, "Warning", reason, "secret-free text"))
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "ConnectionRefusedError" in warnings[0].getMessage()
    core.down = False
    events.send(Event(CLUSTER, "Warning", "D", "m"))
    assert [c[0] for c in core.calls] == ["create"]


def test_post_never_blocks_and_stop_sends_what_is_queued(
    recorder: tuple[EventRecorder, FakeCore], caplog: pytest.LogCaptureFixture
) -> None:
    events, core = recorder
    for i in range(MAX_QUEUED + 3):  # not started: nothing is taken off the queue
        events.post(TENANT, "Normal", f"R{i % 7}", f"m{i}")
    assert events.queue.qsize() == MAX_QUEUED
    assert sum("dropping" in r.getMessage() for r in caplog.records) == 1
    events.start()
    events.stop()
    assert events.queue.qsize() == 0
    assert core.calls  # posted (as far as the flood limit lets them) before it ended


def test_a_namespace_being_deleted_is_no_failure_but_a_refusal_is(
    recorder: tuple[EventRecorder, FakeCore], caplog: pytest.LogCaptureFixture
) -> None:
    events, core = recorder
    terminating = ApiError(status=403, reason="Forbidden")
    terminating.body = json.dumps(
        {"details": {"causes": [{"reason": "NamespaceTerminating", "field": "metadata"}]}}
    )

    def refuse(namespace: str, body: Any, timeout: float) -> dict[str, Any]:
        raise error

    core.create_namespaced_event = refuse  # type: ignore[method-assign]
    error = terminating
    events.send(Event(TENANT, "Normal", "SecretsRemoved", "m"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    error = ApiError(status=403, reason="Forbidden")  # RBAC: the operator may not post
    events.send(Event(TENANT, "Normal", "SecretsWritten", "m"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "HTTP 403" in warnings[0]
