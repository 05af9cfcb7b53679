"""Errors that become status conditions: a reason a user can search for (api.reasons, which
also says whether it stalls), a message saying what to do, and whether retrying alone can fix
it."""

from __future__ import annotations

from ocireg.api.reasons import Reason


class ReconcileError(Exception):
    def __init__(
        self,
        reason: Reason,
        message: str,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = Reason(reason)  # a value nothing declared fails here, not in a status
        self.message = message
        self.transient = transient
        self.retry_after = retry_after

    @property
    def stalls(self) -> bool:
        """Only a change by the user can fix it (the Stalled condition): its reason says so,
        unless the error is transient."""
        return self.reason.stalls and not self.transient
