"""Local stand-ins for the cloud services the credential providers call, so the real SDKs
(boto3, google-auth, azure-identity) run their real code paths on loopback.

Each stand-in counts the calls it answers (to prove one mint per identity) and can be told to
fail the next calls (5xx, 429 with Retry-After, malformed answers) to show what a user sees.
Tokens they mint can be handed to a registry (``on_token``), so pull secrets built from them
really work against a real registry."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import ssl
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests

from ocireg_devenv.hygiene import remember
from ocireg_devenv.pki import CertificateAuthority
from ocireg_devenv.processes import LOOPBACK, free_port

TokenSink = Callable[[str, str], None]  # (username, password) the registry should accept


@dataclass
class Fault:
    status: int
    body: bytes = b'{"error":"injected"}'
    retry_after: int | None = None


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def jwt_like(claims: dict[str, Any]) -> str:
    """An unsigned JWT: enough for clients that only read claims (exp)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.{secrets.token_urlsafe(8)}"


class StandIn:
    """A small HTTP(S) server on loopback; subclasses answer in :meth:`answer`."""

    name = "stand-in"

    def __init__(self, ca: CertificateAuthority | None = None, workdir: Path | None = None) -> None:
        self.port = free_port()
        self.calls: Counter[str] = Counter()
        self._faults: list[tuple[str, Fault]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._ssl: ssl.SSLContext | None = None
        if ca is not None:
            assert workdir is not None
            workdir.mkdir(parents=True, exist_ok=True)
            crt, key = ca.server_cert(self.name, [LOOPBACK, "localhost"]).write(workdir, self.name)
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(crt, key)

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        host = "localhost" if self._ssl else LOOPBACK
        return f"{scheme}://{host}:{self.port}"

    def fail_next(self, action: str, count: int, fault: Fault) -> None:
        """Answer the next ``count`` calls of ``action`` with ``fault``."""
        with self._lock:
            self._faults.extend((action, fault) for _ in range(count))

    def _take_fault(self, action: str) -> Fault | None:
        with self._lock:
            for index, (wanted, fault) in enumerate(self._faults):
                if wanted == action:
                    del self._faults[index]
                    return fault
        return None

    def action_of(self, method: str, path: str, headers: Any, body: bytes) -> str:
        return f"{method} {urlparse(path).path}"

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        raise NotImplementedError

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        action = self.action_of(method, path, headers, body)
        with self._lock:
            self.calls[action] += 1
        fault = self._take_fault(action)
        if fault is not None:
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after else None
            return Reply(fault.status, fault.body, headers=extra)
        return self.answer(method, path, headers, body)

    def start(self) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    reply = standin.handle(method, self.path, self.headers, body)
                except Exception:  # a stand-in bug must show, not look like a network fault
                    traceback.print_exc()
                    reply = Reply(500, b'{"error":"stand-in failed"}')
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for key, value in (reply.headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:  # quiet: no secrets
                return

        self._httpd = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        if self._ssl is not None:
            self._httpd.socket = self._ssl.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class AwsStandIn(StandIn):
    """moto's server (real AWS API shapes for ECR and STS) behind a counting, fault-injecting
    front, so calls can be counted per action (X-Amz-Target or Action)."""

    name = "aws"

    def __init__(self) -> None:
        super().__init__()
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address=LOOPBACK, port=free_port(), verbose=False)
        self.web_identity_tokens: list[str] = []  # what AssumeRoleWithWebIdentity was given

    def start(self) -> AwsStandIn:
        self._moto.start()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self._moto.stop()

    def action_of(self, method: str, path: str, headers: Any, body: bytes) -> str:
        target = headers.get("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1]
        form = parse_qs(body.decode(errors="replace"))
        if form.get("WebIdentityToken"):
            self.web_identity_tokens.append(form["WebIdentityToken"][0])
        return (form.get("Action") or ["unknown"])[0]

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        host, port = self._moto.get_host_and_port()
        forwarded = {
            k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")
        }
        response = requests.request(
            method, f"http://{host}:{port}{path}", headers=forwarded, data=body, timeout=30
        )
        kept = {
            k: v
            for k, v in response.headers.items()
            if k.lower()
            not in ("content-length", "transfer-encoding", "connection", "server", "date")
        }
        content_type = kept.pop("Content-Type", "application/json")
        _remember_aws_secrets(response.content)
        return Reply(response.status_code, response.content, content_type, kept)


_AWS_SECRET_FIELDS = re.compile(
    rb"<(SecretAccessKey|SessionToken)>([^<]+)</|\"(authorizationToken)\"\s*:\s*\"([^\"]+)\""
)


def _remember_aws_secrets(body: bytes) -> None:
    """STS session keys and ECR authorization tokens moto hands out."""
    for match in _AWS_SECRET_FIELDS.finditer(body):
        field_name = (match.group(1) or match.group(3)).decode()
        value = (match.group(2) or match.group(4)).decode(errors="replace")
        remember(value, f"AWS {field_name}")
        if field_name == "authorizationToken":
            # base64 AWS:password: the password goes into pull secrets as it is.
            with contextlib.suppress(ValueError):
                _, _, password = base64.b64decode(value).decode().partition(":")
                remember(password, "ECR password", "AWS")


class GoogleStandIn(StandIn):
    """Google's OAuth2 token endpoint (as a service-account key's token_uri) and the GCE
    metadata server (GCE_METADATA_HOST / GCE_METADATA_IP), issuing access tokens."""

    name = "google"

    def __init__(self, on_token: TokenSink, lifetime: int = 3600) -> None:
        super().__init__()
        self.on_token = on_token
        self.lifetime = lifetime
        self.malformed_next = 0

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def metadata_host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _token(self) -> Reply:
        if self.malformed_next:
            self.malformed_next -= 1
            return Reply(200, b"<html>not json</html>", "text/html")
        token = "ya29." + secrets.token_urlsafe(24)
        remember(token, "Google access token", "oauth2accesstoken")
        self.on_token("oauth2accesstoken", token)
        answer = {"access_token": token, "expires_in": self.lifetime, "token_type": "Bearer"}
        return Reply(200, json.dumps(answer).encode())

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        route = urlparse(path).path
        if method == "POST" and route == "/token":
            form = parse_qs(body.decode())
            grant = (form.get("grant_type") or [""])[0]
            if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get("assertion"):
                return Reply(400, b'{"error":"invalid_grant"}')
            return self._token()
        if headers.get("Metadata-Flavor") != "Google":
            return Reply(403, b"missing Metadata-Flavor", "text/plain")
        flavor = {"Metadata-Flavor": "Google"}
        if route in ("/", "/computeMetadata/v1/", "/computeMetadata/v1"):
            return Reply(200, b"ok", "text/plain", flavor)
        if route == "/computeMetadata/v1/project/project-id":
            return Reply(200, b"ocireg-test", "text/plain", flavor)
        if route.startswith("/computeMetadata/v1/instance/service-accounts/default/token"):
            reply = self._token()
            reply.headers = flavor
            return reply
        if route.startswith("/computeMetadata/v1/instance/service-accounts/default"):
            info = {"email": "operator@ocireg-test.iam.gserviceaccount.com", "scopes": []}
            return Reply(200, json.dumps(info).encode(), headers=flavor)
        return Reply(404, b"not found", "text/plain", flavor)


class AzureStandIn(StandIn):
    """Entra ID (OpenID configuration + token endpoint, as azure-identity/MSAL call them) and
    an ACR /oauth2/exchange endpoint minting refresh tokens with a JWT `exp`. HTTPS (MSAL
    insists), with the test CA."""

    name = "azure"

    def __init__(
        self, ca: CertificateAuthority, workdir: Path, on_token: TokenSink, lifetime: int = 10800
    ) -> None:
        super().__init__(ca, workdir)
        self.on_token = on_token
        self.lifetime = lifetime
        self.client_secrets: dict[str, str] = {}  # client id -> secret
        self.assertions: list[str] = []  # client assertions (ServiceAccount tokens) seen

    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def exchange_url(self) -> str:
        return f"{self.url}/oauth2/exchange"

    # A managed identity as azure-identity finds it on App Service (IDENTITY_ENDPOINT and
    # IDENTITY_HEADER in the environment): the operator's own, ambient Azure identity.
    IDENTITY_HEADER = "ocireg-test-managed-identity"

    @property
    def identity_endpoint(self) -> str:
        return f"{self.url}/msi/token"

    def action_of(self, method: str, path: str, headers: Any, body: bytes) -> str:
        route = urlparse(path).path
        if route.endswith("/oauth2/v2.0/token"):
            return "token"
        if route == "/msi/token":
            return "managed-identity"
        if route == "/oauth2/exchange":
            return "exchange"
        return f"{method} {route}"

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        route = urlparse(path).path
        parts = route.strip("/").split("/")
        if route.endswith("/v2.0/.well-known/openid-configuration"):
            tenant = parts[0]
            base = f"{self.url}/{tenant}"
            config = {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            }
            return Reply(200, json.dumps(config).encode())
        if route == "/msi/token" and method == "GET":
            if headers.get("X-IDENTITY-HEADER") != self.IDENTITY_HEADER:
                return Reply(401, b'{"error":"missing identity header"}')
            expires = int(time.time()) + 3600
            access = jwt_like({"aud": "https://management.azure.com", "exp": expires, "mi": 1})
            remember(access, "Entra ID access token of the managed identity")
            answer = {"access_token": access, "expires_on": str(expires), "token_type": "Bearer"}
            return Reply(200, json.dumps(answer).encode())
        form = parse_qs(body.decode())
        if route.endswith("/oauth2/v2.0/token") and method == "POST":
            client = (form.get("client_id") or [""])[0]
            secret = (form.get("client_secret") or [""])[0]
            assertion = (form.get("client_assertion") or [""])[0]
            if assertion:
                self.assertions.append(assertion)
            if not (assertion or (client and self.client_secrets.get(client) == secret)):
                return Reply(401, b'{"error":"invalid_client"}')
            remember(secret, "Entra client secret")
            now = int(time.time())
            access = jwt_like({"aud": "https://management.azure.com", "exp": now + 3600})
            remember(access, "Entra ID access token")
            token_answer: dict[str, object] = {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 3600,
                "ext_expires_in": 3600,
            }
            return Reply(200, json.dumps(token_answer).encode())
        if route == "/oauth2/exchange" and method == "POST":
            if (form.get("grant_type") or [""])[0] != "access_token" or not form.get(
                "access_token"
            ):
                return Reply(400, b'{"error":"unsupported grant"}')
            refresh = jwt_like({"exp": int(time.time()) + self.lifetime, "grant_type": "refresh"})
            remember(refresh, "ACR refresh token", "00000000-0000-0000-0000-000000000000")
            self.on_token("00000000-0000-0000-0000-000000000000", refresh)
            return Reply(200, json.dumps({"refresh_token": refresh}).encode())
        return Reply(404, b'{"error":"not found"}')


class WebhookStandIn(StandIn):
    """Cycle-style credentials webhook: answers base64 username:token (or JSON) for a
    request carrying the expected header, minting a new token each time."""

    name = "webhook"

    def __init__(self, on_token: TokenSink, header: tuple[str, str], lifetime: int | None) -> None:
        super().__init__()
        self.on_token = on_token
        self.header = header
        self.lifetime = lifetime
        self.json_answers = False
        self.malformed_next = 0

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        if headers.get(self.header[0]) != self.header[1]:
            return Reply(401, b'{"error":"who are you"}')
        if self.malformed_next:
            self.malformed_next -= 1
            return Reply(200, b"%%% not an answer %%%", "text/plain")
        token = secrets.token_urlsafe(18)
        remember(token, "webhook token", "webhook-user")
        self.on_token("webhook-user", token)
        if not self.json_answers:
            return Reply(200, base64.b64encode(f"webhook-user:{token}".encode()), "text/plain")
        answer: dict[str, Any] = {"auth": {"user": "webhook-user", "token": token}}
        if self.lifetime is not None:
            answer["auth"]["expires_in"] = self.lifetime
        return Reply(200, json.dumps(answer).encode())
