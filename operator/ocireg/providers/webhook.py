"""Credentials from an HTTP endpoint (Cycle's "webhook" source): GET the URL with headers
from a Secret; the answer is base64 `username:token` or a JSON object.

A tenant's webhook could be aimed at the cloud metadata service or at services inside the
cluster network; for the namespaced kind the request obeys the operator's egress policy
(ocireg.egress: public addresses only unless the operator allows ranges, checked when the
host is resolved and again on the connected socket before a byte is sent, so DNS rebinding
cannot lead the request, or the Secret's headers, to a refused address). `timeoutSeconds` is
the whole budget of one call: name lookup and address check, connect, TLS, headers and the
(capped) answer. Header values must be printable ASCII (InvalidSecret otherwise)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from ocireg import egress
from ocireg.api.cloud import WebhookAuth, WebhookFormat
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import RegistrySpec
from ocireg.oci import parse_retry_after
from ocireg.oci.auth import header_safe
from ocireg.providers import ResolveContext

MAX_ANSWER_BYTES = 64 * 1024
_SAFE_HEADER = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


# One policy for every outbound request (ocireg.egress); kept under these names for callers.
address_refused = egress.address_refused


def _refusal(host: str, address: object) -> ReconcileError:
    return ReconcileError(
        Reason.WEBHOOK_ADDRESS_NOT_ALLOWED,
        egress.EgressRefused(host, str(address)).describe("the webhook host"),
    )


def check_destination(url: str, allowed_cidrs: Iterable[str], resolve: Any = None) -> None:
    """Every address the webhook's host resolves to must be one a tenant may reach."""
    host = urlsplit(url).hostname
    if not host:
        raise ReconcileError(Reason.INVALID_SPEC, "the webhook url has no host")
    policy = egress.EgressPolicy.for_object(True, allowed_cidrs)
    try:
        policy.check_host(host, resolve)
    except egress.EgressRefused as refused:
        raise _refusal(host, refused.address) from None
    except OSError:
        raise ReconcileError(
            Reason.WEBHOOK_UNREACHABLE, f"cannot resolve the webhook host {host}", transient=True
        ) from None


def _field(answer: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(answer, Mapping) or part not in answer:
            return None
        answer = answer[part]
    return answer


def _expiry(value: Any, what: str, now: dt.datetime) -> dt.datetime:
    if isinstance(value, bool):
        raise ReconcileError(Reason.INVALID_PROVIDER_ANSWER, f"the webhook's {what} is not a time")
    if isinstance(value, int | float):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise ReconcileError(
                Reason.INVALID_PROVIDER_ANSWER, f"the webhook's {what} is not a usable Unix time"
            ) from None
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ReconcileError(
                Reason.INVALID_PROVIDER_ANSWER, f"the webhook's {what} is not an RFC 3339 time"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    raise ReconcileError(
        Reason.INVALID_PROVIDER_ANSWER, f"the webhook's {what} is missing or not a time"
    )


def parse_answer(
    body: bytes, auth: WebhookAuth, now: dt.datetime
) -> tuple[str, str, dt.datetime | None]:
    """(username, password, expires_at) from the webhook's answer; raises a clear
    InvalidProviderAnswer that never quotes the answer (it may hold the secret)."""
    if auth.format is WebhookFormat.basic:
        try:
            text = base64.b64decode(body.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ReconcileError(
                Reason.INVALID_PROVIDER_ANSWER, "the webhook's answer is not base64 username:token"
            ) from None
        username, sep, password = text.partition(":")
        if not sep or not password:
            raise ReconcileError(
                Reason.INVALID_PROVIDER_ANSWER,
                "the webhook's answer decodes to no username:token pair",
            )
        return username or (auth.username or ""), password, None
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReconcileError(
            Reason.INVALID_PROVIDER_ANSWER, "the webhook's answer is not JSON"
        ) from None
    password = _field(answer, auth.password_field)
    if not isinstance(password, str) or not password:
        raise ReconcileError(
            Reason.INVALID_PROVIDER_ANSWER,
            f"the webhook's JSON has no string field {auth.password_field!r}",
        )
    username = _field(answer, auth.username_field)
    if username is not None and not isinstance(username, str):
        raise ReconcileError(
            Reason.INVALID_PROVIDER_ANSWER,
            f"the webhook's field {auth.username_field!r} is not a string",
        )
    expires = None
    if auth.expires_at_field and _field(answer, auth.expires_at_field) is not None:
        expires = _expiry(_field(answer, auth.expires_at_field), auth.expires_at_field, now)
    elif auth.expires_in_field and _field(answer, auth.expires_in_field) is not None:
        seconds = _field(answer, auth.expires_in_field)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise ReconcileError(
                Reason.INVALID_PROVIDER_ANSWER,
                f"the webhook's {auth.expires_in_field!r} is not a number",
            )
        try:
            expires = now + dt.timedelta(seconds=seconds)
        except (OverflowError, ValueError):
            raise ReconcileError(
                Reason.INVALID_PROVIDER_ANSWER,
                f"the webhook's {auth.expires_in_field!r} is not a usable number of seconds",
            ) from None
    return username or auth.username or "", password, expires


def _headers(ctx: ResolveContext, auth: WebhookAuth) -> dict[str, str]:
    if auth.headers_secret_ref is None:
        return {}
    namespace, data = ctx.secret(auth.headers_secret_ref)
    where = f"Secret {namespace}/{auth.headers_secret_ref.name}"
    headers = {}
    for key, value in data.items():
        if not key or not set(key) <= _SAFE_HEADER:
            raise ReconcileError(
                Reason.INVALID_SECRET, f"{where}: key {key!r} is not a usable HTTP header name"
            )
        # Printable ASCII only (header_safe): anything else http.client cannot encode
        # (UnicodeEncodeError deep in the request) or mangles. Never quoted back: the value
        # is the webhook's secret.
        text = value.decode("utf-8", errors="replace").strip()
        if not header_safe(text):
            raise ReconcileError(
                Reason.INVALID_SECRET,
                f"{where}: the value of {key!r} is not a usable HTTP header value "
                "(printable ASCII only: no control characters, line breaks or non-ASCII)",
            )
        headers[key] = text
    return headers


def mint(spec: RegistrySpec, ctx: ResolveContext, headers: dict[str, str]) -> Credential:
    auth = spec.auth.webhook if spec.auth else None
    assert auth is not None
    allowed = ctx.config.egress_allowed_cidrs
    host = urlsplit(auth.url).hostname
    budget = float(auth.timeout_seconds)
    too_slow = ReconcileError(
        Reason.WEBHOOK_UNREACHABLE,
        f"the webhook {host} sent no complete answer within {budget:g} s "
        "(auth.webhook.timeoutSeconds)",
        transient=True,
    )
    try:
        with (
            egress.session(egress.EgressPolicy.for_object(ctx.namespaced, allowed)) as session,
            egress.deadline(budget) as deadline,
        ):
            if ctx.namespaced:
                # Inside the budget: the lookup is part of the call (egress.lookup).
                check_destination(auth.url, allowed)
            try:
                # Redirects could lead anywhere the first answer names: refuse them.
                response = session.get(
                    auth.url,
                    headers={"Accept": "application/json, text/plain", **headers},
                    timeout=budget,
                    verify=not auth.insecure_skip_verify,
                    allow_redirects=False,
                    stream=True,
                )
                with response:
                    body = egress.read_capped(response, MAX_ANSWER_BYTES)
            except requests.exceptions.RequestException:
                if deadline.expired:
                    raise egress.DeadlineExceeded(budget) from None
                raise
    except egress.EgressRefused as refused:
        raise _refusal(host or "", refused.address) from None
    except egress.DeadlineExceeded:
        raise too_slow from None
    except egress.AnswerTooLarge:
        raise ReconcileError(
            Reason.ANSWER_TOO_LARGE, f"the webhook's answer is larger than {MAX_ANSWER_BYTES} bytes"
        ) from None
    except requests.exceptions.SSLError:
        raise ReconcileError(
            Reason.WEBHOOK_TLS_ERROR, f"TLS to the webhook {host} failed"
        ) from None
    except requests.exceptions.RequestException as error:
        raise ReconcileError(
            Reason.WEBHOOK_UNREACHABLE,
            f"the webhook {host} did not answer ({type(error).__name__})",
            transient=True,
        ) from None
    status = response.status_code
    if status == 429 or status >= 500:
        retry = response.headers.get("Retry-After")
        raise ReconcileError(
            Reason.WEBHOOK_ERROR,
            f"the webhook {host} answered HTTP {status}",
            transient=True,
            retry_after=parse_retry_after(retry),
        )
    if not 200 <= status < 300:
        raise ReconcileError(Reason.WEBHOOK_ERROR, f"the webhook {host} answered HTTP {status}")
    username, password, expires = parse_answer(body, auth, dt.datetime.now(dt.UTC))
    return Credential(
        "webhook", (spec.server or "",), username=username, password=password, expires_at=expires
    )


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    auth = spec.auth.webhook if spec.auth else None
    assert auth is not None
    headers = _headers(ctx, auth)
    # Safe: the headers sent (the webhook's secret) and the whole webhook spec (URL, TLS,
    # answer format) are in the key, and the trust domain keeps a tenant from a cluster
    # object's answer (whose webhook may reach addresses a tenant's may not) and from other
    # namespaces' answers.
    key = ctx.mint_key("webhook", auth.to_api(), sorted(headers.items()), spec.server)
    # Answers without an expiry are asked for again every refresh.interval.
    return ctx.minted(key, lambda: mint(spec, ctx, headers), max_age=ctx.refresh_interval)
