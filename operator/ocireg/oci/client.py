"""The OCI distribution API (Docker registry v2) operations the operator needs, on top of
the transport and the authenticator: ping, credential verification (base, pull and push
access), tag and repository listings, manifests and small blobs, following the redirects
each allows. Every failure is a :class:`RegistryError` whose message is safe to show to
users: no credentials, tokens or query strings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import requests

from ocireg import egress
from ocireg.api.names import DOCKER_HUB_API_HOST, DOCKER_HUB_HOSTS
from ocireg.api.reasons import Reason
from ocireg.egress import UNRESTRICTED, EgressPolicy
from ocireg.oci.answers import BASE, Target, requires_credentials, status_error
from ocireg.oci.auth import (
    NO_AUTH,
    Authenticator,
    Redactor,
    RegistryCredentials,
    choose_challenge,
    header_safe,
    www_authenticate,
)
from ocireg.oci.errors import RegistryError, invalid
from ocireg.oci.headers import parse_link_next
from ocireg.oci.listings import (
    MAX_REPOSITORIES,
    MAX_TAG_PAGES,
    MAX_TAGS,
    Listing,
    read_page,
)
from ocireg.oci.transport import TLSOptions, Transport
from ocireg.oci.urls import origin, url_path

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES: Final = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_REDIRECTS: Final = 10
# The distribution registry refuses manifests over 4 MiB, so larger answers are not manifests.
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
# Total deadlines (connect, TLS, every read, redirects, the token request): one exchange with
# the registry, and one whole paged listing. Real registries answer in well under a second;
# these only bound a registry that drips its answer.
REQUEST_DEADLINE: Final = 30.0
LISTING_DEADLINE: Final = 120.0

_REPOSITORY_RE: Final = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE: Final = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+")


@dataclass(frozen=True)
class VerifyResult:
    auth_scheme: str  # "none" | "basic" | "bearer"
    pull: bool | None  # None when no repository was checked
    push: bool | None


class RegistryClient:
    """One registry, one set of credentials. Thread-safe; reuse it to reuse tokens and
    connections. Call :meth:`close` (or use it as a context manager) when done."""

    def __init__(
        self,
        host: str,
        credentials: RegistryCredentials = RegistryCredentials(),  # noqa: B008 - frozen
        tls: TLSOptions = TLSOptions(),  # noqa: B008 - frozen
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
        scheme = "http" if tls.insecure else "https"
        self._base_url = f"{scheme}://{api_host}"
        self._origin = origin(self._base_url)
        if self._origin is None:
            raise ValueError(f"registry host {host!r} is not a valid host[:port]")
        self._credentials = credentials
        self._deadline = deadline
        self._listing_namespace = listing_namespace
        redact = Redactor(credentials.secret_values())
        self._transport = Transport(
            host,
            self._base_url,
            tls,
            timeout=timeout,
            session=session,
            user_agent=user_agent,
            egress_policy=egress_policy,
            redact=redact,
        )
        self._auth = Authenticator(credentials, self._transport, redact)
        token = credentials.registry_token
        if token and not header_safe(token):
            self._transport.problem = RegistryError(
                Reason.AUTHENTICATION_FAILED,
                "the registry token holds characters that cannot be sent in an HTTP header "
                "(non-ASCII or control characters); check the Secret's value",
            )

    # ---------------------------------------------------------------- public properties

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def request_count(self) -> int:
        """HTTP requests made so far, token server and redirect hops included."""
        return self._transport.request_count

    @property
    def rate_limit_remaining(self) -> int | None:
        """The last RateLimit-Remaining value seen (Docker Hub), or None."""
        return self._transport.rate_limit_remaining

    def close(self) -> None:
        """Release the HTTP session if this client created it."""
        self._transport.close()

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
        resp = self._transport.request("GET", url)
        with contextlib.closing(resp):
            if 200 <= resp.status_code < 300:
                self._auth.challenge = NO_AUTH
                return "none"
            if resp.status_code == 401:
                challenge = choose_challenge(www_authenticate(resp))
                if challenge is None:
                    raise RegistryError(
                        Reason.INVALID_RESPONSE,
                        f"registry {self.host} answered 401 without a usable WWW-Authenticate "
                        "challenge (expected Basic, or Bearer with a realm); it does not "
                        "look like an OCI registry",
                        status_code=401,
                    )
                self._auth.challenge = challenge
                return challenge.scheme
            raise self._error_for(resp, "GET", url, BASE)

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
                raise requires_credentials(self.host)
            if not self._credentials.registry_token:
                raise RegistryError(
                    Reason.AUTHENTICATION_FAILED,
                    f"registry {self.host} asks for a username and password (HTTP Basic); "
                    "an identity token can only be used with a Bearer token service",
                    status_code=401,
                )
        if scheme != "none":
            url = self._url("/v2/")
            resp = self._send("GET", url, scope=None)
            with contextlib.closing(resp):
                if not 200 <= resp.status_code < 300:
                    raise self._error_for(resp, "GET", url, BASE)
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
        target = Target("repository", repo)
        what = f"the tag list of {repo}"
        listing = Listing(what, "tags", MAX_TAGS, self._listing_namespace)
        seen = {url}
        with contextlib.closing(listing), self._within(LISTING_DEADLINE):
            for _ in range(MAX_TAG_PAGES):
                with self._within(self._deadline):
                    resp = self._send("GET", url, scope=_scope(repo, "pull"))
                    with contextlib.closing(resp):
                        if resp.status_code != 200:
                            raise self._error_for(resp, "GET", url, target)
                        body = read_page(self._transport, resp, listing)
                        link = resp.headers.get("Link")
                        page_url = resp.url or url
                page = body.get("tags") if isinstance(body, dict) else None
                if not isinstance(body, dict) or not (page is None or isinstance(page, list)):
                    raise invalid(f"{what} is not a JSON object with tags")
                for tag in page or ():
                    if not isinstance(tag, str):
                        raise invalid(f"{what} holds a non-string tag")
                    listing.add(tag)
                if listing.full:
                    raise listing.too_many(self.host)
                try:
                    next_url = parse_link_next(link, page_url)
                except ValueError:
                    raise invalid(f"{what} came with a malformed Link header") from None
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
                    raise self._error_for(resp, "GET", url, Target("manifest", repo, ref))
                body = self._transport.read_capped(
                    resp, MAX_MANIFEST_BYTES, f"manifest {ref} of {repo}"
                )
                header_digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        computed = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.startswith("sha256:") and ref != computed:
            raise invalid(f"manifest {ref} of {repo} does not match its digest")
        try:
            manifest = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting
            raise invalid(f"manifest {ref} of {repo} is not JSON") from None
        if not isinstance(manifest, dict):
            raise invalid(f"manifest {ref} of {repo} is not a JSON object")
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
                    raise self._error_for(resp, "GET", url, Target("blob", repo, digest))
                body = self._transport.read_capped(resp, max_bytes, f"blob {digest} of {repo}")
        algorithm, _, expected = digest.partition(":")
        if algorithm == "sha256" and hashlib.sha256(body).hexdigest() != expected:
            raise invalid(f"blob {digest} of {repo} does not match its digest")
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
                    raise self._error_for(resp, "HEAD", url, Target("manifest", repo, ref))
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
        listing = Listing("the catalog", "repositories", MAX_REPOSITORIES, self._listing_namespace)
        seen = {url}
        with contextlib.closing(listing), self._within(LISTING_DEADLINE):
            for _ in range(MAX_TAG_PAGES):
                with self._within(self._deadline):
                    resp = self._send("GET", url, scope="registry:catalog:*")
                    with contextlib.closing(resp):
                        if resp.status_code != 200:
                            raise self._error_for(resp, "GET", url, Target("catalog"))
                        body = read_page(self._transport, resp, listing)
                        link = resp.headers.get("Link")
                        page_url = resp.url or url
                page = body.get("repositories") if isinstance(body, dict) else None
                if not (page is None or isinstance(page, list)):
                    raise invalid("the catalog is not a JSON object with repositories")
                for name in page or ():
                    if isinstance(name, str) and _REPOSITORY_RE.fullmatch(name):
                        listing.add(name)
                if listing.full:
                    raise listing.too_many(self.host)
                try:
                    next_url = parse_link_next(link, page_url)
                except ValueError:
                    raise invalid("the catalog came with a malformed Link header") from None
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
            raise self._error_for(resp, "GET", url, Target("repository", repo))

    def _check_push(self, repo: str) -> bool:
        url = self._url(f"/v2/{repo}/blobs/uploads/")
        scope = _scope(repo, "pull,push")
        resp = self._send("POST", url, scope=scope)
        with contextlib.closing(resp):
            if not 200 <= resp.status_code < 300:
                raise self._error_for(resp, "POST", url, Target("upload", repo, action="push"))
            location = resp.headers.get("Location")
            base = resp.url or url
        if location:
            # Cancel the empty upload we just started; a failure only leaves it to expire.
            try:
                self._send("DELETE", urljoin(base, location), scope=scope).close()
            except (RegistryError, ValueError) as exc:
                log.debug("cancelling the test upload on %s failed: %s", self.host, exc)
        return True

    # ---------------------------------------------------------------- requests

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
            if origin(url) == self._origin:
                resp = self._auth.send(method, url, scope, headers or {})
            else:
                resp = self._transport.request(
                    method, url, headers=headers, trusted=False, role="the redirect target"
                )
            if not (redirects and resp.is_redirect):
                return resp
            location = resp.headers["Location"]
            resp.close()
            next_url = urljoin(resp.url or url, location)
            if urlsplit(next_url).scheme not in ("http", "https"):
                raise invalid(f"{method} {url_path(url)} redirected to a non-HTTP URL")
            url = next_url
        raise invalid(f"{method} {url_path(url)}: more than {MAX_REDIRECTS} redirects")

    def _error_for(
        self, resp: requests.Response, method: str, url: str, target: Target
    ) -> RegistryError:
        return status_error(self._transport, resp, method, url, target, self._credentials.anonymous)


def _scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


def _reference(reference: str) -> str:
    if not isinstance(reference, str) or not (
        _TAG_RE.fullmatch(reference) or _DIGEST_RE.fullmatch(reference)
    ):
        raise ValueError(f"not a tag or digest: {reference!r}")
    return reference
