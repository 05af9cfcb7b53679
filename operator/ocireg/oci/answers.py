"""What a registry's or its token server's refusal means: the :class:`RegistryError` (reason,
and a message safe to show, naming what to check) for an HTTP status, with the error codes
and a short, redacted summary of the error body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

import requests

from ocireg.api.reasons import Reason
from ocireg.oci.errors import RegistryError
from ocireg.oci.headers import parse_retry_after
from ocireg.oci.transport import Transport
from ocireg.oci.urls import url_path

MAX_ERROR_BYTES: Final = 64 * 1024
_MAX_DETAIL: Final = 300


@dataclass(frozen=True)
class Target:
    """What a request was about, to turn an HTTP status into a precise error."""

    kind: str  # "base" | "repository" | "manifest" | "blob" | "upload" | "catalog"
    repository: str | None = None
    reference: str | None = None
    action: str = "pull"


BASE: Final = Target("base")


def requires_credentials(host: str, detail: str = "") -> RegistryError:
    return RegistryError(
        Reason.AUTHENTICATION_FAILED,
        f"registry {host} requires credentials: it refuses anonymous access"
        f"{detail}; configure credentials for it",
        status_code=401,
    )


def server_detail(transport: Transport, resp: requests.Response) -> tuple[list[str], str]:
    """(error codes, a short redacted summary) from a registry or OAuth2 error body."""
    try:
        body = json.loads(transport.read_capped(resp, MAX_ERROR_BYTES, "error body"))
    except (RegistryError, ValueError, UnicodeDecodeError, RecursionError):
        return [], ""
    codes: list[str] = []
    parts: list[str] = []
    if isinstance(body, dict):
        errors = body.get("errors")
        for error in errors[:3] if isinstance(errors, list) else ():
            if not isinstance(error, dict):
                continue
            code, message = error.get("code"), error.get("message")
            if isinstance(code, str):
                codes.append(code.upper())
            parts.append(": ".join(x for x in (code, message) if isinstance(x, str) and x))
        for key in ("error", "error_description", "details", "message"):
            if isinstance(body.get(key), str):
                parts.append(body[key])
    text = " ".join("".join(c if c.isprintable() else " " for c in "; ".join(parts)).split())
    text = transport.redact(text)  # after normalising, so nothing can re-form a secret
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return codes, text


def status_error(
    transport: Transport,
    resp: requests.Response,
    method: str,
    url: str,
    target: Target,
    anonymous: bool,
) -> RegistryError:
    """The registry's refusal of ``method url``; ``anonymous``: no credentials were sent."""
    status = resp.status_code
    codes, detail = server_detail(transport, resp)
    said = f" (the registry said: {detail})" if detail else ""
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    wait = f"; retry after {retry_after:.0f} s" if retry_after is not None else ""
    host, repo = transport.host, target.repository
    reason: Reason
    if status == 429:
        reason = Reason.RATE_LIMITED
        message = f"registry {host} is rate limiting requests (HTTP 429){wait}{said}"
    elif status >= 500:
        reason = Reason.REGISTRY_ERROR
        what = "is unavailable (HTTP 503)" if status == 503 else f"failed (HTTP {status})"
        message = f"registry {host} {what} on {method} {url_path(url)}{wait}{said}"
    elif status == 401 and target.kind == "base":
        if anonymous:
            return requires_credentials(host, said)
        reason = Reason.AUTHENTICATION_FAILED
        message = (
            f"registry {host} rejected the credentials (HTTP 401){said}; check the "
            "username and password or token in the referenced Secret"
        )
    elif status in (401, 403) and repo is not None:
        reason = Reason.PERMISSION_DENIED
        if anonymous:
            message = (
                f"anonymous {target.action} access to repository {repo} on {host} is denied "
                f"(HTTP {status}){said}; the repository may be private (configure "
                "credentials) or may not exist"
            )
        else:
            message = (
                f"the credentials have no {target.action} access to repository {repo} on "
                f"{host} (HTTP {status}){said}"
            )
    elif status in (401, 403):
        reason = Reason.PERMISSION_DENIED
        message = f"registry {host} refused access (HTTP {status}){said}"
    elif status == 404 and target.kind == "base":
        reason = Reason.REGISTRY_ERROR
        message = (
            f"{host} does not serve the OCI distribution API at /v2/ (HTTP 404); "
            "check the registry address"
        )
    elif status == 404 and (target.kind in ("repository", "upload") or "NAME_UNKNOWN" in codes):
        reason = Reason.REPOSITORY_NOT_FOUND
        message = (
            f"repository {repo} does not exist on {host} or is not visible to these "
            f"credentials{said}"
        )
    elif status == 404:
        reason = Reason.REGISTRY_ERROR
        message = f"{target.kind} {target.reference} not found in repository {repo} on {host}"
    else:
        reason = Reason.REGISTRY_ERROR
        message = f"registry {host} answered HTTP {status} to {method} {url_path(url)}{said}"
    return RegistryError(reason, message, status_code=status, retry_after=retry_after)


def token_error(
    transport: Transport,
    resp: requests.Response,
    server: str,
    scope: str | None,
    anonymous: bool,
) -> RegistryError:
    """The token server's refusal of a token for ``scope``."""
    host = transport.host
    status = resp.status_code
    _, detail = server_detail(transport, resp)
    said = f" (it said: {detail})" if detail else ""
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        wait = f"; retry after {retry_after:.0f} s" if retry_after is not None else ""
        return RegistryError(
            Reason.RATE_LIMITED if status == 429 else Reason.REGISTRY_ERROR,
            f"token server {server} of registry {host} answered HTTP {status}{wait}{said}",
            status_code=status,
            retry_after=retry_after,
        )
    if status in (400, 401):
        if anonymous:
            return requires_credentials(host, f" (token server {server}: HTTP {status})")
        return RegistryError(
            Reason.AUTHENTICATION_FAILED,
            f"token server {server} of registry {host} rejected the credentials "
            f"(HTTP {status}){said}; check the username and password or token",
            status_code=status,
        )
    if status == 403:
        return RegistryError(
            Reason.PERMISSION_DENIED,
            f"token server {server} of registry {host} refused access"
            f"{f' to {scope}' if scope else ''} (HTTP 403){said}",
            status_code=status,
        )
    return RegistryError(
        Reason.REGISTRY_ERROR,
        f"token server {server} of registry {host} answered HTTP {status}{said}",
        status_code=status,
    )
