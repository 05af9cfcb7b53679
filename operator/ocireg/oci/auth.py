"""Authentication with a registry: credentials, WWW-Authenticate challenges (RFC 7235),
bearer tokens from its token server (distribution's token authentication spec, cached per
scope), the redaction of secrets from text meant for humans, and :class:`Authenticator`,
which sends a request with the credentials the registry asks for (answering a 401 once)."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, quote_plus, urlsplit

import requests

from ocireg.api.reasons import Reason
from ocireg.oci.answers import token_error
from ocireg.oci.errors import RegistryError, invalid
from ocireg.oci.headers import WHITESPACE, read_token, read_value, skip_ws
from ocireg.oci.transport import Transport
from ocireg.oci.urls import host_port, origin

# The distribution spec: a token without expires_in is good for 60 seconds.
DEFAULT_TOKEN_LIFETIME: Final = 60.0
# Renew this long before expiry so a token does not run out between cache and registry.
TOKEN_RENEW_MARGIN: Final = 10.0
# OAuth2 client id sent with refresh-token grants; token servers log it, some require one.
CLIENT_ID: Final = "ocireg"
MAX_TOKEN_BYTES: Final = 1024 * 1024

_MAX_REDACTED: Final = 512


@dataclass(frozen=True)
class RegistryCredentials:
    """What to authenticate with; anonymous when every field is None (or empty).

    At most one kind is used, in this order: ``registry_token`` (sent as-is as a bearer
    token), ``identity_token`` (an OAuth2 refresh token exchanged at the token server), then
    ``username``/``password`` (HTTP Basic, directly or at the token server).
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"RegistryCredentials(username={self.username!r}, password={shown(self.password)}, "
            f"identity_token={shown(self.identity_token)}, "
            f"registry_token={shown(self.registry_token)})"
        )

    __str__ = __repr__

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)

    def basic_authorization(self) -> str:
        """The HTTP Basic ``Authorization`` value. UTF-8, as Docker does; requests would use
        Latin-1 and fail on other characters."""
        raw = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def secret_values(self) -> list[str]:
        """Every value that must never reach a message, including derived forms."""
        values = [self.username, self.password, self.identity_token, self.registry_token]
        found = [v for v in values if v]
        if self.has_basic:
            found.append(self.basic_authorization().removeprefix("Basic "))
        return found


@dataclass(frozen=True)
class Challenge:
    """A usable authentication challenge: ``none``, ``basic`` or ``bearer`` (with a realm)."""

    scheme: str
    realm: str | None = None
    service: str | None = None


NO_AUTH: Final = Challenge("none")


def parse_www_authenticate_all(header: str) -> list[tuple[str, dict[str, str]]]:
    """Every challenge in a WWW-Authenticate value, in order.

    Schemes and parameter names are lower-cased; quoted values may hold commas and escaped
    quotes; parameters may be separated by commas or just whitespace. Raises ValueError on
    anything that is not a challenge list.
    """
    what = "WWW-Authenticate"
    if not isinstance(header, str):
        raise ValueError(f"{what}: expected a string, got {type(header).__name__}")
    if not header.strip(WHITESPACE):
        raise ValueError(f"{what}: the header is empty")
    challenges: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    after_comma = False
    i, n = 0, len(header)
    while True:
        i = skip_ws(header, i)
        if i >= n:
            break
        if header[i] == ",":
            after_comma = True
            i += 1
            continue
        name, j = read_token(header, i)
        if not name:
            raise ValueError(f"{what}: unexpected character {header[i]!r} at position {i}")
        k = skip_ws(header, j)
        if k < n and header[k] == "=":
            if current is None:
                raise ValueError(f"{what}: parameter {name!r} comes before any auth scheme")
            value, i = read_value(header, k + 1, what, WHITESPACE + ',"')
            current.setdefault(name.lower(), value)
            after_comma = False
            continue
        if current is not None and not after_comma:
            # A bare word after a scheme is token68 data (or garbage); registries send neither.
            raise ValueError(f"{what}: expected name=value or ',' at position {i}")
        current = {}
        challenges.append((name.lower(), current))
        after_comma = False
        i = j
        if i < n and header[i] not in WHITESPACE + ",":
            raise ValueError(f"{what}: unexpected character {header[i]!r} at position {i}")
    if not challenges:
        raise ValueError(f"{what}: no auth scheme found")
    return challenges


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """The first challenge of a WWW-Authenticate value: (lower-cased scheme, parameters).

    >>> parse_www_authenticate('Bearer realm="https://auth.example/token",service="reg"')
    ('bearer', {'realm': 'https://auth.example/token', 'service': 'reg'})
    """
    return parse_www_authenticate_all(header)[0]


def choose_challenge(headers: Iterable[str]) -> Challenge | None:
    """The challenge to answer among WWW-Authenticate values: Bearer (which needs a realm)
    before Basic; None when nothing usable was offered."""
    basic: Challenge | None = None
    for value in headers:
        try:
            parsed = parse_www_authenticate_all(value)
        except ValueError:
            continue
        for scheme, params in parsed:
            if scheme == "bearer" and params.get("realm"):
                return Challenge("bearer", params["realm"], params.get("service") or None)
            if scheme == "basic" and basic is None:
                basic = Challenge("basic")
    return basic


def parse_token_response(body: Any) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token server's JSON answer."""
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("the answer has no token or access_token")
    if not header_safe(token):
        raise ValueError("the token holds characters that cannot go in an HTTP header")
    lifetime = body.get("expires_in")
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not math.isfinite(lifetime)
        or lifetime <= 0
    ):
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, float(lifetime)


def header_safe(value: str) -> bool:
    """Whether ``value`` can be sent in an HTTP header without being mangled or rejected."""
    return value.isascii() and value.isprintable()


TokenKey = tuple[str, str, str]  # (realm, service, scope)


@dataclass(frozen=True)
class _CachedToken:
    value: str = field(repr=False)
    renew_at: float


class TokenCache:
    """Bearer tokens per (realm, service, scope); times come from the caller's clock."""

    def __init__(self) -> None:
        self._tokens: dict[TokenKey, _CachedToken] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey, now: float) -> str | None:
        with self._lock:
            cached = self._tokens.get(key)
            if cached is None:
                return None
            if now >= cached.renew_at:
                del self._tokens[key]
                return None
            return cached.value

    def put(self, key: TokenKey, value: str, lifetime: float, now: float) -> None:
        with self._lock:
            self._tokens[key] = _CachedToken(value, now + lifetime - TOKEN_RENEW_MARGIN)

    def drop(self, key: TokenKey, value: str | None = None) -> None:
        """Forget the token for ``key`` (only if it is still ``value``, when given: another
        thread may already have replaced it)."""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and (value is None or cached.value == value):
                del self._tokens[key]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


class Redactor:
    """Replaces known secrets (and their URL- and JSON-encoded forms) with ``***``.

    The credentials given at construction are kept for good; tokens added later are kept up
    to a bound (old ones have long expired by the time they are evicted).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._permanent = {form for secret in secrets for form in _forms(secret)}
        self._recent: dict[str, None] = {}  # insertion-ordered set
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        with self._lock:
            for form in _forms(secret):
                self._recent.pop(form, None)
                self._recent[form] = None
            while len(self._recent) > _MAX_REDACTED:
                del self._recent[next(iter(self._recent))]

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._permanent.union(self._recent), key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def _forms(secret: str) -> set[str]:
    if not secret:
        return set()
    forms = {secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1]}
    return {form for form in forms if form}


def www_authenticate(resp: requests.Response) -> list[str]:
    # Several WWW-Authenticate headers are joined by requests; the raw list keeps them apart.
    raw = getattr(getattr(resp, "raw", None), "headers", None)
    getlist = getattr(raw, "getlist", None)
    if callable(getlist):
        values = [v for v in getlist("WWW-Authenticate") if isinstance(v, str)]
        if values:
            return values
    value = resp.headers.get("WWW-Authenticate")
    return [value] if value else []


class Authenticator:
    """The credentials of one registry's requests: the challenge it last sent (learnt by a
    ping or a 401), tokens from its token server (cached per scope) and one retry with fresh
    credentials when the registry answers 401. For the registry's own origin only: the
    caller sends requests elsewhere (redirect targets) without it."""

    def __init__(
        self, credentials: RegistryCredentials, transport: Transport, redact: Redactor
    ) -> None:
        self.credentials = credentials
        self.challenge: Challenge | None = None  # unknown until a ping or a 401
        self.clock: Callable[[], float] = time.monotonic
        self._transport = transport
        self._redact = redact  # learns every token fetched
        self._tokens = TokenCache()

    def send(
        self,
        method: str,
        url: str,
        scope: str | None,
        headers: Mapping[str, str],
    ) -> requests.Response:
        auth, cached = self._authorization(scope)
        resp = self._transport.request(method, url, headers={**headers, **auth})
        if resp.status_code != 401:
            return resp
        if cached is not None:
            # The registry no longer takes the cached token (revoked, or expired early).
            self._tokens.drop(*cached)
        challenge = choose_challenge(www_authenticate(resp))
        changed = False
        if challenge is not None:
            previous, self.challenge = self.challenge, challenge
            changed = previous is not None and previous != challenge
        challenge = self.challenge
        if cached is None and not (
            (not auth or changed) and challenge is not None and self._can_answer(challenge)
        ):
            return resp
        resp.close()
        auth, _ = self._authorization(scope, refresh=True)
        return self._transport.request(method, url, headers={**headers, **auth})

    def _can_answer(self, challenge: Challenge) -> bool:
        creds = self.credentials
        if creds.registry_token:
            return False  # always sent already; nothing else to try
        if challenge.scheme == "basic":
            return creds.has_basic
        # Bearer: token servers hand out anonymous tokens too (public repositories).
        return challenge.scheme == "bearer"

    def _authorization(
        self, scope: str | None, refresh: bool = False
    ) -> tuple[dict[str, str], tuple[TokenKey, str] | None]:
        """(headers, (cache key, token) when the token came from the cache)."""
        creds = self.credentials
        if creds.registry_token:
            return {"Authorization": f"Bearer {creds.registry_token}"}, None
        challenge = self.challenge
        if challenge is None or challenge.scheme == "none":
            return {}, None
        if challenge.scheme == "basic":
            if creds.has_basic:
                return {"Authorization": creds.basic_authorization()}, None
            return {}, None
        key: TokenKey = (challenge.realm or "", challenge.service or "", scope or "")
        if not refresh:
            token = self._tokens.get(key, self.clock())
            if token is not None:
                return {"Authorization": f"Bearer {token}"}, (key, token)
        token, lifetime = self._fetch_token(challenge, scope)
        self._tokens.put(key, token, lifetime, self.clock())
        return {"Authorization": f"Bearer {token}"}, None

    def _fetch_token(self, challenge: Challenge, scope: str | None) -> tuple[str, float]:
        creds = self.credentials
        transport = self._transport
        realm = challenge.realm or ""
        realm_parts = urlsplit(realm) if realm.isprintable() and origin(realm) else None
        if realm_parts is None:
            raise invalid(f"registry {transport.host} sent a token realm that is not a URL")
        server = host_port(realm)
        if realm_parts.scheme == "http" and not creds.anonymous and not transport.tls.insecure:
            raise RegistryError(
                Reason.INVALID_RESPONSE,
                f"registry {transport.host} points to a token server over plain HTTP "
                f"({server}); refusing to send credentials unencrypted (set tls.insecure if "
                "intended)",
            )
        params = {"service": challenge.service, "scope": scope}
        form = {k: v for k, v in params.items() if v}
        if creds.identity_token:
            data = {
                "grant_type": "refresh_token",
                "client_id": CLIENT_ID,
                "refresh_token": creds.identity_token,
                **form,
            }
            resp = transport.request("POST", realm, data=data, role="the token server")
        else:
            headers = {"Authorization": creds.basic_authorization()} if creds.has_basic else {}
            resp = transport.request(
                "GET", realm, params=form, headers=headers, role="the token server"
            )
        with contextlib.closing(resp):
            if resp.status_code != 200:
                raise token_error(transport, resp, server, scope, creds.anonymous)
            body = transport.read_json(
                resp, MAX_TOKEN_BYTES, f"the answer of token server {server}"
            )
        try:
            token, lifetime = parse_token_response(body)
        except ValueError as exc:
            raise invalid(f"token server {server} gave no usable token: {exc}") from None
        self._redact.add(token)
        return token, lifetime
