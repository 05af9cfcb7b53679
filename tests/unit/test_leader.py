"""The Lease election's rules, with the API faked by an in-memory Lease store that has the
API server's optimistic concurrency (resourceVersion) and a hand-driven clock. The real
thing, two operator processes against the real API server, is tests/e2e/test_ha.py."""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from ocireg.kube.leader import LeaderElection, Record, Timing, may_take


def _record(holder: str, seconds: int = 15) -> Record:
    return Record(holder, seconds, "2026-11-24T10:00:00.000000Z", 0, "1")


@pytest.mark.parametrize(
    ("holder", "unchanged_for", "allowed"),
    [
        ("", 0, True),  # handed back
        ("me", 0, True),  # ours: renew
        ("other", 0, False),
        ("other", 14.9, False),
        ("other", 15, True),  # not renewed for a whole lease
    ],
)
def test_may_take(holder: str, unchanged_for: float, allowed: bool) -> None:
    assert may_take(_record(holder), "me", unchanged_for, 15) is allowed


def test_a_lease_without_a_duration_uses_ours() -> None:
    assert not may_take(_record("other", 0), "me", 20, 30)
    assert may_take(_record("other", 0), "me", 30, 30)


class FakeLeases:
    """One Lease, stored as JSON; replace with a stale resourceVersion is a 409."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.api_client = None

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return json.loads(json.dumps(self.lease))  # a copy, as a new answer would be

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self._store(body)

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> None:
        self._check()
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._store(body)

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"].get("holderIdentity")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _candidate(leases: FakeLeases, clock: Clock, me: str) -> LeaderElection:
    return LeaderElection("ops", "ocireg-leader", me, Timing(), leases, clock)


def test_first_candidate_creates_the_lease_and_the_second_waits(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    assert a.try_acquire_or_renew()
    assert leases.holder == "a"
    assert leases.lease is not None
    assert leases.lease["spec"]["leaseDurationSeconds"] == 15
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # renewing is always allowed
    assert leases.holder == "a"


def test_a_renewing_holder_is_never_displaced(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    a.try_acquire_or_renew()
    for _ in range(20):  # 40 s of a holder renewing every 2 s
        clock.now += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert leases.holder == "a"


def test_a_silent_holder_is_replaced_after_one_lease_duration(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b first sees the lease now
    clock.now += 14
    assert not b.try_acquire_or_renew()
    clock.now += 1
    assert b.try_acquire_or_renew()
    assert leases.holder == "b"
    assert leases.lease is not None
    assert leases.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()  # the old holder sees b renew-fresh and stays out


def test_release_lets_the_standby_in_at_once(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    assert a.acquire()
    assert not b.try_acquire_or_renew()
    a.release()
    assert leases.holder is None
    assert b.try_acquire_or_renew()
    assert leases.holder == "b"


def test_release_leaves_a_lease_someone_else_holds(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    assert a.acquire()
    clock.now += 1
    b.try_acquire_or_renew()
    clock.now += 15
    assert b.try_acquire_or_renew()  # a went silent; b took over
    a.release()  # a, late, must not hand back b's lease
    assert leases.holder == "b"


def test_a_stale_write_loses_the_race(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    assert a.try_acquire_or_renew()
    body = leases.read_namespaced_lease("ocireg-leader", "ops")
    assert a.try_acquire_or_renew()  # the lease moves on
    clock.now += 100
    assert not b._write(body, _record("a"))  # b's view is one version old: 409


def test_keep_reports_the_loss_after_the_renew_deadline(leases, clock) -> None:
    a = _candidate(leases, clock, "a")
    a.timing = Timing(retry_period=0.001)
    assert a.acquire()
    leases.down = True
    lost = threading.Event()

    def tick_clock(*_: object) -> None:
        clock.now += 1

    original = a.try_acquire_or_renew

    def failing_round() -> bool:
        tick_clock()
        return original()

    a.try_acquire_or_renew = failing_round  # type: ignore[method-assign]
    a.keep(lost.set, threading.Event())
    assert lost.is_set()
    assert clock.now - 1000.0 >= a.timing.renew_deadline
    assert not a.leading


def test_keep_stops_quietly_when_asked(leases, clock) -> None:
    a = _candidate(leases, clock, "a")
    a.timing = Timing(retry_period=0.001)
    assert a.acquire()
    stop, lost = threading.Event(), threading.Event()
    stop.set()
    a.keep(lost.set, stop)
    assert not lost.is_set()
    assert a.leading


def test_acquire_gives_up_when_stopped(leases, clock) -> None:
    a, b = _candidate(leases, clock, "a"), _candidate(leases, clock, "b")
    a.try_acquire_or_renew()
    stop = threading.Event()
    stop.set()
    assert not b.acquire(stop)
    assert not b.leading


def test_errors_are_a_failed_round_not_a_crash(leases, clock) -> None:
    a = _candidate(leases, clock, "a")
    leases.down = True
    assert not a.try_acquire_or_renew()
    leases.down = False
    assert a.try_acquire_or_renew()
