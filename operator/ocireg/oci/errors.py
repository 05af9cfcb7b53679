"""The one exception the registry client raises, with a machine-readable reason that status
conditions can use as-is. Which answer becomes which error is decided where the answer is
read: :mod:`ocireg.oci.answers` (HTTP statuses), :mod:`ocireg.oci.transport` (connections,
TLS, deadlines, size caps)."""

from __future__ import annotations

from typing import Final

from ocireg.api.reasons import Reason

# The reasons the registry client gives (a subset of api.reasons.Reason).
REASONS: Final[frozenset[Reason]] = frozenset(
    {
        Reason.UNREACHABLE,
        Reason.TLS_ERROR,
        Reason.AUTHENTICATION_FAILED,
        Reason.PERMISSION_DENIED,
        Reason.REPOSITORY_NOT_FOUND,
        Reason.RATE_LIMITED,
        Reason.REGISTRY_ERROR,
        Reason.INVALID_RESPONSE,
        # A request for a tenant's object would have gone to a refused address (egress).
        Reason.EGRESS_NOT_ALLOWED,
        # An answer (or a listing over all its pages) over the operator's size caps.
        Reason.ANSWER_TOO_LARGE,
    }
)


def _default_transient(reason: str, status_code: int | None) -> bool:
    if reason in ("Unreachable", "RateLimited"):
        return True
    # A 4xx answer will not change by asking again; a 5xx (or no answer at all) may.
    return reason == "RegistryError" and (status_code is None or status_code >= 500)


class RegistryError(Exception):
    """A registry or token server call failed.

    ``message`` is meant for humans (events, status conditions) and never holds credentials,
    tokens or URLs with query strings; ``transient`` says whether retrying later may help.
    """

    reason: Reason
    message: str
    transient: bool
    retry_after: float | None
    status_code: int | None

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        transient: bool | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown RegistryError reason {reason!r}")
        super().__init__(message)
        self.reason = Reason(reason)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.transient = _default_transient(reason, status_code) if transient is None else transient

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"RegistryError(reason={self.reason!r}, message={self.message!r}, "
            f"status_code={self.status_code!r}, transient={self.transient!r}, "
            f"retry_after={self.retry_after!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments would otherwise be lost when pickled (e.g. across processes).
        return (
            _rebuild,
            (self.reason, self.message, self.status_code, self.retry_after, self.transient),
        )


def _rebuild(
    reason: Reason,
    message: str,
    status_code: int | None,
    retry_after: float | None,
    transient: bool,
) -> RegistryError:
    return RegistryError(
        reason, message, status_code=status_code, retry_after=retry_after, transient=transient
    )


def invalid(message: str, status_code: int | None = None) -> RegistryError:
    """The registry answered something that is not what the OCI distribution API sends."""
    return RegistryError(Reason.INVALID_RESPONSE, message, status_code=status_code)
