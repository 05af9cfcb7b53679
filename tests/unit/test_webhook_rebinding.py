"""DNS rebinding against a tenant's webhook: the host resolves to a public address when it is
checked and to loopback when the request connects. A real HTTP server listens on loopback and
records what reaches it; name resolution is the only thing replaced (it is the attack)."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.providers import ResolveContext, webhook
from ocireg.settings import OperatorConfig

PUBLIC = "93.184.216.34"
HOST = "creds.rebind.test"


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append(dict(self.headers))
                body = base64.b64encode(b"robot:t0ken-from-loopback")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback_server() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.stop()


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """HOST resolves to PUBLIC the first time, to 127.0.0.1 afterwards; other names as usual."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != HOST:
            return real(host, port, *args, **kwargs)
        address = PUBLIC if not answers else "127.0.0.1"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def _spec(port: int) -> RegistrySpec:
    return RegistrySpec.model_validate(
        {
            "server": "registry.example.com",
            "auth": {"webhook": {"url": f"http://{HOST}:{port}/creds", "insecure": True}},
        }
    )


def _ctx(namespaced: bool, allowed: tuple[str, ...] = ()) -> ResolveContext:
    def no_secrets(namespace: str, name: str) -> dict[str, bytes]:
        raise AssertionError("no Secret is read here")

    return ResolveContext(
        read_secret=no_secrets,
        default_namespace="team",
        namespaced=namespaced,
        config=OperatorConfig(egress_allowed_cidrs=allowed),
    )


def test_rebinding_to_loopback_is_refused_before_anything_is_sent(
    loopback_server: Recorder, rebinding_dns: list[str]
) -> None:
    spec = _spec(loopback_server.port)
    with pytest.raises(ReconcileError) as caught:
        webhook.mint(spec, _ctx(namespaced=True), {"X-Api-Key": "tenant-header-secret"})
    assert caught.value.reason == "WebhookAddressNotAllowed"
    assert "127.0.0.1" in caught.value.message
    # The check did see the public answer first, then the connection saw loopback.
    assert rebinding_dns[:2] == [PUBLIC, "127.0.0.1"]
    assert loopback_server.requests == []


def test_allowed_ranges_still_connect(loopback_server: Recorder, rebinding_dns: list[str]) -> None:
    spec = _spec(loopback_server.port)
    credential = webhook.mint(spec, _ctx(namespaced=True, allowed=("127.0.0.0/8",)), {})
    assert credential.password == "t0ken-from-loopback"
    assert len(loopback_server.requests) == 1


def test_cluster_objects_are_not_guarded(
    loopback_server: Recorder, rebinding_dns: list[str]
) -> None:
    # A ClusterOCIRegistry is written by cluster admins, who may use internal webhooks.
    rebinding_dns.append("already answered")  # HOST resolves to loopback from now on
    credential = webhook.mint(_spec(loopback_server.port), _ctx(namespaced=False), {})
    assert credential.username == "robot"
    assert len(loopback_server.requests) == 1
