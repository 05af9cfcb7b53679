"""What one sync of every target found, namespace by namespace, and its summary: status.targets
and the Events. Pure values, shared by the namespace jobs (fanout) that produce them and
anything that reports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Failed namespaces listed in status.targets.failed (failedCount has them all).
MAX_FAILED_IN_STATUS = 20


@dataclass
class NamespaceResult:
    namespace: str
    written: int = 0
    service_accounts: int = 0
    failure: dict[str, str] | None = None
    removed: bool = False  # this registry's Secrets were removed from the namespace


def conflict(namespace: str, owner: str | None = None) -> dict[str, str]:
    """A namespace where a Secret of the same name is not this object's. ``owner``: the
    registry object it belongs to, when ocireg wrote it for another one."""
    if owner is not None:
        message = (
            f"a Secret of the same name belongs to {owner}; rename targets.secretName here or there"
        )
    else:
        message = (
            "a Secret of the same name exists that ocireg does not manage for this registry; "
            "rename targets.secretName or delete that Secret"
        )
    return {"namespace": namespace, "reason": "SecretConflict", "message": message}


def report(
    results: list[NamespaceResult], selected: int, removed: int
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """status.targets and the Events of one sync of every target."""
    failed = [r.failure for r in results if r.failure]
    written = sum(r.written for r in results)
    events = []
    if written:
        events.append(
            (
                "Normal",
                "SecretsWritten",
                f"wrote {written} Secret(s) across {selected} selected namespace(s)",
            )
        )
    if removed:
        events.append(
            (
                "Normal",
                "SecretsRemoved",
                f"removed pull secrets from {removed} namespace(s) no longer selected",
            )
        )
    for failure in failed:
        events.append(
            (
                "Warning",
                failure["reason"],
                f"namespace {failure['namespace']}: {failure['message']}",
            )
        )
    status = {
        "namespaces": sum(1 for r in results if not r.failure),
        "serviceAccounts": sum(r.service_accounts for r in results if not r.failure),
        "failed": failed[:MAX_FAILED_IN_STATUS],
        "failedCount": len(failed),
    }
    return status, events
