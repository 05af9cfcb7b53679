"""A thin, synchronous client for the OCI distribution API (Docker registry v2).

Only what the operator needs: ping, credential verification (base, pull and push access),
tag listing, manifests and small blobs. Every failure is a :class:`RegistryError` whose
message is safe to show to users: no credentials, tokens or query strings.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import requests

from ocireg import egress
from ocireg.api.names import DOCKER_HUB_API_HOST, DOCKER_HUB_HOSTS
from ocireg.egress import UNRESTRICTED, EgressPolicy
from ocireg.oci.auth import (
    CLIENT_ID,
    NO_AUTH,
    Challenge,
    Redactor,
    RegistryCredentials,
    TokenCache,
    TokenKey,
    choose_challenge,
    header_safe,
    parse_token_response,
    read_token,
    read_value,
    skip_ws,
)
from ocireg.oci.ca_bundle import MAX_CA_BUNDLE_BYTES
from ocireg.oci.errors import Reason, RegistryError

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES: Final = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_TAG_PAGES: Final = 10_000
MAX_REDIRECTS: Final = 10
# The distribution registry refuses manifests over 4 MiB, so larger answers are not manifests.
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
MAX_TOKEN_BYTES: Final = 1024 * 1024
# Listings (tags, catalog) are capped per page AND in total, in entries and bytes, so that no
# registry can take the operator past its 256 MiB pod limit: parsed, a tag costs ~100 bytes
# of Python objects. 100,000 tags is several times the largest real repositories (ECR and
# GHCR repositories with tens of thousands of tags, cosign .sig/.att tags included); at 128
# characters per tag (the longest the spec allows) that is 13 MiB of JSON, within the total.
MAX_LISTING_PAGE_BYTES: Final = 8 * 1024 * 1024
MAX_LISTING_BYTES: Final = 16 * 1024 * 1024
MAX_TAGS: Final = 100_000
# Listings read at once (8 repositories per chart sync, several syncs) share one budget for
# the whole process, so that concurrency cannot multiply the caps above past the pod limit
# (256 MiB, about 100 MiB of it the operator itself): a listing holds ~4 bytes of memory per
# byte read (the body, its decoded text, the growing buffer) plus ~160 per entry kept, at
# most 16 MiB x 4 + 100,000 x 160 = 79 MiB. First come, first served let one slow tenant
# registry hold all of it, so tenants have a part: tenant objects' listings hold at most
# TENANT_LISTING_MEMORY together and one namespace's at most half of that (a listing bigger
# than that is refused, naming the limit), which always leaves CLUSTER_LISTING_MEMORY to
# cluster objects (the platform team's, which may use all of it). A listing that finds its
# part full waits for room within its request's deadline, then stops with a transient
# AnswerTooLarge (retried at the next sync). Small listings never notice any of it.
LISTING_MEMORY: Final = 128 * 1024 * 1024
CLUSTER_LISTING_MEMORY: Final = 48 * 1024 * 1024
TENANT_LISTING_MEMORY: Final = LISTING_MEMORY - CLUSTER_LISTING_MEMORY
NAMESPACE_LISTING_MEMORY: Final = TENANT_LISTING_MEMORY // 2
_BYTES_PER_BYTE_READ: Final = 4
_BYTES_PER_ENTRY: Final = 160
# Chart discovery syncs every repository the catalog names; more than this is not a chart
# registry to discover but one to list repositories of by hand (charts.repositories).
MAX_REPOSITORIES: Final = 10_000
# Total deadlines (connect, TLS, every read, redirects, the token request): one exchange with
# the registry, and one whole paged listing. Real registries answer in well under a second;
# these only bound a registry that drips its answer.
REQUEST_DEADLINE: Final = 30.0
LISTING_DEADLINE: Final = 120.0
MAX_ERROR_BYTES: Final = 64 * 1024
_MAX_DETAIL: Final = 300

_REPOSITORY_RE: Final = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE: Final = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+")
_PEM_CERT: Final = "-----BEGIN CERTIFICATE-----"
_TLS_HINT: Final = (
    "if the registry uses a private CA, reference its certificate in tls.caBundleRef; "
    "tls.insecureSkipVerify disables verification altogether (not recommended)"
)


@dataclass(frozen=True)
class TLSOptions:
    """How to reach the registry: verified HTTPS (default), HTTPS verified only against
    ``ca_bundle`` (PEM), HTTPS without verification, or plain HTTP (``insecure``)."""

    insecure: bool = False
    skip_verify: bool = False
    ca_bundle: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class VerifyResult:
    auth_scheme: str  # "none" | "basic" | "bearer"
    pull: bool | None  # None when no repository was checked
    push: bool | None


@dataclass(frozen=True)
class _Target:
    """What a request was about, to turn an HTTP status into a precise error."""

    kind: str  # "base" | "repository" | "manifest" | "blob" | "upload" | "catalog"
    repository: str | None = None
    reference: str | None = None
    action: str = "pull"


_BASE = _Target("base")


class _MemoryBudget:
    """Bytes listings hold at once: ``namespace`` None is a cluster object's listing (counted
    in the whole only), a namespace's counts against the whole, the tenants' part and that
    namespace's share."""

    def __init__(
        self,
        total: int = LISTING_MEMORY,
        tenants: int = TENANT_LISTING_MEMORY,
        namespace: int = NAMESPACE_LISTING_MEMORY,
    ) -> None:
        self.total, self.tenants, self.namespace = total, tenants, namespace
        self._used: dict[tuple[str, str | None], int] = {}
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used.get(("all", None), 0)

    def _parts(self, namespace: str | None) -> list[tuple[tuple[str, str | None], int]]:
        parts: list[tuple[tuple[str, str | None], int]] = [(("all", None), self.total)]
        if namespace is not None:
            parts += [(("tenants", None), self.tenants), (("namespace", namespace), self.namespace)]
        return parts

    def limit(self, namespace: str | None) -> int:
        return min(cap for _, cap in self._parts(namespace))

    def take(self, amount: int, namespace: str | None = None, until: float | None = None) -> bool:
        """Take ``amount`` bytes, waiting for room until the monotonic time ``until`` (no
        wait when None); False when there was none by then."""
        parts = self._parts(namespace)
        with self._cond:
            while any(self._used.get(key, 0) + amount > cap for key, cap in parts):
                left = until - time.monotonic() if until is not None else 0.0
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            for key, _ in parts:
                self._used[key] = self._used.get(key, 0) + amount
            return True

    def give(self, amount: int, namespace: str | None = None) -> None:
        with self._cond:
            for key, _ in self._parts(namespace):
                left = self._used.get(key, 0) - amount
                if left > 0:
                    self._used[key] = left
                else:
                    self._used.pop(key, None)
            self._cond.notify_all()


_LISTING_BUDGET: Final = _MemoryBudget()


class _BudgetSpent(Exception):
    def __init__(self, never: bool = False) -> None:
        super().__init__()
        self.never = never  # more than the listing's part of the budget holds in all


@dataclass
class _Listing:
    """The entries of one paged listing so far, with its totals and its share of the
    process's listing memory (given back by :meth:`close`)."""

    what: str  # "the tag list of team/app"
    noun: str  # "tags"
    limit: int
    namespace: str | None = None  # whose part of the listing memory it holds (None: cluster)
    items: dict[str, None] = field(default_factory=dict)  # ordered set: servers may repeat
    bytes_read: int = 0
    held: int = 0

    def add(self, item: str) -> None:
        if len(self.items) <= self.limit:
            self.items[item] = None

    @property
    def full(self) -> bool:
        return len(self.items) > self.limit

    def reserve(self, amount: int) -> None:
        if self.held + amount > _LISTING_BUDGET.limit(self.namespace):
            raise _BudgetSpent(never=True)
        # Wait for room as long as the request's deadline lets us (the watchdog ends the
        # connection at the same moment), instead of failing while others hold it briefly.
        current = egress.current_deadline()
        until = current.expires_at if current is not None else None
        if not _LISTING_BUDGET.take(amount, self.namespace, until):
            raise _BudgetSpent
        self.held += amount

    def close(self) -> None:
        _LISTING_BUDGET.give(self.held, self.namespace)
        self.held = 0


# --------------------------------------------------------------------------- header parsing


def parse_link_next(header: str | None, base_url: str) -> str | None:
    """The absolute URL of the ``rel="next"`` link in a Link header (RFC 8288), or None.

    Several comma-separated links, quoted or bare ``rel`` values (which may list several
    relation types) and relative references (resolved against ``base_url``, the URL the
    header came with) are understood. Raises ValueError on a malformed header.
    """
    if header is None:
        return None
    what = "Link"
    if not isinstance(header, str):
        raise ValueError(f"{what}: expected a string, got {type(header).__name__}")
    for target, params in _parse_links(header):
        if "next" in params.get("rel", "").lower().split():
            return _resolve(target, base_url)
    return None


def _parse_links(header: str) -> list[tuple[str, dict[str, str]]]:
    what = "Link"
    links: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(header)
    while True:
        i = skip_ws(header, i)
        if i < n and header[i] == ",":
            i += 1
            continue
        if i >= n:
            return links
        if header[i] != "<":
            raise ValueError(f"{what}: expected '<' at position {i}, found {header[i]!r}")
        end = header.find(">", i + 1)
        if end < 0:
            raise ValueError(f"{what}: '<' at position {i} is never closed")
        target = header[i + 1 : end].strip()
        params: dict[str, str] = {}
        i = end + 1
        while True:
            i = skip_ws(header, i)
            if i >= n or header[i] == ",":
                break
            if header[i] != ";":
                raise ValueError(f"{what}: expected ';' or ',' at position {i}")
            i = skip_ws(header, i + 1)
            if i >= n or header[i] in ";,":
                continue  # empty parameter
            name, j = read_token(header, i)
            if not name:
                raise ValueError(f"{what}: unexpected character {header[i]!r} at position {i}")
            i = skip_ws(header, j)
            value = ""
            if i < n and header[i] == "=":
                value, i = read_value(header, i + 1, what, ' \t\r\n;,"')
                if i < n and header[i] == '"':
                    raise ValueError(f"{what}: unexpected quote at position {i}")
            # RFC 8288: occurrences after the first rel are ignored.
            params.setdefault(name.lower(), value)
        links.append((target, params))


def _resolve(target: str, base_url: str) -> str:
    try:
        url = urljoin(base_url, target)
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"Link: cannot resolve the next link: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("Link: the next link does not resolve to an http(s) URL")
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_rate_limit(value: str | None) -> int | None:
    # Docker Hub: "76;w=21600" (remaining pulls; window in seconds).
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


# --------------------------------------------------------------------------- the client


class RegistryClient:
    """One registry, one set of credentials. Thread-safe; reuse it to reuse tokens and
    connections. Call :meth:`close` (or use it as a context manager) when done."""

    def __init__(
        self,
        host: str,
        credentials: RegistryCredentials = RegistryCredentials(),  # noqa: B008 - frozen
        tls: TLSOptions = TLSOptions(),
        timeout: float = 10.0,
        session: requests.Session | None = None,
        user_agent: str = "ocireg",
        egress_policy: EgressPolicy = UNRESTRICTED,
        deadline: float = REQUEST_DEADLINE,
        listing_namespace: str | None = None,
    ) -> None:
        """``listing_namespace``: the tenant namespace whose share of the listing memory this
        client's listings take; None for cluster objects and the operator's own use."""
        if not host or any(c in host for c in "/@?#\\" + " \t\r\n"):
            raise ValueError(f"registry host must be host[:port] without a scheme, got {host!r}")
        self.host = host
        self._docker_hub = host.lower() in DOCKER_HUB_HOSTS
        api_host = DOCKER_HUB_API_HOST if self._docker_hub else host
        self._scheme = "http" if tls.insecure else "https"
        self._base_url = f"{self._scheme}://{api_host}"
        self._origin = _origin(self._base_url)
        if self._origin is None:
            raise ValueError(f"registry host {host!r} is not a valid host[:port]")
        self._credentials = credentials
        self._tls = tls
        self._timeout = timeout
        self._deadline = deadline
        self._listing_namespace = listing_namespace
        self._owns_session = session is None
        # Every request (registry, token realm, redirect hops, blob storage) goes through the
        # egress adapter: the object's address policy and the total deadline.
        self._session = session if session is not None else egress.session(egress_policy)
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._request_count = 0
        self._rate_limit_remaining: int | None = None
        self._challenge: Challenge | None = None  # unknown until a ping or a 401
        self._tokens = TokenCache()
        self._clock: Callable[[], float] = time.monotonic
        self._redact = Redactor(credentials.secret_values())
        self._problem: RegistryError | None = None  # raised by the first request
        # verify= for the registry and its token server: True, False or the CA bundle's
        # context (egress.trust_context, loaded in memory).
        self._verify: bool | ssl.SSLContext = True
        self._setup_tls()
        token = credentials.registry_token
        if token and not header_safe(token):
            self._problem = RegistryError(
                "AuthenticationFailed",
                "the registry token holds characters that cannot be sent in an HTTP header "
                "(non-ASCII or control characters); check the Secret's value",
            )
        self._finalizer = weakref.finalize(
            self, _release, self._session if self._owns_session else None
        )

    def _setup_tls(self) -> None:
        tls = self._tls
        if tls.insecure:
            return  # plain HTTP; a https token realm still gets default verification
        if tls.skip_verify:
            self._verify = False
            return
        if tls.ca_bundle is None:
            return
        if _PEM_CERT not in tls.ca_bundle:
            self._problem = RegistryError(
                "TLSError",
                "the CA bundle for the registry holds no PEM certificate "
                f"(no '{_PEM_CERT}' line); check the object tls.caBundleRef points to",
            )
            return
        if len(tls.ca_bundle) > MAX_CA_BUNDLE_BYTES:  # read_ca_bundle refuses it first
            self._problem = RegistryError(
                "TLSError",
                f"the CA bundle for the registry is larger than {MAX_CA_BUNDLE_BYTES // 1024} "
                "KiB; reference only the CAs the registry needs",
            )
            return
        # In memory, not a temporary file: one file per client (chart clients are kept per
        # object) filled the pod's 64 MiB /tmp.
        try:
            self._verify = egress.trust_context(tls.ca_bundle)
        except ssl.SSLError as error:
            self._problem = RegistryError(
                "TLSError",
                "the CA bundle for the registry holds no usable PEM certificate "
                f"({error.reason or type(error).__name__}); check the object tls.caBundleRef "
                "points to",
            )

    # ---------------------------------------------------------------- public properties

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def request_count(self) -> int:
        """HTTP requests made so far, token server and redirect hops included."""
        return self._request_count

    @property
    def rate_limit_remaining(self) -> int | None:
        """The last RateLimit-Remaining value seen (Docker Hub), or None."""
        return self._rate_limit_remaining

    def close(self) -> None:
        """Release the HTTP session if this client created it."""
        self._finalizer()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self._base_url!r}, credentials={self._credentials!r})"

    # ---------------------------------------------------------------- operations

    def ping(self) -> str:
        """``GET /v2/`` without credentials: the auth scheme the registry demands,
        "none", "basic" or "bearer"."""
        url = self._url("/v2/")
        with self._within(self._deadline):
            return self._ping(url)

    def _ping(self, url: str) -> str:
        resp = self._request("GET", url)
        with contextlib.closing(resp):
            if 200 <= resp.status_code < 300:
                self._challenge = NO_AUTH
                return "none"
            if resp.status_code == 401:
                challenge = choose_challenge(_www_authenticate(resp))
                if challenge is None:
                    raise RegistryError(
                        "InvalidResponse",
                        f"registry {self.host} answered 401 without a usable WWW-Authenticate "
                        "challenge (expected Basic, or Bearer with a realm); it does not "
                        "look like an OCI registry",
                        status_code=401,
                    )
                self._challenge = challenge
                return challenge.scheme
            raise self._error_for(resp, "GET", url, _BASE)

    def verify(self, repository: str | None = None, push: bool = False) -> VerifyResult:
        """Check that the credentials are accepted and, with ``repository``, that they can
        pull (and, with ``push``, push) there. Raises RegistryError when they cannot;
        ``push`` is ignored without a repository."""
        repo = self._repository(repository) if repository is not None else None
        with self._within(self._deadline):
            return self._verify_access(repo, push)

    def _verify_access(self, repo: str | None, push: bool) -> VerifyResult:
        scheme = self.ping()
        if scheme == "basic" and not self._credentials.has_basic:
            if self._credentials.anonymous:
                raise self._requires_credentials()
            if not self._credentials.registry_token:
                raise RegistryError(
                    "AuthenticationFailed",
                    f"registry {self.host} asks for a username and password (HTTP Basic); "
                    "an identity token can only be used with a Bearer token service",
                    status_code=401,
                )
        if scheme != "none":
            url = self._url("/v2/")
            resp = self._send("GET", url, scope=None)
            with contextlib.closing(resp):
                if not 200 <= resp.status_code < 300:
                    raise self._error_for(resp, "GET", url, _BASE)
        pull: bool | None = None
        can_push: bool | None = None
        if repo is not None:
            try:
                pull = self._check_pull(repo)
            except RegistryError as error:
                # A repository that does not exist yet is fine for a pusher: pushing creates it.
                if not (push and error.reason == "RepositoryNotFound"):
                    raise
            if push:
                can_push = self._check_push(repo)
        return VerifyResult(scheme, pull, can_push)

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` pages."""
        repo = self._repository(repository)
        if page_size is not None and (isinstance(page_size, bool) or page_size < 1):
            raise ValueError(f"page_size must be a positive integer, got {page_size!r}")
        url = self._url(f"/v2/{repo}/tags/list")
        if page_size is not None:
            url += f"?n={int(page_size)}"
        target = _Target("repository", repo)
        what = f"the tag list of {repo}"
        listing = _Listing(what, "tags", MAX_TAGS, self._listing_namespace)
        seen = {url}
        with contextlib.closing(listing), self._within(LISTING_DEADLINE):
            for _ in range(MAX_TAG_PAGES):
                with self._within(self._deadline):
                    resp = self._send("GET", url, scope=_scope(repo, "pull"))
                    with contextlib.closing(resp):
                        if resp.status_code != 200:
                            raise self._error_for(resp, "GET", url, target)
                        body = self._read_page(resp, listing)
                        link = resp.headers.get("Link")
                        page_url = resp.url or url
                page = body.get("tags") if isinstance(body, dict) else None
                if not isinstance(body, dict) or not (page is None or isinstance(page, list)):
                    raise self._invalid(f"{what} is not a JSON object with tags")
                for tag in page or ():
                    if not isinstance(tag, str):
                        raise self._invalid(f"{what} holds a non-string tag")
                    listing.add(tag)
                if listing.full:
                    raise self._too_many(listing)
                try:
                    next_url = parse_link_next(link, page_url)
                except ValueError:
                    raise self._invalid(f"{what} came with a malformed Link header") from None
                if next_url is None:
                    break
                if next_url in seen:
                    log.warning(
                        "tag list of %s on %s: next link repeats; stopping", repo, self.host
                    )
                    break
                seen.add(next_url)
                url = next_url
            else:
                log.warning("tag list of %s: stopped after %d pages", repo, MAX_TAG_PAGES)
        return list(listing.items)

    def get_manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        """(parsed manifest or index, its digest) for a tag or digest."""
        repo = self._repository(repository)
        ref = _reference(reference)
        url = self._url(f"/v2/{repo}/manifests/{ref}")
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        with self._within(self._deadline):
            resp = self._send(
                "GET", url, scope=_scope(repo, "pull"), headers=headers, redirects=True
            )
            with contextlib.closing(resp):
                if resp.status_code != 200:
                    raise self._error_for(resp, "GET", url, _Target("manifest", repo, ref))
                body = self._read_capped(resp, MAX_MANIFEST_BYTES, f"manifest {ref} of {repo}")
                header_digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.startswith("sha256:") and ref != computed:
            raise self._invalid(f"manifest {ref} of {repo} does not match its digest")
        try:
            manifest = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting
            raise self._invalid(f"manifest {ref} of {repo} is not JSON") from None
        if not isinstance(manifest, dict):
            raise self._invalid(f"manifest {ref} of {repo} is not a JSON object")
        return manifest, header_digest or computed

    def get_blob(self, repository: str, digest: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        """A blob's content (following redirects to storage), at most ``max_bytes``."""
        repo = self._repository(repository)
        if not _DIGEST_RE.fullmatch(digest):
            raise ValueError(f"not a digest: {digest!r}")
        url = self._url(f"/v2/{repo}/blobs/{digest}")
        with self._within(self._deadline):
            resp = self._send("GET", url, scope=_scope(repo, "pull"), redirects=True)
            with contextlib.closing(resp):
                if resp.status_code != 200:
                    raise self._error_for(resp, "GET", url, _Target("blob", repo, digest))
                body = self._read_capped(resp, max_bytes, f"blob {digest} of {repo}")
        algorithm, _, expected = digest.partition(":")
        if algorithm == "sha256" and hashlib.sha256(body).hexdigest() != expected:
            raise self._invalid(f"blob {digest} of {repo} does not match its digest")
        return body

    def head_manifest(self, repository: str, reference: str) -> str | None:
        """The digest a tag points to now, from ``HEAD`` (which Docker Hub does not count
        against pull limits); None when the registry does not say (then GET the manifest)."""
        repo = self._repository(repository)
        ref = _reference(reference)
        url = self._url(f"/v2/{repo}/manifests/{ref}")
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        with self._within(self._deadline):
            resp = self._send(
                "HEAD", url, scope=_scope(repo, "pull"), headers=headers, redirects=True
            )
            with contextlib.closing(resp):
                if resp.status_code != 200:
                    raise self._error_for(resp, "HEAD", url, _Target("manifest", repo, ref))
                digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        return digest if _DIGEST_RE.fullmatch(digest) else None

    def list_repositories(self, page_size: int | None = None) -> list[str]:
        """Every repository the catalog API (``/v2/_catalog``) lists, following Link pages.
        Many registries refuse it (401/403/404) or list nothing; that is a RegistryError or
        an empty list for the caller to explain."""
        if page_size is not None and (isinstance(page_size, bool) or page_size < 1):
            raise ValueError(f"page_size must be a positive integer, got {page_size!r}")
        url = self._url("/v2/_catalog")
        if page_size is not None:
            url += f"?n={int(page_size)}"
        listing = _Listing("the catalog", "repositories", MAX_REPOSITORIES, self._listing_namespace)
        seen = {url}
        with contextlib.closing(listing), self._within(LISTING_DEADLINE):
            for _ in range(MAX_TAG_PAGES):
                with self._within(self._deadline):
                    resp = self._send("GET", url, scope="registry:catalog:*")
                    with contextlib.closing(resp):
                        if resp.status_code != 200:
                            raise self._error_for(resp, "GET", url, _Target("catalog"))
                        body = self._read_page(resp, listing)
                        link = resp.headers.get("Link")
                        page_url = resp.url or url
                page = body.get("repositories") if isinstance(body, dict) else None
                if not (page is None or isinstance(page, list)):
                    raise self._invalid("the catalog is not a JSON object with repositories")
                for name in page or ():
                    if isinstance(name, str) and _REPOSITORY_RE.fullmatch(name):
                        listing.add(name)
                if listing.full:
                    raise self._too_many(listing)
                try:
                    next_url = parse_link_next(link, page_url)
                except ValueError:
                    raise self._invalid("the catalog came with a malformed Link header") from None
                if next_url is None or next_url in seen:
                    break
                seen.add(next_url)
                url = next_url
        return list(listing.items)

    # ---------------------------------------------------------------- verify helpers

    def _check_pull(self, repo: str) -> bool:
        url = self._url(f"/v2/{repo}/tags/list")
        resp = self._send("GET", url, scope=_scope(repo, "pull"))
        with contextlib.closing(resp):
            if resp.status_code == 200:
                return True
            raise self._error_for(resp, "GET", url, _Target("repository", repo))

    def _check_push(self, repo: str) -> bool:
        url = self._url(f"/v2/{repo}/blobs/uploads/")
        scope = _scope(repo, "pull,push")
        resp = self._send("POST", url, scope=scope)
        with contextlib.closing(resp):
            if not 200 <= resp.status_code < 300:
                raise self._error_for(resp, "POST", url, _Target("upload", repo, action="push"))
            location = resp.headers.get("Location")
            base = resp.url or url
        if location:
            # Cancel the empty upload we just started; a failure only leaves it to expire.
            try:
                self._send("DELETE", urljoin(base, location), scope=scope).close()
            except (RegistryError, ValueError) as exc:
                log.debug("cancelling the test upload on %s failed: %s", self.host, exc)
        return True

    # ---------------------------------------------------------------- HTTP machinery

    def _within(self, seconds: float) -> contextlib.AbstractContextManager[egress.Deadline]:
        """A total deadline for what the calling thread sends and reads inside (nested ones
        end no later than the enclosing one)."""
        return egress.deadline(seconds)

    def _url(self, path: str) -> str:
        return self._base_url + path

    def _repository(self, repository: str) -> str:
        if not isinstance(repository, str):
            raise ValueError(f"not a valid repository name: {repository!r}")
        repo = repository
        if self._docker_hub and "/" not in repo:
            repo = f"library/{repo}"  # Docker Hub's official images
        if len(repo) > 255 or not _REPOSITORY_RE.fullmatch(repo):
            raise ValueError(f"not a valid repository name: {repository!r}")
        return repo

    def _send(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        headers: Mapping[str, str] | None = None,
        redirects: bool = False,
    ) -> requests.Response:
        """A request with credentials for the registry's own origin (answering a 401 once),
        none elsewhere; optionally following redirects (e.g. blobs to object storage)."""
        for _ in range(MAX_REDIRECTS + 1):
            if _origin(url) == self._origin:
                resp = self._send_authenticated(method, url, scope, headers or {})
            else:
                resp = self._request(
                    method, url, headers=headers, trusted=False, role="the redirect target"
                )
            if not (redirects and resp.is_redirect):
                return resp
            location = resp.headers["Location"]
            resp.close()
            next_url = urljoin(resp.url or url, location)
            if urlsplit(next_url).scheme not in ("http", "https"):
                raise self._invalid(f"{method} {_path(url)} redirected to a non-HTTP URL")
            url = next_url
        raise self._invalid(f"{method} {_path(url)}: more than {MAX_REDIRECTS} redirects")

    def _send_authenticated(
        self,
        method: str,
        url: str,
        scope: str | None,
        headers: Mapping[str, str],
    ) -> requests.Response:
        auth, cached = self._authorization(scope)
        resp = self._request(method, url, headers={**headers, **auth})
        if resp.status_code != 401:
            return resp
        if cached is not None:
            # The registry no longer takes the cached token (revoked, or expired early).
            self._tokens.drop(*cached)
        challenge = choose_challenge(_www_authenticate(resp))
        changed = False
        if challenge is not None:
            previous, self._challenge = self._challenge, challenge
            changed = previous is not None and previous != challenge
        challenge = self._challenge
        if cached is None and not (
            (not auth or changed) and challenge is not None and self._can_answer(challenge)
        ):
            return resp
        resp.close()
        auth, _ = self._authorization(scope, refresh=True)
        return self._request(method, url, headers={**headers, **auth})

    def _can_answer(self, challenge: Challenge) -> bool:
        creds = self._credentials
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
        creds = self._credentials
        if creds.registry_token:
            return {"Authorization": f"Bearer {creds.registry_token}"}, None
        challenge = self._challenge
        if challenge is None or challenge.scheme == "none":
            return {}, None
        if challenge.scheme == "basic":
            if creds.has_basic:
                return {"Authorization": creds.basic_authorization()}, None
            return {}, None
        key: TokenKey = (challenge.realm or "", challenge.service or "", scope or "")
        if not refresh:
            token = self._tokens.get(key, self._clock())
            if token is not None:
                return {"Authorization": f"Bearer {token}"}, (key, token)
        token, lifetime = self._fetch_token(challenge, scope)
        self._tokens.put(key, token, lifetime, self._clock())
        return {"Authorization": f"Bearer {token}"}, None

    def _fetch_token(self, challenge: Challenge, scope: str | None) -> tuple[str, float]:
        creds = self._credentials
        realm = challenge.realm or ""
        realm_parts = urlsplit(realm) if realm.isprintable() and _origin(realm) else None
        if realm_parts is None:
            raise self._invalid(f"registry {self.host} sent a token realm that is not a URL")
        server = _host_port(realm)
        if realm_parts.scheme == "http" and not creds.anonymous and not self._tls.insecure:
            raise RegistryError(
                "InvalidResponse",
                f"registry {self.host} points to a token server over plain HTTP ({server}); "
                "refusing to send credentials unencrypted (set tls.insecure if intended)",
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
            resp = self._request("POST", realm, data=data, role="the token server")
        else:
            headers = {"Authorization": creds.basic_authorization()} if creds.has_basic else {}
            resp = self._request(
                "GET", realm, params=form, headers=headers, role="the token server"
            )
        with contextlib.closing(resp):
            if resp.status_code != 200:
                raise self._token_error(resp, server, scope)
            body = self._read_json(resp, MAX_TOKEN_BYTES, f"the answer of token server {server}")
        try:
            token, lifetime = parse_token_response(body)
        except ValueError as exc:
            raise self._invalid(f"token server {server} gave no usable token: {exc}") from None
        self._redact.add(token)
        return token, lifetime

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        trusted: bool = True,
        role: str = "registry",
    ) -> requests.Response:
        """One HTTP request, no redirects followed, body streamed (readers cap its size).
        ``trusted``: the registry or its token server, which get the configured TLS trust;
        other hosts (blob storage) get default verification."""
        if not self._finalizer.alive:
            raise RuntimeError("this RegistryClient is closed")
        if self._problem is not None:
            problem = self._problem
            raise RegistryError(problem.reason, problem.message)  # type: ignore[arg-type]
        verify: bool | ssl.SSLContext = self._verify if trusted else not self._tls.skip_verify
        with self._lock:
            self._request_count += 1
        log.debug("%s %s", method, _loggable(url))
        with self._mapped_errors(url, role):
            resp = self._session.request(
                method,
                url,
                headers={"User-Agent": self._user_agent, **(headers or {})},
                params=params,
                data=data,
                stream=True,
                timeout=self._timeout,
                verify=verify,  # type: ignore[arg-type]  # an SSLContext: egress's adapter takes it
                allow_redirects=False,
            )
        remaining = _parse_rate_limit(
            resp.headers.get("RateLimit-Remaining") or resp.headers.get("X-RateLimit-Remaining")
        )
        if remaining is not None:
            self._rate_limit_remaining = remaining
        return resp

    @contextlib.contextmanager
    def _mapped_errors(self, url: str, role: str = "registry") -> Iterator[None]:
        """requests' exceptions as RegistryError, without their text (it holds URLs)."""
        try:
            yield
        except egress.EgressRefused as refused:
            owner = "" if role == "registry" else f" of registry {self.host}"
            raise RegistryError(
                "EgressNotAllowed", refused.describe(role, owner), transient=False
            ) from None
        except egress.DeadlineExceeded as exc:
            raise self._too_slow(url, exc.seconds) from None
        except requests.exceptions.RequestException as exc:
            raise self._request_error(url, exc) from None

    def _request_error(self, url: str, exc: requests.exceptions.RequestException) -> RegistryError:
        current = egress.current_deadline()
        if current is not None and current.expired:
            # The watchdog cut the connection, whatever error that surfaced as.
            return self._too_slow(url, current.seconds)
        if isinstance(exc, requests.exceptions.SSLError):
            return self._tls_error(url, exc)
        if isinstance(
            exc,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.ChunkedEncodingError,
        ):
            return self._unreachable(url, exc)
        return self._invalid(f"request to {_host_port(url)} failed: {type(exc).__name__}")

    def _read_capped(self, resp: requests.Response, limit: int, what: str) -> bytes:
        try:
            with self._mapped_errors(resp.url or self._base_url):
                return egress.read_capped(resp, limit)
        except egress.AnswerTooLarge as exc:
            size = f"{exc.size} bytes, " if exc.size is not None else ""
            raise RegistryError(
                "AnswerTooLarge", f"{what} from {self.host} is {size}over the {limit}-byte limit"
            ) from None

    def _read_page(self, resp: requests.Response, listing: _Listing) -> Any:
        """One page of a listing, parsed, within the per-page and total caps."""
        left = MAX_LISTING_BYTES - listing.bytes_read
        limit = min(MAX_LISTING_PAGE_BYTES, left)
        try:
            body = egress.read_capped(
                resp, limit, lambda size: listing.reserve(size * _BYTES_PER_BYTE_READ)
            )
        except _BudgetSpent as spent:
            raise self._budget_spent(listing, spent.never) from None
        except egress.AnswerTooLarge:
            whole = limit < MAX_LISTING_PAGE_BYTES
            raise RegistryError(
                "AnswerTooLarge",
                f"{listing.what} from {self.host} is over "
                + (f"{MAX_LISTING_BYTES} bytes in all" if whole else f"{limit} bytes in a page")
                + ", more than the operator reads (the limit keeps its memory bounded)",
            ) from None
        except egress.DeadlineExceeded as exc:
            raise self._too_slow(resp.url or self._base_url, exc.seconds) from None
        except requests.exceptions.RequestException as exc:
            raise self._request_error(resp.url or self._base_url, exc) from None
        listing.bytes_read += len(body)
        # Every further entry needs a comma, so too many commas means too many entries; known
        # before parsing, which is where the memory would go.
        if body.count(b",") > listing.limit - len(listing.items) + 64:
            raise self._too_many(listing)
        try:
            listing.reserve((body.count(b",") + 1) * _BYTES_PER_ENTRY)
        except _BudgetSpent as spent:
            raise self._budget_spent(listing, spent.never) from None
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting
            raise self._invalid(f"{listing.what} is not JSON") from None

    def _budget_spent(self, listing: _Listing, never: bool = False) -> RegistryError:
        mib = _LISTING_BUDGET.limit(listing.namespace) // 2**20
        whose = "all" if listing.namespace is None else "one namespace's"
        part = f"{mib} MiB that {whose} listings may hold at once"
        if never:
            return RegistryError(
                "AnswerTooLarge",
                f"{listing.what} from {self.host} needs more memory than the {part} (a bound "
                "on the operator's memory); prune tags or list fewer repositories",
            )
        return RegistryError(
            "AnswerTooLarge",
            f"{listing.what} from {self.host} was not read to the end: other listings held the "
            f"listing memory until its deadline ({LISTING_MEMORY // 2**20} MiB in all, tenant "
            f"objects' {TENANT_LISTING_MEMORY // 2**20} MiB, one namespace's "
            f"{NAMESPACE_LISTING_MEMORY // 2**20} MiB: a bound on the operator's memory); "
            "retried later",
            transient=True,
        )

    def _too_many(self, listing: _Listing) -> RegistryError:
        return RegistryError(
            "AnswerTooLarge",
            f"{listing.what} from {self.host} holds more than {listing.limit} {listing.noun}, "
            "more than the operator reads (the limit keeps its memory bounded)",
        )

    def _too_slow(self, url: str, seconds: float) -> RegistryError:
        return RegistryError(
            "Unreachable",
            f"{_host_port(url)} sent no complete answer within {seconds:g} s (the total "
            "deadline of a request to a registry); it may be overloaded, or dripping its answer",
        )

    def _read_json(self, resp: requests.Response, limit: int, what: str) -> Any:
        body = self._read_capped(resp, limit, what)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting
            raise self._invalid(f"{what} is not JSON") from None

    # ---------------------------------------------------------------- errors

    def _invalid(self, message: str, status_code: int | None = None) -> RegistryError:
        return RegistryError("InvalidResponse", message, status_code=status_code)

    def _requires_credentials(self, detail: str = "") -> RegistryError:
        return RegistryError(
            "AuthenticationFailed",
            f"registry {self.host} requires credentials: it refuses anonymous access"
            f"{detail}; configure credentials for it",
            status_code=401,
        )

    def _server_detail(self, resp: requests.Response) -> tuple[list[str], str]:
        """(error codes, a short redacted summary) from a registry or OAuth2 error body."""
        try:
            body = json.loads(self._read_capped(resp, MAX_ERROR_BYTES, "error body"))
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
        text = self._redact(text)  # after normalising, so nothing can re-form a secret
        if len(text) > _MAX_DETAIL:
            text = text[:_MAX_DETAIL] + "..."
        return codes, text

    def _error_for(
        self, resp: requests.Response, method: str, url: str, target: _Target
    ) -> RegistryError:
        status = resp.status_code
        codes, detail = self._server_detail(resp)
        said = f" (the registry said: {detail})" if detail else ""
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        wait = f"; retry after {retry_after:.0f} s" if retry_after is not None else ""
        host, repo = self.host, target.repository
        anonymous = self._credentials.anonymous
        reason: Reason
        if status == 429:
            reason = "RateLimited"
            message = f"registry {host} is rate limiting requests (HTTP 429){wait}{said}"
        elif status >= 500:
            reason = "RegistryError"
            what = "is unavailable (HTTP 503)" if status == 503 else f"failed (HTTP {status})"
            message = f"registry {host} {what} on {method} {_path(url)}{wait}{said}"
        elif status == 401 and target.kind == "base":
            if anonymous:
                return self._requires_credentials(said)
            reason = "AuthenticationFailed"
            message = (
                f"registry {host} rejected the credentials (HTTP 401){said}; check the "
                "username and password or token in the referenced Secret"
            )
        elif status in (401, 403) and repo is not None:
            reason = "PermissionDenied"
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
            reason = "PermissionDenied"
            message = f"registry {host} refused access (HTTP {status}){said}"
        elif status == 404 and target.kind == "base":
            reason = "RegistryError"
            message = (
                f"{host} does not serve the OCI distribution API at /v2/ (HTTP 404); "
                "check the registry address"
            )
        elif status == 404 and (target.kind in ("repository", "upload") or "NAME_UNKNOWN" in codes):
            reason = "RepositoryNotFound"
            message = (
                f"repository {repo} does not exist on {host} or is not visible to these "
                f"credentials{said}"
            )
        elif status == 404:
            reason = "RegistryError"
            message = f"{target.kind} {target.reference} not found in repository {repo} on {host}"
        else:
            reason = "RegistryError"
            message = f"registry {host} answered HTTP {status} to {method} {_path(url)}{said}"
        return RegistryError(reason, message, status_code=status, retry_after=retry_after)

    def _token_error(
        self, resp: requests.Response, server: str, scope: str | None
    ) -> RegistryError:
        status = resp.status_code
        _, detail = self._server_detail(resp)
        said = f" (it said: {detail})" if detail else ""
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            wait = f"; retry after {retry_after:.0f} s" if retry_after is not None else ""
            return RegistryError(
                "RateLimited" if status == 429 else "RegistryError",
                f"token server {server} of registry {self.host} answered HTTP {status}{wait}{said}",
                status_code=status,
                retry_after=retry_after,
            )
        if status in (400, 401):
            if self._credentials.anonymous:
                return self._requires_credentials(f" (token server {server}: HTTP {status})")
            return RegistryError(
                "AuthenticationFailed",
                f"token server {server} of registry {self.host} rejected the credentials "
                f"(HTTP {status}){said}; check the username and password or token",
                status_code=status,
            )
        if status == 403:
            return RegistryError(
                "PermissionDenied",
                f"token server {server} of registry {self.host} refused access"
                f"{f' to {scope}' if scope else ''} (HTTP 403){said}",
                status_code=status,
            )
        return RegistryError(
            "RegistryError",
            f"token server {server} of registry {self.host} answered HTTP {status}{said}",
            status_code=status,
        )

    def _tls_error(self, url: str, exc: BaseException) -> RegistryError:
        target = _host_port(url)
        causes = list(_causes(exc))
        verification = [c for c in causes if isinstance(c, ssl.SSLCertVerificationError)]
        other = [c for c in causes if isinstance(c, ssl.SSLError)]
        detail = "certificate verification or TLS handshake failed"
        if verification:
            why = verification[0].verify_message or "the certificate is not trusted"
            detail = f"certificate verification failed: {why}"
        elif other:
            name = other[0].reason or type(other[0]).__name__
            detail = f"TLS handshake failed ({name})"
            if name in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
                detail += "; the server may speak plain HTTP (tls.insecure)"
        return RegistryError(
            "TLSError",
            f"TLS connection to {target} failed: {self._redact(detail)}; {_TLS_HINT}",
        )

    def _unreachable(self, url: str, exc: BaseException) -> RegistryError:
        target = _host_port(url)
        causes = list(_causes(exc))
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            why = "connection refused"
        elif any(isinstance(c, socket.gaierror) for c in causes) or any(
            type(c).__name__ == "NameResolutionError" for c in causes
        ):
            why = "the host name does not resolve"
        elif any(
            isinstance(c, requests.exceptions.ConnectTimeout)
            or type(c).__name__ == "ConnectTimeoutError"
            for c in causes
        ):
            why = f"no connection within {self._timeout:g} s"
        elif any(
            isinstance(c, requests.exceptions.Timeout | TimeoutError)
            or "Timeout" in type(c).__name__
            for c in causes
        ):
            why = f"no answer within {self._timeout:g} s"
        else:
            why = "the connection failed or was cut"
        return RegistryError(
            "Unreachable",
            f"cannot reach {target}: {why}; check the address and that the operator can "
            "reach it over the network",
        )


# --------------------------------------------------------------------------- helpers


def _scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


def _reference(reference: str) -> str:
    if not isinstance(reference, str) or not (
        _TAG_RE.fullmatch(reference) or _DIGEST_RE.fullmatch(reference)
    ):
        raise ValueError(f"not a tag or digest: {reference!r}")
    return reference


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def _host_port(url: str) -> str:
    origin = _origin(url)
    if origin is None:
        return "an invalid URL"
    _, host, port = origin
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _path(url: str) -> str:
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return "?"


def _loggable(url: str) -> str:
    """The URL without userinfo, query or fragment (those may carry signatures or tokens)."""
    origin = _origin(url)
    if origin is None:
        return "<invalid URL>"
    return f"{origin[0]}://{_host_port(url)}{_path(url)}"


def _www_authenticate(resp: requests.Response) -> list[str]:
    # Several WWW-Authenticate headers are joined by requests; the raw list keeps them apart.
    raw = getattr(getattr(resp, "raw", None), "headers", None)
    getlist = getattr(raw, "getlist", None)
    if callable(getlist):
        values = [v for v in getlist("WWW-Authenticate") if isinstance(v, str)]
        if values:
            return values
    value = resp.headers.get("WWW-Authenticate")
    return [value] if value else []


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps (urllib3 keeps the cause in ``reason``/``args``)."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack and len(seen) < 32:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(current.args)
        stack.extend(x for x in linked if isinstance(x, BaseException))


def _release(session: requests.Session | None) -> None:
    if session is not None:
        session.close()
