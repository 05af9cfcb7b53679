"""Errors that become status conditions: a reason a user can search for, a message saying
what to do, and whether retrying alone can fix it."""

from __future__ import annotations


class ReconcileError(Exception):
    def __init__(
        self,
        reason: str,
        message: str,
        transient: bool = False,
        retry_after: float | None = None,
        *,
        stalls: bool | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        # Said where the error is raised: True when only a change by the user can fix it
        # (the Stalled condition), False when retrying can. None: decided by its reason
        # (reconcile's list of stalling reasons).
        self.stalls = stalls
