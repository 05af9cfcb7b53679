"""Credentials from an HTTP endpoint (Cycle's "webhook" source): GET the URL with headers
from a Secret; the answer is base64 `username:token` or a JSON object.

A tenant's webhook could be aimed at the cloud metadata service or at services inside the
cluster network; for the namespaced kind the URL's addresses must be public unless the
operator was started with allowed CIDRs. The addresses are checked twice: when the host is
resolved before the request, and on the socket actually connected, before a byte (TLS
handshake, headers from the Secret) is sent, so a DNS answer that changes in between (DNS
rebinding) cannot lead the request to a refused address."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import socket
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..credential import Credential
from ..errors import ReconcileError
from ..models.cloud import WebhookAuth, WebhookFormat
from ..models.spec import RegistrySpec
from ..registry import parse_retry_after
from . import ResolveContext

MAX_ANSWER_BYTES = 64 * 1024
_SAFE_HEADER = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def address_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    allowed: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """True for addresses a tenant may not reach: loopback, link-local (cloud metadata),
    private, shared, reserved, multicast and unspecified ones, unless explicitly allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return False
    return not address.is_global or address.is_multicast


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _refusal(host: str, address: object) -> ReconcileError:
    return ReconcileError(
        "WebhookAddressNotAllowed",
        f"the webhook host {host} resolves to {address}, a non-public address an "
        "OCIRegistry may not reach (the operator can allow ranges with "
        "--webhook-allowed-cidr)",
    )


def check_destination(url: str, allowed_cidrs: Iterable[str], resolve: Any = None) -> None:
    host = urlsplit(url).hostname
    if not host:
        raise ReconcileError("InvalidSpec", "the webhook url has no host")
    allowed = [ipaddress.ip_network(c, strict=False) for c in allowed_cidrs]
    try:
        infos = (resolve or socket.getaddrinfo)(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise ReconcileError(
            "WebhookUnreachable", f"cannot resolve the webhook host {host}", transient=True
        ) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address_refused(address, allowed):
            raise _refusal(host, address)


class _PeerRefused(Exception):
    """The socket connected to a refused address (raised before anything is sent)."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def _guarded_pools(
    allowed: list[Network],
) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections check the address they are connected to."""

    def check(sock: socket.socket) -> socket.socket:
        peer = str(sock.getpeername()[0]).split("%", 1)[0]
        if address_refused(ipaddress.ip_address(peer), allowed):
            sock.close()
            raise _PeerRefused(peer)
        return sock

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return check(super()._new_conn())

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return check(super()._new_conn())

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    """Direct connections only to addresses a tenant may reach. (Through a proxy, the socket
    is the proxy's; the check before the request is all there is then.)"""

    def __init__(self, allowed: list[Network]) -> None:
        self._allowed = allowed
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pools(self._allowed)


def _field(answer: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(answer, Mapping) or part not in answer:
            return None
        answer = answer[part]
    return answer


def _expiry(value: Any, what: str, now: dt.datetime) -> dt.datetime:
    if isinstance(value, bool):
        raise ReconcileError("InvalidProviderAnswer", f"the webhook's {what} is not a time")
    if isinstance(value, int | float):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise ReconcileError(
                "InvalidProviderAnswer", f"the webhook's {what} is not a usable Unix time"
            ) from None
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ReconcileError(
                "InvalidProviderAnswer", f"the webhook's {what} is not an RFC 3339 time"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    raise ReconcileError("InvalidProviderAnswer", f"the webhook's {what} is missing or not a time")


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
                "InvalidProviderAnswer", "the webhook's answer is not base64 username:token"
            ) from None
        username, sep, password = text.partition(":")
        if not sep or not password:
            raise ReconcileError(
                "InvalidProviderAnswer", "the webhook's answer decodes to no username:token pair"
            )
        return username or (auth.username or ""), password, None
    try:
        answer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReconcileError("InvalidProviderAnswer", "the webhook's answer is not JSON") from None
    password = _field(answer, auth.password_field)
    if not isinstance(password, str) or not password:
        raise ReconcileError(
            "InvalidProviderAnswer",
            f"the webhook's JSON has no string field {auth.password_field!r}",
        )
    username = _field(answer, auth.username_field)
    if username is not None and not isinstance(username, str):
        raise ReconcileError(
            "InvalidProviderAnswer", f"the webhook's field {auth.username_field!r} is not a string"
        )
    expires = None
    if auth.expires_at_field and _field(answer, auth.expires_at_field) is not None:
        expires = _expiry(_field(answer, auth.expires_at_field), auth.expires_at_field, now)
    elif auth.expires_in_field and _field(answer, auth.expires_in_field) is not None:
        seconds = _field(answer, auth.expires_in_field)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise ReconcileError(
                "InvalidProviderAnswer", f"the webhook's {auth.expires_in_field!r} is not a number"
            )
        try:
            expires = now + dt.timedelta(seconds=seconds)
        except (OverflowError, ValueError):
            raise ReconcileError(
                "InvalidProviderAnswer",
                f"the webhook's {auth.expires_in_field!r} is not a usable number of seconds",
            ) from None
    return username or auth.username or "", password, expires


def _headers(ctx: ResolveContext, auth: WebhookAuth) -> dict[str, str]:
    if auth.headers_secret_ref is None:
        return {}
    namespace, data = ctx.secret(auth.headers_secret_ref)
    headers = {}
    for key, value in data.items():
        text = value.decode(errors="replace").strip()
        if not set(key) <= _SAFE_HEADER or any(c in text for c in "\r\n"):
            raise ReconcileError(
                "InvalidSecret",
                f"Secret {namespace}/{auth.headers_secret_ref.name}: key {key!r} is not a "
                "usable HTTP header",
            )
        headers[key] = text
    return headers


def mint(spec: RegistrySpec, ctx: ResolveContext, headers: dict[str, str]) -> Credential:
    auth = spec.auth.webhook if spec.auth else None
    assert auth is not None
    if ctx.namespaced:
        check_destination(auth.url, ctx.config.webhook_allowed_cidrs)
    host = urlsplit(auth.url).hostname
    try:
        with requests.Session() as session:
            if ctx.namespaced:
                allowed = [
                    ipaddress.ip_network(c, strict=False) for c in ctx.config.webhook_allowed_cidrs
                ]
                session.mount("http://", _GuardedAdapter(allowed))
                session.mount("https://", _GuardedAdapter(allowed))
            # Redirects could lead anywhere, past the address check: refuse them.
            response = session.get(
                auth.url,
                headers={"Accept": "application/json, text/plain", **headers},
                timeout=auth.timeout_seconds,
                verify=not auth.insecure_skip_verify,
                allow_redirects=False,
                stream=True,
            )
            with response:
                body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
    except _PeerRefused as refused:
        raise _refusal(host or "", refused.address) from None
    except requests.exceptions.SSLError:
        raise ReconcileError("WebhookTLSError", f"TLS to the webhook {host} failed") from None
    except requests.exceptions.RequestException as error:
        raise ReconcileError(
            "WebhookUnreachable",
            f"the webhook {host} did not answer ({type(error).__name__})",
            transient=True,
        ) from None
    status = response.status_code
    if status == 429 or status >= 500:
        retry = response.headers.get("Retry-After")
        raise ReconcileError(
            "WebhookError",
            f"the webhook {host} answered HTTP {status}",
            transient=True,
            retry_after=parse_retry_after(retry),
        )
    if not 200 <= status < 300:
        raise ReconcileError("WebhookError", f"the webhook {host} answered HTTP {status}")
    if len(body) > MAX_ANSWER_BYTES:
        raise ReconcileError(
            "InvalidProviderAnswer", f"the webhook's answer is larger than {MAX_ANSWER_BYTES} bytes"
        )
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
    return ctx.cache.get(
        key, ctx.renew_before, lambda: mint(spec, ctx, headers), max_age=ctx.refresh_interval
    )
