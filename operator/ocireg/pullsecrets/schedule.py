"""Pure timing decisions: when a registry object is due for work, and how long to back off.

A registry object runs when something it read changes (a watch event) and otherwise only at
the one time `next_wake` says it is due: its credential's renewal, its re-verification, the
targets' resync or its retry. `work_due` decides what a run does, so a run that finds
nothing changed costs the reads of its Secrets and no writes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ocireg.api.names import REFRESH_HANDLED
from ocireg.api.status import REQUEST_RECORD_LENGTH
from ocireg.backoff import Backoff

# Failures retry after 10 s, 20 s, 40 s ... never later than this.
BACKOFF_BASE = 10.0
BACKOFF_CAP = 300.0
# Targets (namespaces, ServiceAccounts) are re-listed this often even when nothing signalled a
# change, to repair drift such as a pull Secret deleted by hand.
TARGET_RESYNC = 300.0


class Work(StrEnum):
    none = "none"  # nothing changed and nothing is due
    verify = "verify"  # resolve, verify against the registry, then write targets
    targets = "targets"  # credentials unchanged and verified; re-sync targets only


@dataclass(frozen=True)
class Memory:
    """What the last run of one registry object left behind (monotonic seconds)."""

    fingerprint: str | None = None  # of the inputs verified last time (None: never)
    verified_at: float | None = None
    synced_at: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    failed_fingerprint: str | None = None
    failure: str | None = None  # "reason: message" of the last failure (what was logged)


def fingerprint(*parts: Any) -> str:
    """A stable digest of the inputs (spec, resolved credential, CA bundle). Only the digest
    is kept, never the credential."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# A failing registry object (and a failing mint: providers.cache) retries on this schedule.
RECONCILE_BACKOFF = Backoff(BACKOFF_BASE, BACKOFF_CAP)


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the n-th consecutive failure of a registry object."""
    return RECONCILE_BACKOFF.delay(failures, retry_after)


def work_due(
    memory: Memory,
    current: str,
    now: float,
    verify_interval: float,
    resync: float = TARGET_RESYNC,
) -> Work:
    """What a tick should do, given the fingerprint of the inputs as they are now."""
    if memory.failures:
        # Changed inputs (the user fixed the Secret) are tried at once; otherwise wait.
        if current != memory.failed_fingerprint or now >= memory.retry_at:
            return Work.verify
        return Work.none
    if current != memory.fingerprint or memory.verified_at is None:
        return Work.verify
    if now - memory.verified_at >= verify_interval:
        return Work.verify
    if memory.synced_at is None or now - memory.synced_at >= resync:
        return Work.targets
    return Work.none


# Never wake an object sooner than this after a run (a credential already past renewal, a
# clock step): one run a second at most, not a spin.
MIN_WAKE_SECONDS = 1.0


def next_wake(
    memory: Memory,
    now: float,
    verify_interval: float | None,
    resync: float = TARGET_RESYNC,
    renew_in: float | None = None,
) -> float:
    """Seconds from ``now`` until the object is next due by time alone: its retry while it
    fails, else the earliest of re-verification, resync and its credential's renewal
    (``renew_in``, seconds). ``verify_interval`` None: the spec could not be read."""
    if memory.failures:
        return max(MIN_WAKE_SECONDS, memory.retry_at - now)
    due = [resync - (now - memory.synced_at) if memory.synced_at is not None else 0.0]
    if verify_interval is not None:
        verified = memory.verified_at
        due.append(verify_interval - (now - verified) if verified is not None else 0.0)
    if renew_in is not None:
        due.append(renew_in)
    return max(MIN_WAKE_SECONDS, min(due))


def inputs_due(memory: Memory, now: float, verify_interval: float, renewal_due: bool) -> bool:
    """Whether a run must read its inputs although no watch event said they changed: it has
    not succeeded yet (or is failing), its re-verification or its credential's renewal is
    due. Otherwise (a resync) the last run's spec and credential still hold: the watches
    report every change of what it read, so a resync costs no API request."""
    if memory.failures or memory.verified_at is None or memory.fingerprint is None:
        return True
    return renewal_due or now - memory.verified_at >= verify_interval


def after_success(memory: Memory, current: str, now: float) -> Memory:
    return Memory(fingerprint=current, verified_at=now, synced_at=now)


def after_targets(memory: Memory, now: float) -> Memory:
    return Memory(
        fingerprint=memory.fingerprint,
        verified_at=memory.verified_at,
        synced_at=now,
    )


def after_failure(
    memory: Memory,
    current: str,
    now: float,
    retry_after: float | None = None,
    failure: str | None = None,
) -> Memory:
    failures = memory.failures + 1
    return Memory(
        fingerprint=memory.fingerprint,
        verified_at=memory.verified_at,
        synced_at=memory.synced_at,
        failures=failures,
        retry_at=now + backoff(failures, retry_after),
        failed_fingerprint=current,
        failure=failure,
    )


def failure_is_news(memory: Memory, failure: str) -> bool:
    """Whether a failure is worth a log line: the first since the object last worked, or a
    different one (reason or message) than the last; a retry that fails the same way is not."""
    return not memory.failures or memory.failure != failure


def request_record(value: str) -> str:
    """How a refresh request's value is recorded in status: as it is, or past
    REQUEST_RECORD_LENGTH characters its digest (a tenant's annotation is never copied into
    status whole, and a recorded value still compares equal to the request it handled)."""
    if len(value) <= REQUEST_RECORD_LENGTH:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def refresh_requests(
    annotations: Mapping[str, Any] | None, status: Mapping[str, Any] | None
) -> dict[str, str]:
    """The refreshes asked for and not handled yet: for each annotation of REFRESH_HANDLED
    that is set and whose (recorded) value differs from what its status field holds, that
    field and the value to record once it is handled. Empty: nothing pending, whatever
    else changed; the same value again is never handled twice, a restart included."""
    pending: dict[str, str] = {}
    for annotation, handled in REFRESH_HANDLED.items():
        value = (annotations or {}).get(annotation)
        if not isinstance(value, str) or not value:
            continue
        record = request_record(value)
        if (status or {}).get(handled) != record:
            pending[handled] = record
    return pending
