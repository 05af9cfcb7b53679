"""Local OCI registries (the upstream distribution registry) plus a Bearer token server.

Three registries, as the tests and demo need them:
- ``basic``: TLS with the test CA, htpasswd (HTTP Basic) authentication;
- ``token``: TLS with the test CA, Bearer token authentication against :class:`TokenServer`;
- ``plain``: plain HTTP, no authentication.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ocireg_devenv.hygiene import remember
from ocireg_devenv.pki import CertificateAuthority, cert_pem, key_pem
from ocireg_devenv.processes import LOOPBACK, Process, Tools, free_port, wait_until

_TOKEN_ISSUER = "ocireg-test-token-server"  # noqa: S105 - a name, not a secret
_TOKEN_LIFETIME = 300


def _self_signed_signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The token signing key and a self-signed certificate the registry trusts as a root."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocireg test token signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class TokenServer:
    """A Docker-registry token service (distribution's token auth spec) over TLS.

    ``GET /token`` with HTTP Basic credentials, and ``POST /token`` with the OAuth2
    ``password`` or ``refresh_token`` grants, answer with a JWT granting the requested scope to
    known users. Requests are counted per kind so tests can see how often clients come back.
    """

    def __init__(self, workdir: Path, ca: CertificateAuthority, service: str) -> None:
        self.workdir = workdir
        self.service = service
        self.users: dict[str, str] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._key, self._cert = _self_signed_signer()
        self.signer_cert_file = workdir / "token-signer.crt"
        self.signer_cert_file.write_bytes(cert_pem(self._cert))
        self.port = free_port()
        serving = ca.server_cert("token-server", [LOOPBACK, "localhost"])
        crt, key = serving.write(workdir, "token-server")
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(crt, key)
        self._httpd: ThreadingHTTPServer | None = None
        # (status, body, headers) every request gets instead of an answer, until heal().
        self.fault: tuple[int, bytes, dict[str, str]] | None = None

    def fail_with(
        self,
        status: int,
        body: bytes = b'{"error":"injected"}',
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer every request with this until :meth:`heal`: 5xx, 429, garbage..."""
        self.fault = (status, body, headers or {})

    def heal(self) -> None:
        self.fault = None

    @property
    def realm(self) -> str:
        # A DNS name, not an IP literal: crane refuses realms on private/loopback IP literals
        # (an SSRF guard), but allows names.
        return f"https://localhost:{self.port}/token"

    def add_user(self, username: str, password: str) -> None:
        self.users[username] = password
        remember(password, f"token server password of {username}", username)

    def issue_refresh_token(self, username: str) -> str:
        """An identity token for ``username``, as a registry login would store it."""
        token = secrets.token_urlsafe(24)
        self.refresh_tokens[token] = username
        remember(token, "token server refresh token")
        return token

    def _jwt(self, subject: str, scopes: list[str]) -> str:
        import jwt  # dev dependency; only the local environment signs tokens

        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) >= 3 and subject:
                access.append(
                    {
                        "type": parts[0],
                        "name": ":".join(parts[1:-1]),
                        "actions": parts[-1].split(","),
                    }
                )
        now = int(time.time())
        claims = {
            "iss": _TOKEN_ISSUER,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + _TOKEN_LIFETIME,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        x5c = [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, key_pem(self._key), algorithm="ES256", headers={"x5c": x5c})

    def _answer(self, subject: str, scopes: list[str], refresh: str | None = None) -> dict:
        token = self._jwt(subject, scopes)
        remember(token, "token server access token")
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": _TOKEN_LIFETIME,
            "issued_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        if refresh:
            body["refresh_token"] = refresh
        return body

    def handle(
        self, method: str, headers: Any, query: dict[str, list[str]], form: dict[str, list[str]]
    ) -> tuple[int, dict]:
        scopes = [s for v in (query.get("scope", []) + form.get("scope", [])) for s in v.split()]
        if method == "GET":
            with self._lock:
                self.counts["basic"] += 1
            auth = headers.get("Authorization", "")
            if not auth:
                return 200, self._answer("", scopes)  # anonymous: a token with no access
            try:
                kind, _, value = auth.partition(" ")
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return 400, {"errors": [{"code": "UNAUTHORIZED", "message": "bad header"}]}
            if kind.lower() != "basic" or self.users.get(user) != password:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
            return 200, self._answer(user, scopes)
        grant = (form.get("grant_type") or [""])[0]
        with self._lock:
            self.counts[grant or "unknown"] += 1
        if grant == "password":
            user = (form.get("username") or [""])[0]
            if self.users.get(user) != (form.get("password") or [""])[0]:
                return 401, {"error": "invalid_grant"}
            offline = (form.get("access_type") or [""])[0] == "offline"
            return 200, self._answer(
                user, scopes, self.issue_refresh_token(user) if offline else None
            )
        if grant == "refresh_token":
            refresh = (form.get("refresh_token") or [""])[0]
            user = self.refresh_tokens.get(refresh, "")
            if not user:
                return 401, {"error": "invalid_grant"}
            return 200, self._answer(user, scopes, refresh)
        return 400, {"error": "unsupported_grant_type"}

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _faulty(self) -> bool:
                fault = server.fault
                if fault is None:
                    return False
                status, body, headers = fault
                with server._lock:
                    server.counts["fault"] += 1
                self.send_response(status)
                for name, value in {"Content-Type": "text/html", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def do_GET(self) -> None:
                if self._faulty():
                    return
                url = urlparse(self.path)
                self._reply(*server.handle("GET", self.headers, parse_qs(url.query), {}))

            def do_POST(self) -> None:
                if self._faulty():
                    return
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                self._reply(*server.handle("POST", self.headers, parse_qs(url.query), form))

            def log_message(self, format: str, *args: Any) -> None:  # quiet: no secrets
                return

        self._httpd = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._httpd.socket = self._ssl.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


@dataclass
class RegistryServer:
    """One distribution registry process."""

    name: str
    port: int
    tls: bool
    process: Process
    username: str = ""
    password: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """``host:port`` as it appears in image references and Docker config keys."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"


class LocalRegistries:
    """The three registries plus the token server; start with :meth:`start`."""

    def __init__(
        self,
        workdir: Path | None = None,
        tools: Tools | None = None,
        ca: CertificateAuthority | None = None,
    ) -> None:
        self.tools = tools or Tools.locate()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ocireg-reg-"))
        self.ca = ca or CertificateAuthority("ocireg registry CA")
        self.ca_file = self.workdir / "ca.crt"
        self.token_server: TokenServer | None = None
        self.servers: dict[str, RegistryServer] = {}
        # Users besides each registry's own, e.g. cloud stand-ins' minted tokens.
        self._extra_users: dict[str, dict[str, str]] = {}
        self._htpasswd_lock = threading.Lock()

    @property
    def basic(self) -> RegistryServer:
        return self.servers["basic"]

    @property
    def token(self) -> RegistryServer:
        return self.servers["token"]

    @property
    def plain(self) -> RegistryServer:
        return self.servers["plain"]

    def start(self, kinds: tuple[str, ...] = ("basic", "token", "plain")) -> LocalRegistries:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(self.ca.cert_pem)
        for kind in kinds:
            self.servers[kind] = self._start_registry(kind)
        for server in self.servers.values():

            def pings(s: Any = server) -> bool:
                return _pings(s, self.ca_file)

            wait_until(
                pings,
                60,
                f"registry {server.name}",
                server.process,
            )
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.process.stop()
        if self.token_server is not None:
            self.token_server.stop()

    def __enter__(self) -> LocalRegistries:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_registry(self, kind: str) -> RegistryServer:
        import bcrypt  # dev dependency; only the local environment hashes htpasswd entries

        directory = self.workdir / kind
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        http: dict[str, Any] = {
            "addr": f"{LOOPBACK}:{port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(directory / "data")},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        username, password = "", ""
        if kind in ("basic", "token"):
            crt, key = self.ca.server_cert(f"registry-{kind}", [LOOPBACK, "localhost"]).write(
                directory, "tls"
            )
            http["tls"] = {"certificate": str(crt), "key": str(key)}
            username, password = f"{kind}-user", secrets.token_urlsafe(18)
            remember(password, f"registry {kind} password", username)
        if kind == "basic":
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            (directory / "htpasswd").write_text(f"{username}:{hashed}\n")
            config["auth"] = {
                "htpasswd": {"realm": "ocireg-test", "path": str(directory / "htpasswd")}
            }
        elif kind == "token":
            service = f"{LOOPBACK}:{port}"
            self.token_server = TokenServer(directory, self.ca, service).start()
            self.token_server.add_user(username, password)
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": service,
                    "issuer": _TOKEN_ISSUER,
                    "rootcertbundle": str(self.token_server.signer_cert_file),
                }
            }
        config_path = directory / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        process = Process(
            f"registry-{kind}",
            [self.tools.path("registry"), "serve", str(config_path)],
            directory / "registry.log",
            # The v3 registry would otherwise try to export traces to a collector.
            env={"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"},
        ).start()
        return RegistryServer(kind, port, kind != "plain", process, username, password)

    def stop_server(self, kind: str) -> None:
        """Stop one registry (a fault to recover from); :meth:`start_server` brings it back."""
        self.servers[kind].process.stop()

    def start_server(self, kind: str, timeout: float = 30) -> None:
        """Start a stopped registry again, same port and data, and wait until it answers."""
        server = self.servers[kind]
        server.process.start()
        wait_until(lambda: _pings(server, self.ca_file), timeout, server.name, server.process)

    def set_password(self, kind: str, password: str) -> None:
        """Change the registry user's password (htpasswd is re-read by the registry)."""
        server = self.servers[kind]
        server.password = password
        remember(password, f"registry {kind} password (changed)", server.username)
        if kind == "token":
            assert self.token_server is not None
            self.token_server.add_user(server.username, password)
            return
        self._write_htpasswd(kind)

    def set_user(self, kind: str, username: str, password: str) -> None:
        """Let another user in (the basic registry): a cloud stand-in's latest token."""
        self._extra_users.setdefault(kind, {})[username] = password
        remember(password, f"registry {kind} password of {username}", username)
        self._write_htpasswd(kind)

    def _write_htpasswd(self, kind: str) -> None:
        import bcrypt

        server = self.servers[kind]
        path = self.workdir / kind / "htpasswd"
        # The users are read under the lock too: two webhooks minting at once each wrote the
        # users they had read, and the later write of the earlier read lost the other's user.
        with self._htpasswd_lock:
            users = {server.username: server.password, **self._extra_users.get(kind, {})}
            lines = [
                f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                for user, password in users.items()
            ]
            # Written whole then renamed: the registry must never read half a file.
            partial = path.with_suffix(".tmp")
            partial.write_text("".join(lines))
            partial.replace(path)


def _pings(server: RegistryServer, ca_file: Path) -> bool:
    # verify= per request: REQUESTS_CA_BUNDLE in the environment would override a session's.
    verify: str | bool = str(ca_file) if server.tls else True
    return requests.get(f"{server.url}/v2/", timeout=2, verify=verify).status_code in (200, 401)
