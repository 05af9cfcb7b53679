"""api.conditions: the one condition setter (Flux's conditions.Set semantics), used by the
pull-secret reconcile and the chart sync."""

from __future__ import annotations

from ocireg.api.conditions import (
    condition,
    find_condition,
    remove_condition,
    same_condition,
    set_conditions,
)

OLD = "2020-01-01T00:00:00Z"


def test_an_unchanged_status_keeps_its_transition_time_and_a_flip_takes_the_new_one() -> None:
    old = [condition("Ready", True, "Ready", "fine", 1, OLD)]
    kept = set_conditions(old, [condition("Ready", True, "Ready", "still fine", 2, "now")])
    assert kept[0]["lastTransitionTime"] == OLD
    assert kept[0]["message"] == "still fine"
    assert kept[0]["observedGeneration"] == 2
    flipped = set_conditions(
        old, [condition("Ready", False, "AuthenticationFailed", "no", 2, "now")]
    )
    assert flipped[0]["lastTransitionTime"] == "now"
    assert flipped[0]["status"] == "False"


def test_other_writers_conditions_stay_where_and_as_they_are() -> None:
    charts = condition("ChartsSynced", True, "Synced", "3 charts", 1, OLD)
    ready = condition("Ready", True, "Ready", "fine", 1, OLD)
    result = set_conditions([charts, ready], [condition("Ready", False, "X", "no", 1, "now")])
    assert [c["type"] for c in result] == ["ChartsSynced", "Ready"]
    assert result[0] == charts


def test_a_new_type_is_appended_and_the_input_lists_are_not_changed() -> None:
    old = [condition("Ready", True, "Ready", "fine", 1, OLD)]
    new = [condition("Stalled", True, "AuthenticationFailed", "refused", 1, "now")]
    result = set_conditions(old, new)
    assert [c["type"] for c in result] == ["Ready", "Stalled"]
    result[0]["status"] = "False"
    assert old[0]["status"] == "True"


def test_reconciling_and_stalled_are_removed_when_set_false() -> None:
    # Abnormal-true (kstatus, Flux): present only while True, so a healthy object shows
    # neither, and one written by an older operator as False goes at the next write.
    stalled = condition("Stalled", True, "AuthenticationFailed", "refused", 1, OLD)
    old = [condition("Ready", False, "AuthenticationFailed", "refused", 1, OLD), stalled]
    old.append(condition("Reconciling", False, "Reconciled", "up to date", 1, OLD))
    result = set_conditions(
        old,
        [
            condition("Ready", True, "Ready", "fine", 2, "now"),
            condition("Reconciling", False, "Reconciled", "", 2, "now"),
            condition("Stalled", False, "Reconciled", "", 2, "now"),
        ],
    )
    assert [(c["type"], c["status"]) for c in result] == [("Ready", "True")]
    # True ones are set as any other; Ready's polarity is not touched.
    again = set_conditions(result, [dict(stalled, lastTransitionTime="later")])
    assert [c["type"] for c in again] == ["Ready", "Stalled"]
    kept = set_conditions(again, [condition("Ready", False, "X", "no", 2, "now")])
    assert [c["type"] for c in kept] == ["Ready", "Stalled"]


def test_unknown_status_find_remove_and_same() -> None:
    unknown = condition("Ready", None, "Pending", "", None, "now")
    assert unknown["status"] == "Unknown"
    both = [unknown, condition("ChartsSynced", True, "Synced", "", 1, "now")]
    assert find_condition(both, "ChartsSynced") is both[1]
    assert find_condition(both, "Stalled") is None
    assert [c["type"] for c in remove_condition(both, "Ready")] == ["ChartsSynced"]
    later = dict(unknown, lastTransitionTime="later")
    assert same_condition(unknown, later)
    assert not same_condition(unknown, dict(unknown, message="other"))
    assert not same_condition(unknown, None)
