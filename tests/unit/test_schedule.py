"""When a tick does work: the decisions that keep steady state free of writes and failures
free of hot loops."""

from __future__ import annotations

import dataclasses

import pytest

from ocireg.pullsecrets import schedule
from ocireg.pullsecrets.schedule import Memory, Work, work_due

HOUR = 3600.0


def test_first_tick_verifies() -> None:
    assert work_due(Memory(), "a", now=0, verify_interval=HOUR) is Work.verify


def test_unchanged_inputs_do_nothing_until_something_is_due() -> None:
    memory = schedule.after_success(Memory(), "a", now=100)
    assert work_due(memory, "a", now=110, verify_interval=HOUR) is Work.none
    assert work_due(memory, "a", now=100 + schedule.TARGET_RESYNC, verify_interval=HOUR) is (
        Work.targets
    )
    assert work_due(memory, "a", now=100 + HOUR, verify_interval=HOUR) is Work.verify


def test_target_resync_restarts_the_resync_clock_only() -> None:
    memory = schedule.after_success(Memory(), "a", now=0)
    memory = schedule.after_targets(memory, now=schedule.TARGET_RESYNC)
    assert memory.verified_at == 0
    assert work_due(memory, "a", now=schedule.TARGET_RESYNC + 1, verify_interval=HOUR) is (
        Work.none
    )


def test_changed_inputs_verify_at_once() -> None:
    memory = schedule.after_success(Memory(), "a", now=100)
    assert work_due(memory, "b", now=101, verify_interval=HOUR) is Work.verify


def test_failure_waits_for_backoff_unless_the_inputs_change() -> None:
    memory = schedule.after_failure(Memory(), "bad", now=0)
    assert memory.failures == 1
    assert schedule.BACKOFF_BASE * 0.9 <= memory.retry_at <= schedule.BACKOFF_BASE * 1.1
    assert work_due(memory, "bad", now=1, verify_interval=HOUR) is Work.none
    assert work_due(memory, "fixed", now=1, verify_interval=HOUR) is Work.verify
    assert work_due(memory, "bad", now=memory.retry_at, verify_interval=HOUR) is Work.verify


def test_success_after_failure_clears_the_failures() -> None:
    memory = schedule.after_failure(Memory(), "bad", now=0)
    memory = schedule.after_success(memory, "good", now=20)
    assert memory.failures == 0
    assert work_due(memory, "good", now=21, verify_interval=HOUR) is Work.none


def test_a_failure_keeps_what_was_verified_before() -> None:
    good = schedule.after_success(Memory(), "good", now=0)
    failed = schedule.after_failure(good, "bad", now=50)
    assert failed.fingerprint == "good"
    assert failed.verified_at == 0


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 30, 1000])
def test_backoff_grows_and_is_capped(failures: int) -> None:
    backoff = dataclasses.replace(schedule.RECONCILE_BACKOFF, jitter=0).delay
    delay = backoff(failures)
    assert delay == min(schedule.BACKOFF_CAP, schedule.BACKOFF_BASE * 2 ** (failures - 1))
    assert backoff(failures + 1) >= delay


def test_backoff_honours_retry_after_within_reason() -> None:
    backoff = dataclasses.replace(schedule.RECONCILE_BACKOFF, jitter=0).delay
    assert backoff(1, retry_after=120) == 120
    assert backoff(1, retry_after=10**9) == schedule.BACKOFF_CAP * 4
    assert backoff(6, retry_after=1) == schedule.BACKOFF_CAP


def test_backoff_jitter_stays_within_its_fraction() -> None:
    delays = {schedule.backoff(3) for _ in range(200)}
    base = schedule.BACKOFF_BASE * 4
    assert len(delays) > 1
    assert all(base * 0.9 <= d <= base * 1.1 for d in delays)


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = schedule.fingerprint({"server": "r", "x": [1, 2]}, ("basic", "u", "p"))
    b = schedule.fingerprint({"x": [1, 2], "server": "r"}, ("basic", "u", "p"))
    c = schedule.fingerprint({"server": "r", "x": [1, 2]}, ("basic", "u", "q"))
    assert a == b != c
    assert len(a) == 64
    assert set(a) <= set("0123456789abcdef")


def test_next_wake_is_the_earliest_due_time() -> None:
    memory = schedule.after_success(Memory(), "a", now=100)
    # Resync (300 s) before re-verification (an hour); a renewal sooner than both wins.
    assert schedule.next_wake(memory, 100, HOUR, resync=300) == 300
    assert schedule.next_wake(memory, 250, HOUR, resync=300) == 150
    assert schedule.next_wake(memory, 100, 120, resync=300) == 120
    assert schedule.next_wake(memory, 100, HOUR, resync=300, renew_in=42) == 42
    # Overdue (or a renewal already past): soon, but never a spin.
    assert schedule.next_wake(memory, 10_000, HOUR, resync=300) == schedule.MIN_WAKE_SECONDS
    assert schedule.next_wake(memory, 100, HOUR, renew_in=-5) == schedule.MIN_WAKE_SECONDS
    # Never run: at once (the minimum); a spec that could not be read has no verify time.
    assert schedule.next_wake(Memory(), 0, None) == schedule.MIN_WAKE_SECONDS


def test_next_wake_of_a_failing_object_is_its_retry() -> None:
    memory = schedule.after_failure(schedule.after_success(Memory(), "a", 0), "b", now=50)
    assert memory.retry_at > 50
    assert schedule.next_wake(memory, 50, HOUR, renew_in=1) == memory.retry_at - 50


def test_a_resync_reads_nothing_unless_verification_or_renewal_is_due() -> None:
    memory = schedule.after_success(Memory(), "a", now=100)
    assert not schedule.inputs_due(memory, 100 + schedule.TARGET_RESYNC, HOUR, False)
    assert schedule.inputs_due(memory, 100 + HOUR, HOUR, False)  # re-verification
    assert schedule.inputs_due(memory, 200, HOUR, True)  # a minted credential to renew
    assert schedule.inputs_due(Memory(), 0, HOUR, False)  # never succeeded
    failing = schedule.after_failure(memory, "b", now=150)
    assert schedule.inputs_due(failing, 160, HOUR, False)


def test_refresh_requests_are_pending_until_their_value_is_recorded() -> None:
    ours, flux = "ocireg.dev/refresh-requested-at", "reconcile.fluxcd.io/requestedAt"
    assert schedule.refresh_requests(None, None) == {}
    assert schedule.refresh_requests({"other": "x", ours: ""}, {}) == {}
    assert schedule.refresh_requests({ours: "t1"}, {}) == {"lastHandledRefreshAt": "t1"}
    assert schedule.refresh_requests({ours: "t1"}, {"lastHandledRefreshAt": "t1"}) == {}
    assert schedule.refresh_requests({ours: "t2"}, {"lastHandledRefreshAt": "t1"}) == {
        "lastHandledRefreshAt": "t2"
    }
    # Each annotation has its own record: one handled never hides the other.
    both = {ours: "t1", flux: "f1"}
    assert schedule.refresh_requests(both, {"lastHandledRefreshAt": "t1"}) == {
        "lastHandledReconcileAt": "f1"
    }


def test_a_long_refresh_request_is_recorded_as_its_digest_and_still_matches() -> None:
    value = "x" * 10_000
    pending = schedule.refresh_requests({"ocireg.dev/refresh-requested-at": value}, {})
    record = pending["lastHandledRefreshAt"]
    assert record.startswith("sha256:")
    assert len(record) <= 128
    status = {"lastHandledRefreshAt": record}
    assert schedule.refresh_requests({"ocireg.dev/refresh-requested-at": value}, status) == {}


def test_a_failure_is_news_once_until_it_changes() -> None:
    first = schedule.after_failure(Memory(), "f", 0.0, failure="A: x")
    assert schedule.failure_is_news(Memory(), "A: x")
    assert not schedule.failure_is_news(first, "A: x")
    assert schedule.failure_is_news(first, "B: y")
