"""The one way ocireg writes status conditions (the pull-secret reconcile and the chart sync
alike), with the semantics of Flux's conditions.Set: a condition replaces the one of its type
where it stands (or is appended), keeps that one's lastTransitionTime while its status holds,
and every condition of another type is left as it was, whoever wrote it. Reconciling and
Stalled have kstatus' "abnormal-true" polarity: they are present only while True, so setting
one False removes it (as Flux's conditions.Delete does) and a healthy object carries neither.
Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Condition = dict[str, Any]
# What makes two conditions the same to a reader (the transition time aside).
_SHOWN = ("status", "reason", "message", "observedGeneration")
# Present only while True (kstatus: Reconciling True is InProgress, Stalled True is Failed;
# their absence is the normal state).
ABNORMAL_TRUE = frozenset({"Reconciling", "Stalled"})


def condition(
    kind: str, ok: bool | None, reason: str, message: str, generation: int | None, now: str
) -> Condition:
    return {
        "type": kind,
        "status": "Unknown" if ok is None else ("True" if ok else "False"),
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now,
    }


def set_conditions(conditions: Iterable[Condition], new: Iterable[Condition]) -> list[Condition]:
    """``conditions`` with each of ``new`` set: in place of the one of its type (keeping
    its lastTransitionTime while the status is unchanged), or appended; an abnormal-true
    type set False is removed instead."""
    result = [dict(c) for c in conditions]
    for wanted in new:
        wanted = dict(wanted)
        if wanted["type"] in ABNORMAL_TRUE and wanted["status"] == "False":
            result = remove_condition(result, wanted["type"])
            continue
        at = next((i for i, c in enumerate(result) if c.get("type") == wanted["type"]), None)
        if at is None:
            result.append(wanted)
            continue
        before = result[at]
        if before.get("status") == wanted["status"] and "lastTransitionTime" in before:
            wanted["lastTransitionTime"] = before["lastTransitionTime"]
        result[at] = wanted
    return result


def find_condition(conditions: Iterable[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def remove_condition(conditions: Iterable[Condition], kind: str) -> list[Condition]:
    return [c for c in conditions if c.get("type") != kind]


def same_condition(a: Condition | None, b: Condition | None) -> bool:
    """Whether a reader would see no difference (the transition time aside)."""
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in _SHOWN)
