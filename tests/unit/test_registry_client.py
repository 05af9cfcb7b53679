"""RegistryClient against a small fake registry + token server (a real HTTP server on
127.0.0.1 in a thread): auth flows, token caching, error mapping, pagination, manifests,
blobs, TLS, and that no credential ever reaches an error message."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import os
import pickle
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocireg.oci import (
    RegistryClient,
    RegistryCredentials,
    RegistryError,
    TLSOptions,
    VerifyResult,
)
from ocireg_devenv.pki import CertificateAuthority

LOOPBACK = "127.0.0.1"
SERVICE = "fake-registry"
ALICE = RegistryCredentials("alice", "wonderland-secret")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

ROUTE = re.compile(
    r"/v2/(?P<repo>.+)/(?:(?P<tags>tags/list)|manifests/(?P<ref>[^/]+)"
    r"|blobs/uploads/(?P<upload>[^/]*)|blobs/(?P<digest>[^/]+))"
)

Headers = list[tuple[str, str]]
Answer = tuple[int, Headers, bytes]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def target(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("utf-8", "replace"))


@dataclass
class Repo:
    tags: list[str] = field(default_factory=list)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


def answer(status: int, body: Any = None, headers: Headers | None = None) -> Answer:
    headers = list(headers or [])
    if isinstance(body, bytes):
        data = body
    else:
        data = json.dumps({} if body is None else body).encode()
        headers.append(("Content-Type", "application/json"))
    return status, headers, data


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # clients that time out or reject our certificate are expected here


class FakeRegistry:
    """Just enough of the distribution API and its token server, with knobs for tests."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.scheme = "bearer"  # none | basic | bearer
        self.users = {"alice": "wonderland-secret", "bob": "builder-secret"}
        self.refresh_tokens = {"identity-refresh-token-1": "alice"}
        self.static_tokens = {"static-registry-token-1": "alice"}
        self.grants: dict[str, dict[str, set[str]]] = {
            "alice": {
                "team/app": {"pull", "push"},
                "team/readonly": {"pull"},
                "team/ghost": {"pull", "push"},
                "public/app": {"pull"},
            },
            "bob": {"public/app": {"pull"}},
            "": {"public/app": {"pull"}},  # anonymous
        }
        app = Repo(tags=["v1", "v2", "v3", "v4", "v5"])
        self.repos: dict[str, Repo] = {
            "team/app": app,
            "team/readonly": Repo(tags=["latest"]),
            "public/app": Repo(tags=["1.0"]),
        }
        self.manifest = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}
        ).encode()
        app.manifests["v1"] = (OCI_MANIFEST, self.manifest)
        app.manifests[digest_of(self.manifest)] = (OCI_MANIFEST, self.manifest)
        self.blob = b"chart bytes " * 100
        app.blobs[digest_of(self.blob)] = self.blob
        self.allow_anonymous_tokens = True
        self.token_lifetime: float | None = 300
        self.token_field = "token"
        self.deny_status = 401  # bearer registries answer 401 insufficient_scope, some 403
        self.link_style = "relative"  # relative | absolute | opaque | loop
        self.send_digest_header = True
        self.blob_redirect: str | None = None  # None | "same" | "cross"
        self.blob_chunked = False
        self.upload_location = "relative"
        self.issued: dict[str, tuple[str, dict[str, set[str]]]] = {}
        self.requests: list[Request] = []
        self.token_requests: list[Request] = []
        self.overrides: dict[str, Callable[[Request], Answer | None]] = {}
        self._lock = threading.Lock()
        self._cursors: dict[str, tuple[str, int]] = {}
        self._ssl = ssl_context
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # ---------------------------------------------------------------- plumbing

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self.host}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def client(self, credentials: RegistryCredentials = ALICE, **kwargs: Any) -> RegistryClient:
        kwargs.setdefault("tls", TLSOptions(insecure=self._ssl is None))
        kwargs.setdefault("timeout", 5.0)
        return RegistryClient(self.host, credentials, **kwargs)

    def start(self) -> FakeRegistry:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else small writes wait for delayed ACKs

            def handle_one(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(
                    self.command,
                    url.path,
                    parse_qs(url.query, keep_blank_values=True),
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                )
                status, headers, body = fake.dispatch(req)
                self.send_response(status)
                chunked = any(k == "Transfer-Encoding" for k, _ in headers)
                for key, value in headers:
                    self.send_header(key, value)
                if chunked:
                    self.end_headers()
                    for start in range(0, len(body), 4096):
                        piece = body[start : start + 4096]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PUT = handle_one

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = _QuietServer((LOOPBACK, 0), Handler)
        if self._ssl is not None:
            self._httpd.socket = self._ssl.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        # A short poll interval keeps shutdown (once per test) fast.
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def hits(self, target: str) -> int:
        return sum(1 for r in self.requests if r.target == target)

    def revoke_tokens(self) -> None:
        with self._lock:
            self.issued.clear()

    # ---------------------------------------------------------------- dispatch

    def dispatch(self, req: Request) -> Answer:
        with self._lock:
            self.requests.append(req)
        override = self.overrides.get(req.target) or self.overrides.get(f"{req.method} *")
        if override is not None:
            result = override(req)
            if result is not None:
                return result
        if req.path == "/token":
            return self.token(req)
        if req.path.startswith("/storage/"):
            data = self._find_blob(req.path.removeprefix("/storage/"))
            return answer(200, data) if data is not None else answer(404)
        if req.path == "/v2/":
            return self.authorize(req, None, None) or answer(200)
        route = ROUTE.fullmatch(req.path)
        if route is not None:
            kind = next(k for k in ("tags", "ref", "upload", "digest") if route[k] is not None)
            return self.repository(req, kind, route["repo"], route[kind])
        return answer(404, {"errors": [{"code": "NOT_FOUND", "message": "no such route"}]})

    def repository(self, req: Request, kind: str, repo: str, last: str) -> Answer:
        action = "push" if req.method in ("POST", "DELETE", "PUT") else "pull"
        denied = self.authorize(req, repo, action)
        if denied:
            return denied
        stored = self.repos.get(repo)
        if stored is None:
            unknown = {"code": "NAME_UNKNOWN", "message": "repository name not known"}
            return answer(404, {"errors": [unknown]})
        if kind == "tags":
            return self.tags(req, repo, stored)
        if kind == "ref":
            found = stored.manifests.get(last)
            if found is None:
                unknown = {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}
                return answer(404, {"errors": [unknown]})
            media_type, data = found
            headers = [("Content-Type", media_type)]
            if self.send_digest_header:
                headers.append(("Docker-Content-Digest", digest_of(data)))
            return 200, headers, data
        if kind == "digest":
            data = stored.blobs.get(last)
            if data is None:
                return answer(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]})
            if self.blob_redirect == "same":
                return answer(307, b"", [("Location", f"/storage/{last}")])
            if self.blob_redirect == "cross":
                target = f"http://localhost:{self.port}/storage/{last}"
                return answer(307, b"", [("Location", target)])
            if self.blob_chunked:
                return 200, [("Transfer-Encoding", "chunked")], data
            return answer(200, data)
        # uploads
        if req.method == "POST":
            location = f"/v2/{repo}/blobs/uploads/upload-1?_state=opaque"
            if self.upload_location == "absolute":
                location = self.url + location
            return answer(202, b"", [("Location", location), ("Docker-Upload-UUID", "upload-1")])
        return answer(204, b"")

    def tags(self, req: Request, repo: str, stored: Repo) -> Answer:
        tags = sorted(stored.tags)
        cursor = (req.query.get("cursor") or [""])[0]
        n = int((req.query.get("n") or ["0"])[0] or 0)
        last = (req.query.get("last") or [""])[0]
        if self.link_style == "loop":
            link = f'</v2/{repo}/tags/list?cursor=again>; rel="next"'
            return answer(200, {"name": repo, "tags": tags[:2]}, [("Link", link)])
        if cursor:
            last, n = self._cursors[cursor]
        if last:
            tags = [t for t in tags if t > last]
        headers: Headers = []
        if n and len(tags) > n:
            tags = tags[:n]
            if self.link_style == "relative":
                link = f'</v2/{repo}/tags/list?last={tags[-1]}&n={n}>; rel="next"'
            elif self.link_style == "absolute":
                link = f"<{self.url}/v2/{repo}/tags/list?last={tags[-1]}&n={n}>; rel=next"
            else:
                token = base64.urlsafe_b64encode(os.urandom(6)).decode()
                self._cursors[token] = (tags[-1], n)
                link = (
                    '<https://docs.example/pagination>; rel="help", '
                    f'</v2/{repo}/tags/list?cursor={token}>; title="more"; rel="next"'
                )
            headers.append(("Link", link))
        return answer(200, {"name": repo, "tags": tags}, headers)

    def _find_blob(self, digest: str) -> bytes | None:
        for repo in self.repos.values():
            if digest in repo.blobs:
                return repo.blobs[digest]
        return None

    # ---------------------------------------------------------------- auth

    def _basic_user(self, authorization: str) -> str | None:
        kind, _, value = authorization.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == password else None

    def authorize(self, req: Request, repo: str | None, action: str | None) -> Answer | None:
        if self.scheme == "none":
            return None
        auth = req.headers.get("Authorization", "")
        denied = {"errors": [{"code": "DENIED", "message": "requested access is denied"}]}
        if self.scheme == "basic":
            user = self._basic_user(auth)
            if user is None:
                return answer(401, {"errors": [{"code": "UNAUTHORIZED"}]}, self.basic_challenge)
            if repo is None or action in self.grants.get(user, {}).get(repo, set()):
                return None
            return answer(403, denied)
        challenge = f'Bearer realm="{self.realm}",service="{SERVICE}"'
        if repo is not None:
            challenge += f',scope="repository:{repo}:{action}"'
        grant: dict[str, set[str]] | None = None
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ")
            with self._lock:
                if token in self.static_tokens:
                    grant = self.grants.get(self.static_tokens[token], {})
                elif token in self.issued:
                    grant = self.issued[token][1]
        if grant is None:
            error = ',error="invalid_token"' if auth else ""
            unauthorized = {"errors": [{"code": "UNAUTHORIZED"}]}
            return answer(401, unauthorized, [("WWW-Authenticate", challenge + error)])
        if repo is None or action in grant.get(repo, set()):
            return None
        headers = [("WWW-Authenticate", challenge + ',error="insufficient_scope"')]
        return answer(self.deny_status, denied, headers if self.deny_status == 401 else [])

    @property
    def basic_challenge(self) -> Headers:
        return [("WWW-Authenticate", 'Basic realm="fake registry"')]

    def token(self, req: Request) -> Answer:
        with self._lock:
            self.token_requests.append(req)
        bad = {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        if req.method == "GET":
            auth = req.headers.get("Authorization", "")
            if not auth:
                if not self.allow_anonymous_tokens:
                    return answer(401, bad)
                user = ""
            else:
                found = self._basic_user(auth)
                if found is None:
                    return answer(401, bad)
                user = found
            scopes = req.query.get("scope", [])
        else:
            form = req.form
            if form.get("grant_type") != ["refresh_token"]:
                return answer(400, {"error": "unsupported_grant_type"})
            refresh = (form.get("refresh_token") or [""])[0]
            if refresh not in self.refresh_tokens:
                return answer(401, {"error": "invalid_grant"})
            user = self.refresh_tokens[refresh]
            scopes = form.get("scope", [])
        access: dict[str, set[str]] = {}
        for scope in (s for value in scopes for s in value.split()):
            _, name, actions = scope.split(":")
            allowed = set(actions.split(",")) & self.grants.get(user, {}).get(name, set())
            access.setdefault(name, set()).update(allowed)
        token = "issued-" + base64.urlsafe_b64encode(os.urandom(12)).decode()
        with self._lock:
            self.issued[token] = (user, access)
        body: dict[str, Any] = {self.token_field: token}
        if self.token_lifetime is not None:
            body["expires_in"] = self.token_lifetime
        return answer(200, body)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry().start()
    yield server
    server.stop()


def raises(reason: str, call: Callable[[], object]) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        call()
    assert info.value.reason == reason, repr(info.value)
    return info.value


# ------------------------------------------------------------------------------------ ping


@pytest.mark.parametrize("scheme", ["none", "basic", "bearer"])
def test_ping_reports_the_scheme_the_registry_demands(fake: FakeRegistry, scheme: str) -> None:
    fake.scheme = scheme
    with fake.client(RegistryCredentials()) as client:
        assert client.ping() == scheme
        assert client.request_count == 1


@pytest.mark.parametrize(
    "header",
    [None, "", "Negotiate", "Bearer service=x", 'Bearer realm="unterminated', "garbage =="],
)
def test_ping_401_without_usable_challenge_is_invalid_response(
    fake: FakeRegistry, header: str | None
) -> None:
    headers = [] if header is None else [("WWW-Authenticate", header)]
    fake.overrides["GET /v2/"] = lambda req: answer(401, {}, headers)
    error = raises("InvalidResponse", fake.client().ping)
    assert error.status_code == 401
    assert not error.transient


def test_ping_picks_bearer_among_several_challenges(fake: FakeRegistry) -> None:
    challenges = [
        ("WWW-Authenticate", 'Basic realm="x"'),
        ("WWW-Authenticate", f'Bearer realm="{fake.realm}",service="{SERVICE}"'),
    ]
    fake.overrides["GET /v2/"] = lambda req: answer(401, {}, challenges)
    assert fake.client().ping() == "bearer"


def test_base_url_and_docker_hub_mapping() -> None:
    assert RegistryClient("ghcr.io").base_url == "https://ghcr.io"
    assert RegistryClient("localhost:5000", tls=TLSOptions(insecure=True)).base_url == (
        "http://localhost:5000"
    )
    for hub in ("docker.io", "index.docker.io"):
        client = RegistryClient(hub)
        assert client.base_url == "https://registry-1.docker.io"
        assert client._repository("alpine") == "library/alpine"
        assert client._repository("bitnami/redis") == "bitnami/redis"
    for bad in ("", "https://ghcr.io", "user@host", "host/path"):
        with pytest.raises(ValueError, match="host"):
            RegistryClient(bad)


def test_invalid_names_are_refused_before_any_request(fake: FakeRegistry) -> None:
    client = fake.client()
    for call in (
        lambda: client.list_tags("../etc"),
        lambda: client.list_tags("Team/App"),
        lambda: client.get_manifest("team/app", "../x"),
        lambda: client.get_blob("team/app", "not-a-digest"),
        lambda: client.list_tags("team/app", page_size=0),
    ):
        with pytest.raises(ValueError, match=r"not a|page_size"):
            call()
    assert client.request_count == 0


# ------------------------------------------------------------------------------- basic auth


def test_basic_auth_success(fake: FakeRegistry) -> None:
    fake.scheme = "basic"
    with fake.client() as client:
        assert client.verify("team/app") == VerifyResult("basic", True, None)
    authorized = [r for r in fake.requests if r.headers.get("Authorization")]
    assert authorized
    assert (
        authorized[0].headers["Authorization"]
        == "Basic " + base64.b64encode(b"alice:wonderland-secret").decode()
    )


def test_basic_auth_wrong_password(fake: FakeRegistry) -> None:
    fake.scheme = "basic"
    error = raises("AuthenticationFailed", fake.client(RegistryCredentials("alice", "nope")).verify)
    assert error.status_code == 401
    assert not error.transient
    assert "rejected the credentials" in error.message


def test_basic_registry_with_anonymous_credentials(fake: FakeRegistry) -> None:
    fake.scheme = "basic"
    client = fake.client(RegistryCredentials())
    error = raises("AuthenticationFailed", client.verify)
    assert "requires credentials" in error.message
    assert client.request_count == 1  # the ping; no point trying without credentials


def test_basic_permission_denied_is_403(fake: FakeRegistry) -> None:
    fake.scheme = "basic"
    error = raises("PermissionDenied", lambda: fake.client().verify("other/repo"))
    assert error.status_code == 403
    assert "no pull access to repository other/repo" in error.message


def test_basic_credentials_with_utf8(fake: FakeRegistry) -> None:
    fake.scheme = "basic"
    fake.users["jürgen"] = "pässwörd€"
    fake.grants["jürgen"] = {"team/app": {"pull"}}
    assert fake.client(RegistryCredentials("jürgen", "pässwörd€")).verify("team/app").pull


def test_open_registry_needs_no_credentials(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    with fake.client(RegistryCredentials()) as client:
        assert client.verify("team/app", push=True) == VerifyResult("none", True, True)
    assert not any(r.headers.get("Authorization") for r in fake.requests)


# ------------------------------------------------------------------------------ bearer auth


def test_bearer_flow_with_basic_credentials_at_the_token_server(fake: FakeRegistry) -> None:
    client = fake.client()
    assert client.verify("team/app") == VerifyResult("bearer", True, None)
    assert [r.method for r in fake.token_requests] == ["GET", "GET"]
    first, second = fake.token_requests
    assert first.query == {"service": [SERVICE]}  # scope-less token for GET /v2/
    assert second.query == {"service": [SERVICE], "scope": ["repository:team/app:pull"]}
    assert all(r.headers["Authorization"].startswith("Basic ") for r in fake.token_requests)
    tags_request = [r for r in fake.requests if r.path == "/v2/team/app/tags/list"][-1]
    assert tags_request.headers["Authorization"].startswith("Bearer issued-")
    # ping, token, /v2/, token, tags
    assert client.request_count == 5


@pytest.mark.parametrize("field_name", ["token", "access_token"])
def test_token_field_names(fake: FakeRegistry, field_name: str) -> None:
    fake.token_field = field_name
    assert fake.client().verify("team/app").pull


def test_bearer_wrong_password_fails_at_the_token_server(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials("alice", "wrong"))
    error = raises("AuthenticationFailed", client.verify)
    assert error.status_code == 401
    assert "token server" in error.message
    assert "bad credentials" in error.message  # the server's own words help


def test_identity_token_is_exchanged_with_a_post(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials(identity_token="identity-refresh-token-1"))
    assert client.verify("team/app", push=True) == VerifyResult("bearer", True, True)
    assert {r.method for r in fake.token_requests} == {"POST"}
    forms = [r.form for r in fake.token_requests]
    assert forms[0] == {
        "grant_type": ["refresh_token"],
        "client_id": ["ocireg"],
        "refresh_token": ["identity-refresh-token-1"],
        "service": [SERVICE],
    }
    assert forms[1]["scope"] == ["repository:team/app:pull"]
    assert forms[2]["scope"] == ["repository:team/app:pull,push"]
    assert all("Authorization" not in r.headers for r in fake.token_requests)
    assert all(not r.query for r in fake.token_requests)  # the secret stays out of URLs


def test_bad_identity_token(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials(identity_token="expired-refresh-token"))
    error = raises("AuthenticationFailed", client.verify)
    assert "invalid_grant" in error.message


def test_registry_token_is_used_directly(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials(registry_token="static-registry-token-1"))
    assert client.verify("team/app", push=True) == VerifyResult("bearer", True, True)
    assert fake.token_requests == []
    sent = {r.headers.get("Authorization") for r in fake.requests[1:]}
    assert sent == {"Bearer static-registry-token-1"}


def test_rejected_registry_token(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials(registry_token="not-a-valid-token"))
    error = raises("AuthenticationFailed", client.verify)
    assert error.status_code == 401
    assert client.request_count == 2  # ping, /v2/ with the token: no retry loop


def test_registry_token_unfit_for_a_header(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials(registry_token="line\nbreak"))
    raises("AuthenticationFailed", client.verify)
    assert fake.requests == []


def test_anonymous_bearer_pulls_public_repositories(fake: FakeRegistry) -> None:
    client = fake.client(RegistryCredentials())
    assert client.verify("public/app") == VerifyResult("bearer", True, None)
    assert all("Authorization" not in r.headers for r in fake.token_requests)
    error = raises("PermissionDenied", lambda: client.verify("team/app"))
    assert "anonymous pull access to repository team/app" in error.message


def test_anonymous_bearer_refused_by_the_token_server(fake: FakeRegistry) -> None:
    fake.allow_anonymous_tokens = False
    error = raises("AuthenticationFailed", fake.client(RegistryCredentials()).verify)
    assert "requires credentials" in error.message


def test_list_tags_without_ping_learns_the_challenge_from_the_401(fake: FakeRegistry) -> None:
    client = fake.client()
    assert client.list_tags("team/app") == ["v1", "v2", "v3", "v4", "v5"]
    # unauthenticated try, token, retry; then the token is reused straight away
    assert client.request_count == 3
    assert client.list_tags("team/app") == ["v1", "v2", "v3", "v4", "v5"]
    assert client.request_count == 4


# ---------------------------------------------------------------------------- token cache


def test_token_is_cached_between_verify_calls(fake: FakeRegistry) -> None:
    client = fake.client()
    client.verify()
    client.verify()
    assert len(fake.token_requests) == 1
    client.verify("team/app")
    client.verify("team/app")
    assert len(fake.token_requests) == 2  # one more, for the pull scope


def test_token_cache_honours_expires_in_with_a_renewal_margin(fake: FakeRegistry) -> None:
    now = [1000.0]
    client = fake.client()
    client._auth.clock = lambda: now[0]
    client.verify()
    now[0] += 289  # 300 s lifetime, renewed 10 s early
    client.verify()
    assert len(fake.token_requests) == 1
    now[0] += 2
    client.verify()
    assert len(fake.token_requests) == 2


def test_token_without_expires_in_lasts_60_seconds(fake: FakeRegistry) -> None:
    fake.token_lifetime = None
    now = [0.0]
    client = fake.client()
    client._auth.clock = lambda: now[0]
    client.verify()
    now[0] = 49
    client.verify()
    assert len(fake.token_requests) == 1
    now[0] = 51
    client.verify()
    assert len(fake.token_requests) == 2


def test_short_lived_tokens_are_fetched_again(fake: FakeRegistry) -> None:
    fake.token_lifetime = 5  # under the renewal margin: never reused
    client = fake.client()
    client.verify()
    client.verify()
    assert len(fake.token_requests) == 2


def test_revoked_cached_token_is_refetched_and_retried_once(fake: FakeRegistry) -> None:
    client = fake.client()
    client.verify("team/app")
    fake.revoke_tokens()
    before = client.request_count
    assert client.list_tags("team/app")
    # tags (401 with the stale token), token, tags again
    assert client.request_count == before + 3
    assert len(fake.token_requests) == 3


def test_cached_token_rejected_without_a_challenge_is_renewed(fake: FakeRegistry) -> None:
    client = fake.client()
    client.verify("team/app")
    fake.revoke_tokens()
    bare: list[Request] = []

    def bare_401_once(req: Request) -> Answer | None:
        if bare:
            return None
        bare.append(req)
        return answer(401, {})

    fake.overrides["GET /v2/team/app/tags/list"] = bare_401_once
    assert client.list_tags("team/app") == ["v1", "v2", "v3", "v4", "v5"]
    assert len(fake.token_requests) == 3


def test_closed_client_refuses_requests(fake: FakeRegistry) -> None:
    client = fake.client()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()


def test_retry_happens_only_once(fake: FakeRegistry) -> None:
    client = fake.client()
    client.verify()

    def always_401(req: Request) -> Answer:
        challenge = f'Bearer realm="{fake.realm}",service="{SERVICE}",error="invalid_token"'
        return answer(401, {}, [("WWW-Authenticate", challenge)])

    fake.overrides["GET /v2/team/app/tags/list"] = always_401
    before = client.request_count
    error = raises("PermissionDenied", lambda: client.list_tags("team/app"))
    assert error.status_code == 401
    # tags (fresh token for the scope), no retry with a fresh token
    assert client.request_count - before == 2
    before = client.request_count
    raises("PermissionDenied", lambda: client.list_tags("team/app"))
    # cached token rejected: drop it, fetch another, retry once, give up
    assert client.request_count - before == 3


# ---------------------------------------------------------------------- pull / push checks


@pytest.mark.parametrize("location", ["relative", "absolute"])
def test_push_check_cancels_the_upload(fake: FakeRegistry, location: str) -> None:
    fake.upload_location = location
    assert fake.client().verify("team/app", push=True) == VerifyResult("bearer", True, True)
    assert fake.hits("POST /v2/team/app/blobs/uploads/") == 1
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert [d.path for d in deletes] == ["/v2/team/app/blobs/uploads/upload-1"]
    assert deletes[0].query == {"_state": ["opaque"]}
    assert deletes[0].headers["Authorization"].startswith("Bearer ")
    push_tokens = [r for r in fake.token_requests if "pull,push" in str(r.query)]
    assert len(push_tokens) == 1


def test_failing_upload_cancel_is_ignored(fake: FakeRegistry) -> None:
    fake.overrides["DELETE *"] = lambda req: answer(500, {})
    assert fake.client().verify("team/app", push=True).push is True


def test_push_denied(fake: FakeRegistry) -> None:
    error = raises("PermissionDenied", lambda: fake.client().verify("team/readonly", push=True))
    assert "no push access to repository team/readonly" in error.message
    assert not any(r.method == "DELETE" for r in fake.requests)


def test_push_not_checked_unless_asked(fake: FakeRegistry) -> None:
    assert fake.client().verify("team/readonly") == VerifyResult("bearer", True, None)
    assert fake.hits("POST /v2/team/readonly/blobs/uploads/") == 0


def test_repository_not_found(fake: FakeRegistry) -> None:
    error = raises("RepositoryNotFound", lambda: fake.client().verify("team/ghost"))
    assert error.status_code == 404
    assert "does not exist" in error.message
    assert "not visible" in error.message
    assert not error.transient


def test_bearer_permission_denied_401_and_403(fake: FakeRegistry) -> None:
    error = raises("PermissionDenied", lambda: fake.client().verify("other/repo"))
    assert error.status_code == 401
    fake.deny_status = 403
    error = raises("PermissionDenied", lambda: fake.client().verify("other/repo"))
    assert error.status_code == 403
    assert not error.transient


# --------------------------------------------------------------- rate limits, server errors


def test_429_with_retry_after_seconds_and_rate_limit_header(fake: FakeRegistry) -> None:
    fake.overrides["GET /v2/team/app/tags/list"] = lambda req: answer(
        429,
        {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit reached"}]},
        [("Retry-After", "7"), ("RateLimit-Remaining", "0;w=21600")],
    )
    client = fake.client()
    started = time.monotonic()
    error = raises("RateLimited", lambda: client.list_tags("team/app"))
    assert time.monotonic() - started < 2  # the client never sleeps
    assert error.transient
    assert error.retry_after == 7
    assert error.status_code == 429
    assert "pull rate limit reached" in error.message
    assert client.rate_limit_remaining == 0


def test_429_with_retry_after_http_date(fake: FakeRegistry) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake.overrides["GET /v2/"] = lambda req: answer(429, {}, [("Retry-After", when)])
    error = raises("RateLimited", fake.client().ping)
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


def test_rate_limit_remaining_is_tracked(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    client = fake.client()
    assert client.rate_limit_remaining is None
    fake.overrides["GET /v2/"] = lambda req: answer(
        200, {}, [("RateLimit-Remaining", "76;w=21600")]
    )
    client.ping()
    assert client.rate_limit_remaining == 76


def test_503_is_transient_with_retry_after(fake: FakeRegistry) -> None:
    fake.overrides["GET /v2/"] = lambda req: answer(503, b"", [("Retry-After", "120")])
    error = raises("RegistryError", fake.client().ping)
    assert (error.status_code, error.transient, error.retry_after) == (503, True, 120)


@pytest.mark.parametrize(("status", "transient"), [(500, True), (502, True), (400, False)])
def test_other_statuses(fake: FakeRegistry, status: int, transient: bool) -> None:
    fake.scheme = "none"
    fake.overrides["GET /v2/team/app/tags/list"] = lambda req: answer(status, b"oops")
    error = raises("RegistryError", lambda: fake.client().list_tags("team/app"))
    assert (error.status_code, error.transient) == (status, transient)
    assert str(status) in error.message


def test_token_server_errors(fake: FakeRegistry) -> None:
    fake.overrides["GET /token"] = lambda req: answer(503, {}, [("Retry-After", "3")])
    error = raises("RegistryError", fake.client().verify)
    assert (error.transient, error.retry_after) == (True, 3)
    assert "token server" in error.message
    fake.overrides["GET /token"] = lambda req: answer(200, {"nothing": "here"})
    raises("InvalidResponse", fake.client().verify)
    fake.overrides["GET /token"] = lambda req: answer(200, b"<html>")
    raises("InvalidResponse", fake.client().verify)


def test_not_a_registry(fake: FakeRegistry) -> None:
    fake.overrides["GET /v2/"] = lambda req: answer(404, b"not found")
    error = raises("RegistryError", fake.client().ping)
    assert "/v2/" in error.message
    assert not error.transient


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    client = RegistryClient(f"{LOOPBACK}:{port}", ALICE, TLSOptions(insecure=True), timeout=2)
    error = raises("Unreachable", client.verify)
    assert f"{LOOPBACK}:{port}" in error.message
    assert "refused" in error.message
    assert error.transient
    assert "wonderland" not in repr(error)


def test_read_timeout_is_unreachable(fake: FakeRegistry) -> None:
    def slow(req: Request) -> Answer:
        time.sleep(0.6)
        return answer(200, {})

    fake.overrides["GET /v2/"] = slow
    error = raises("Unreachable", fake.client(timeout=0.2).ping)
    assert "0.2 s" in error.message


# ------------------------------------------------------------------------------ pagination


@pytest.mark.parametrize("style", ["relative", "absolute", "opaque"])
def test_tag_pagination(fake: FakeRegistry, style: str) -> None:
    fake.scheme = "none"
    fake.link_style = style
    client = fake.client()
    assert client.list_tags("team/app", page_size=2) == ["v1", "v2", "v3", "v4", "v5"]
    assert client.request_count == 3
    first, *rest = fake.requests
    assert first.query == {"n": ["2"]}
    if style == "opaque":
        assert all(set(r.query) == {"cursor"} for r in rest)
    else:
        assert [r.query["last"] for r in rest] == [["v2"], ["v4"]]


def test_tag_pagination_with_bearer_auth(fake: FakeRegistry) -> None:
    client = fake.client()
    assert client.list_tags("team/app", page_size=2) == ["v1", "v2", "v3", "v4", "v5"]
    assert len(fake.token_requests) == 1


def test_tag_pagination_loop_guard(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    fake.link_style = "loop"
    client = fake.client()
    assert client.list_tags("team/app") == ["v1", "v2"]
    assert client.request_count == 2  # first page, then the cursor page that links to itself


def test_tag_list_of_an_empty_repository(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    fake.overrides["GET /v2/team/app/tags/list"] = lambda req: answer(
        200, {"name": "team/app", "tags": None}
    )
    assert fake.client().list_tags("team/app") == []


@pytest.mark.parametrize(
    "body", [b"[]", b"not json", b'{"tags": "v1"}', b'{"tags": [1]}', b"\xff\xfe"]
)
def test_malformed_tag_lists(fake: FakeRegistry, body: bytes) -> None:
    fake.scheme = "none"
    fake.overrides["GET /v2/team/app/tags/list"] = lambda req: answer(200, body)
    raises("InvalidResponse", lambda: fake.client().list_tags("team/app"))


def test_malformed_link_header(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    fake.overrides["GET /v2/team/app/tags/list"] = lambda req: answer(
        200, {"tags": ["a"]}, [("Link", '</next>; rel="next')]
    )
    raises("InvalidResponse", lambda: fake.client().list_tags("team/app"))


# ------------------------------------------------------------------------ manifests, blobs


def test_manifest_with_digest_header(fake: FakeRegistry) -> None:
    manifest, digest = fake.client().get_manifest("team/app", "v1")
    assert manifest["mediaType"] == OCI_MANIFEST
    assert digest == digest_of(fake.manifest)
    accept = [r for r in fake.requests if r.path == "/v2/team/app/manifests/v1"][-1]
    for media_type in (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert media_type in accept.headers["Accept"]


def test_manifest_digest_header_is_returned_as_sent(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    fake.overrides["GET /v2/team/app/manifests/v1"] = lambda req: answer(
        200, fake.manifest, [("Docker-Content-Digest", "sha256:" + "ab" * 32)]
    )
    assert fake.client().get_manifest("team/app", "v1")[1] == "sha256:" + "ab" * 32


def test_manifest_digest_computed_without_header(fake: FakeRegistry) -> None:
    fake.send_digest_header = False
    _, digest = fake.client().get_manifest("team/app", "v1")
    assert digest == digest_of(fake.manifest)


def test_manifest_by_digest_is_checked(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    digest = digest_of(fake.manifest)
    assert fake.client().get_manifest("team/app", digest)[1] == digest
    fake.overrides[f"GET /v2/team/app/manifests/{digest}"] = lambda req: answer(200, {"x": 1})
    raises("InvalidResponse", lambda: fake.client().get_manifest("team/app", digest))


def test_manifest_not_found(fake: FakeRegistry) -> None:
    error = raises("RegistryError", lambda: fake.client().get_manifest("team/app", "nope"))
    assert error.status_code == 404
    assert not error.transient
    raises("RepositoryNotFound", lambda: fake.client().get_manifest("team/ghost", "v1"))


def test_blob(fake: FakeRegistry) -> None:
    assert fake.client().get_blob("team/app", digest_of(fake.blob)) == fake.blob


@pytest.mark.parametrize("chunked", [False, True])
def test_blob_size_cap(fake: FakeRegistry, chunked: bool) -> None:
    fake.blob_chunked = chunked
    client = fake.client()
    error = raises("AnswerTooLarge", lambda: client.get_blob("team/app", digest_of(fake.blob), 100))
    assert "limit" in error.message
    assert client.get_blob("team/app", digest_of(fake.blob), len(fake.blob)) == fake.blob


def test_blob_redirect_same_origin(fake: FakeRegistry) -> None:
    fake.blob_redirect = "same"
    client = fake.client()
    assert client.get_blob("team/app", digest_of(fake.blob)) == fake.blob
    storage = [r for r in fake.requests if r.path.startswith("/storage/")]
    assert len(storage) == 1


def test_blob_redirect_elsewhere_drops_credentials(fake: FakeRegistry) -> None:
    fake.blob_redirect = "cross"  # localhost: another origin for the client
    client = fake.client()
    assert client.get_blob("team/app", digest_of(fake.blob)) == fake.blob
    storage = [r for r in fake.requests if r.path.startswith("/storage/")]
    assert len(storage) == 1
    assert "Authorization" not in storage[0].headers


def test_blob_digest_mismatch(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    digest = digest_of(fake.blob)
    fake.overrides[f"GET /v2/team/app/blobs/{digest}"] = lambda req: answer(200, b"tampered")
    raises("InvalidResponse", lambda: fake.client().get_blob("team/app", digest))


def test_redirect_loop(fake: FakeRegistry) -> None:
    fake.scheme = "none"
    digest = digest_of(fake.blob)
    fake.overrides[f"GET /v2/team/app/blobs/{digest}"] = lambda req: answer(
        302, b"", [("Location", req.path)]
    )
    raises("InvalidResponse", lambda: fake.client().get_blob("team/app", digest))


# ------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("registry client test CA")


@pytest.fixture
def tls_fake(ca: CertificateAuthority, tmp_path: Path) -> Iterator[FakeRegistry]:
    crt, key = ca.server_cert("fake", [LOOPBACK]).write(tmp_path, "fake")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    server = FakeRegistry(context).start()
    server.scheme = "none"
    yield server
    server.stop()


def test_untrusted_certificate_is_a_tls_error(tls_fake: FakeRegistry) -> None:
    error = raises("TLSError", tls_fake.client().ping)
    assert "certificate" in error.message
    assert "tls.caBundleRef" in error.message
    assert "tls.insecureSkipVerify" in error.message
    assert not error.transient


def test_ca_bundle_is_trusted_in_memory_without_a_file(
    tls_fake: FakeRegistry,
    ca: CertificateAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each client used to write its bundle to /tmp (an emptyDir of 64 MiB in the pod): 8
    # clients with 1 MiB bundles held 8 MiB until closed.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    clients = [tls_fake.client(tls=TLSOptions(ca_bundle=ca.cert_pem.decode())) for _ in range(8)]
    assert all(client.ping() == "none" for client in clients)
    assert list(scratch.iterdir()) == []
    for client in clients:
        client.close()


def test_a_ca_bundle_trusts_only_its_own_certificates(tls_fake: FakeRegistry) -> None:
    # The context holds the bundle alone: requests' default CAs are not added to it.
    other = CertificateAuthority("another CA").cert_pem.decode()
    with tls_fake.client(tls=TLSOptions(ca_bundle=other)) as client:
        raises("TLSError", client.ping)
        assert client._transport.verify.cert_store_stats()["x509_ca"] == 1


def test_an_oversized_or_broken_ca_bundle_is_a_tls_error_before_any_request(
    tls_fake: FakeRegistry, ca: CertificateAuthority
) -> None:
    huge = ca.cert_pem.decode() * (300 * 1024 // len(ca.cert_pem) + 1)
    with tls_fake.client(tls=TLSOptions(ca_bundle=huge)) as client:
        error = raises("TLSError", client.ping)
    assert "larger than 256 KiB" in error.message
    broken = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    with tls_fake.client(tls=TLSOptions(ca_bundle=broken)) as client:
        error = raises("TLSError", client.ping)
    assert "no usable PEM certificate" in error.message
    assert tls_fake.requests == []


def test_other_ca_bundle_is_not_trusted(tls_fake: FakeRegistry) -> None:
    other = CertificateAuthority("another CA").cert_pem.decode()
    with tls_fake.client(tls=TLSOptions(ca_bundle=other)) as client:
        raises("TLSError", client.ping)


def test_ca_bundle_without_certificates(tls_fake: FakeRegistry) -> None:
    with tls_fake.client(tls=TLSOptions(ca_bundle="not a certificate")) as client:
        error = raises("TLSError", client.ping)
    assert "PEM" in error.message
    assert tls_fake.requests == []


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_skip_verify(tls_fake: FakeRegistry) -> None:
    with tls_fake.client(tls=TLSOptions(skip_verify=True)) as client:
        assert client.ping() == "none"


def test_credentials_never_go_to_a_plain_http_realm(
    tls_fake: FakeRegistry, fake: FakeRegistry, ca: CertificateAuthority
) -> None:
    challenge = [("WWW-Authenticate", f'Bearer realm="{fake.realm}",service="{SERVICE}"')]
    tls_fake.overrides["GET /v2/"] = lambda req: answer(401, {}, challenge)
    with tls_fake.client(tls=TLSOptions(ca_bundle=ca.cert_pem.decode())) as client:
        error = raises("InvalidResponse", client.verify)
    assert "plain HTTP" in error.message
    assert fake.token_requests == []


def test_https_client_against_plain_http(fake: FakeRegistry) -> None:
    error = raises("TLSError", fake.client(tls=TLSOptions()).ping)
    assert "plain HTTP" in error.message or "TLS" in error.message


# ------------------------------------------------------------------------ secrets, reprs


def test_reprs_hide_secrets() -> None:
    creds = RegistryCredentials("alice", "pw-123456", "idt-123456", "rt-123456")
    for text in (repr(creds), str(creds), repr(RegistryClient("x.example", creds))):
        assert "alice" in text or "RegistryClient" in text
        for secret in ("pw-123456", "idt-123456", "rt-123456"):
            assert secret not in text


def test_registry_error_pickles() -> None:
    error = RegistryError("RateLimited", "slow down", status_code=429, retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - bytes we just made
    assert (copy.reason, copy.message, copy.status_code, copy.retry_after, copy.transient) == (
        "RateLimited",
        "slow down",
        429,
        3.0,
        True,
    )
    with pytest.raises(ValueError, match="unknown RegistryError reason"):
        RegistryError("Bogus", "x")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def echo_fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry().start()
    yield server
    server.stop()


def _echo(status: int, headers: Headers | None = None) -> Callable[[Request], Answer]:
    """A hostile server that repeats everything the client sent in its error message."""

    def reply(req: Request) -> Answer:
        auth = req.headers.get("Authorization", "")
        decoded = ""
        with contextlib.suppress(ValueError):
            decoded = base64.b64decode(auth.partition(" ")[2]).decode("utf-8", "replace")
        body = req.body.decode("utf-8", "replace")
        text = f"auth={auth} decoded={decoded} form={req.form} body={body}"
        errors = {"errors": [{"code": "DENIED", "message": text}], "error_description": text}
        return answer(status, errors, headers)

    return reply


def _any_basic(req: Request) -> Answer:
    if req.headers.get("Authorization", "").startswith("Basic "):
        return answer(200, {})
    return answer(401, {}, [("WWW-Authenticate", 'Basic realm="x"')])


def _canary(value: str) -> str:
    """A stand-in of the same shape: the same characters matter to the client and the fake
    (':' splits Basic credentials; ASCII and printable decide what can go in a header)."""

    def swap(c: str) -> str:
        if c == ":":
            return c
        if c.isascii():
            return "Q" if c.isprintable() else "\x01"
        return "\u00e9" if c.isprintable() else "\x85"

    return "".join(map(swap, value))


def _provoke_errors(fake: FakeRegistry, credentials: RegistryCredentials) -> list[RegistryError]:
    """Every error path that sees credentials, against a server echoing what it was sent."""
    bearer = f'Bearer realm="{fake.realm}",service="{SERVICE}"'
    basic = RegistryCredentials(credentials.username, credentials.password)
    identity = RegistryCredentials(identity_token=credentials.identity_token)
    token = RegistryCredentials(registry_token=credentials.registry_token)
    scenarios: list[tuple[RegistryCredentials, str, dict[str, Callable[[Request], Answer]]]] = [
        (basic, "basic", {"GET /v2/": _echo(401, fake.basic_challenge)}),
        (basic, "bearer", {"GET /token": _echo(401)}),
        (identity, "bearer", {"POST /token": _echo(400)}),
        (token, "bearer", {"GET /v2/": _echo(401, [("WWW-Authenticate", bearer)])}),
        # The token server accepts these credentials; the registry echoes the token.
        (basic, "bearer", {"GET /v2/team/app/tags/list": _echo(403)}),
        *(
            (basic, "basic", {"GET /v2/": _any_basic, "GET /v2/team/app/tags/list": _echo(s)})
            for s in (404, 429)
        ),
    ]
    fake.users = {basic.username or "": basic.password or ""}
    errors: list[RegistryError] = []
    for creds, scheme, overrides in scenarios:
        fake.scheme = scheme
        fake.overrides = overrides
        with fake.client(creds) as client, pytest.raises(RegistryError) as info:
            client.verify("team/app")
        errors.append(info.value)
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    closed = RegistryClient(f"{LOOPBACK}:{port}", basic, TLSOptions(insecure=True))
    with pytest.raises(RegistryError) as info:
        closed.verify("team/app")
    errors.append(info.value)
    return errors


def _texts(error: RegistryError) -> list[str]:
    return [error.message, str(error), repr(error), *map(str, error.args)]


secret_text = st.text(min_size=8, max_size=40)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    username=secret_text,
    password=secret_text,
    identity_token=secret_text,
    registry_token=secret_text,
)
def test_no_credential_reaches_an_error(
    echo_fake: FakeRegistry,
    username: str,
    password: str,
    identity_token: str,
    registry_token: str,
) -> None:
    # Hypothesis also tries strings from our own source ("Authenti..."), which may rightly be
    # in a message; so compare with the same run on stand-in credentials: a secret may show
    # up no more often than it does there.
    values = (username, password, identity_token, registry_token)
    real = RegistryCredentials(*values)
    echo_fake.issued.clear()
    errors = _provoke_errors(echo_fake, real)
    issued = list(echo_fake.issued)
    references = _provoke_errors(echo_fake, RegistryCredentials(*map(_canary, values)))
    secrets = [*values, real.basic_authorization().removeprefix("Basic ")]
    for error, reference in zip(errors, references, strict=True):
        assert error.reason == reference.reason
        for text, ref_text in zip(_texts(error), _texts(reference), strict=True):
            for secret in secrets:
                assert text.count(secret) <= ref_text.count(secret), (secret, text)
            for token in issued:
                assert token not in text
