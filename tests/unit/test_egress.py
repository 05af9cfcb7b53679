"""The egress policy, the total deadline and the size caps (ocireg.egress), on real sockets:
small hostile servers on 127.0.0.1 and 127.0.0.2 (all of 127.0.0.0/8 is local on Linux, so
127.0.0.2 plays an internal service next to an allowed registry on 127.0.0.1)."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from ocireg import egress
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.oci import RegistryClient, RegistryError, TLSOptions, listings
from ocireg.oci import client as registry_client
from ocireg.providers import ResolveContext, acr, webhook
from ocireg.settings import OperatorConfig

TENANT = egress.EgressPolicy.for_object(True, ())
LOOPBACK_ONLY = egress.EgressPolicy.for_object(True, ("127.0.0.1/32",))
PLAIN = TLSOptions(insecure=True)


# --------------------------------------------------------------------------- servers


class Server:
    """An HTTP server on ``host``; ``route(handler)`` answers each request. Records every
    request line and counts connections that sent any byte at all."""

    def __init__(self, route: Callable[[BaseHTTPRequestHandler], None], host: str) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append(self.requestline)
                route(self)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # type: ignore[method-assign] # clients cut
        self.host = host
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Drip:
    """A TCP server that sends ``head`` and then one byte of ``tail`` every ``every`` seconds,
    for ever: each read gets a byte long before any per-read timeout."""

    def __init__(
        self, head: bytes, tail: bytes = b" ", every: float = 0.3, slow_head: bool = True
    ) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.head, self.tail, self.every, self.slow_head = head, tail, every, slow_head
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if not self.slow_head:
                    conn.sendall(self.head)
                for byte in self.head if self.slow_head else b"":
                    conn.sendall(bytes([byte]))
                    if self.stopped.wait(self.every / 10):
                        return
                while not self.stopped.wait(self.every):
                    conn.sendall(self.tail)
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def _json(handler: BaseHTTPRequestHandler, body: Any, status: int = 200, **headers: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(route: Callable[[BaseHTTPRequestHandler], None], host: str = "127.0.0.1") -> Server:
        started.append(Server(route, host))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def drips() -> Iterator[Callable[..., Drip]]:
    started: list[Drip] = []

    def start(head: bytes, tail: bytes = b" ", slow_head: bool = True) -> Drip:
        started.append(Drip(head, tail, slow_head=slow_head))
        return started[-1]

    yield start
    for drip in started:
        drip.stop()


def _raises(reason: str, call: Callable[[], object]) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        call()
    assert caught.value.reason == reason, repr(caught.value)
    return caught.value


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
        ("::ffff:8.8.8.8", False),  # IPv4-mapped public
        ("64:ff9b::808:808", False),  # NAT64 of a public address
        ("2002:808:808::1", False),  # 6to4 of a public address
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("169.254.169.254", True),  # cloud metadata
        ("10.0.0.1", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),  # shared (CGNAT)
        ("0.0.0.0", True),  # noqa: S104 - an address under test
        ("240.0.0.1", True),  # reserved
        ("224.0.0.1", True),  # multicast
        ("255.255.255.255", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fd00::1", True),  # unique-local
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped
        ("::ffff:169.254.169.254", True),
        ("::127.0.0.1", True),  # IPv4-compatible (Python calls it global)
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1 (Python calls it global)
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of the metadata address
        ("64:ff9b:1::a00:1", True),  # local-use NAT64
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1 (Python calls it global)
        ("2002:a9fe:a9fe::1", True),  # 6to4 of the metadata address
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo
        ("::ffff:0:808:808", False),  # SIIT IPv4-translated of a public address
        ("::ffff:0:7f00:1", True),  # SIIT of 127.0.0.1 (Python calls it global)
        ("::ffff:0:a9fe:a9fe", True),  # SIIT of the metadata address
        ("::ffff:0:a00:1", True),  # SIIT of 10.0.0.1
        ("fec0::1", True),  # deprecated site-local (Python calls it global)
        ("feff::8.8.8.8", True),  # the top of fec0::/10
    ],
)
def test_refused_addresses_in_every_form(address: str, refused: bool) -> None:
    assert egress.address_refused(ipaddress.ip_address(address)) is refused
    assert TENANT.refuses(ipaddress.ip_address(address)) is refused
    assert not egress.UNRESTRICTED.refuses(ipaddress.ip_address(address))


def test_an_allowed_range_opens_that_range_in_every_spelling_and_nothing_else() -> None:
    allowed = egress.parse_cidrs(["127.0.0.1/32", "10.20.0.0/16"])
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "10.20.3.4"):
        assert not egress.address_refused(ipaddress.ip_address(address), allowed), address
    for address in ("127.0.0.2", "::ffff:127.0.0.2", "2002:7f00:2::", "10.21.0.1", "::1"):
        assert egress.address_refused(ipaddress.ip_address(address), allowed), address


def test_malformed_ranges_are_refused_with_the_flag_named() -> None:
    with pytest.raises(ValueError, match="--egress-allowed-cidr: 'ten' is not"):
        egress.parse_cidrs(["10.0.0.0/8", "ten"])


def test_the_cli_reads_both_flags_and_both_variables_into_one_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ocireg.cli import build_parser, config_from_args

    def config(*argv: str) -> OperatorConfig:
        return config_from_args(build_parser().parse_args(["run", *argv]))

    both = config("--egress-allowed-cidr", "10.0.0.0/8", "--webhook-allowed-cidr", "fd00::/8")
    assert both.egress_allowed_cidrs == ("10.0.0.0/8", "fd00::/8")
    monkeypatch.setenv("OCIREG_EGRESS_ALLOWED_CIDRS", "10.1.0.0/16, 10.2.0.0/16")
    monkeypatch.setenv("OCIREG_WEBHOOK_ALLOWED_CIDRS", "192.168.0.0/24")
    assert config().egress_allowed_cidrs == ("10.1.0.0/16", "10.2.0.0/16", "192.168.0.0/24")
    with pytest.raises(SystemExit, match="not an IP range"):
        config("--egress-allowed-cidr", "10.0.0.0/33")


# --------------------------------------------------------------------------- the registry


def _registry(token_server: Server | None = None, location: str | None = None) -> Callable:
    def route(handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        if token_server is not None and "Authorization" not in handler.headers:
            realm = f"http://{token_server.address}/token"
            _json(
                handler,
                {"errors": [{"code": "UNAUTHORIZED"}]},
                401,
                WWW_Authenticate=f'Bearer realm="{realm}",service="reg"',
            )
        elif location is not None and "/blobs/" in path:
            _json(handler, b"", 307, Location=location)
        else:
            _json(handler, {"tags": ["1.0.0"]} if path.endswith("/tags/list") else {})

    return route


def _internal_service(handler: BaseHTTPRequestHandler) -> None:
    # What a tenant must never reach nor read: a service that answers with its secrets.
    _json(handler, {"errors": [{"code": "DENIED", "message": "internal-secret-text"}]}, 403)


def test_a_tenants_registry_on_a_refused_address_gets_nothing_sent(
    servers: Callable[..., Server],
) -> None:
    registry = servers(_registry())
    client = RegistryClient(registry.address, tls=PLAIN, egress_policy=TENANT)
    error = _raises("EgressNotAllowed", client.ping)
    assert error.transient is False
    assert "registry 127.0.0.1 is a non-public address" in error.message
    assert "--egress-allowed-cidr" in error.message
    assert registry.requests == []
    # A cluster object's client (unrestricted) and an allowed range both reach it.
    assert RegistryClient(registry.address, tls=PLAIN).ping() == "none"
    assert RegistryClient(registry.address, tls=PLAIN, egress_policy=LOOPBACK_ONLY).ping()


def test_a_token_realm_on_an_internal_address_is_refused_although_the_registry_is_allowed(
    servers: Callable[..., Server],
) -> None:
    internal = servers(_internal_service, host="127.0.0.2")
    registry = servers(_registry(token_server=internal))
    client = RegistryClient(registry.address, tls=PLAIN, egress_policy=LOOPBACK_ONLY)
    error = _raises("EgressNotAllowed", client.verify)
    assert "the token server 127.0.0.2 of registry" in error.message
    assert "internal-secret-text" not in error.message
    assert internal.requests == []
    # Unrestricted (a cluster object), the same registry reaches that service.
    _raises("PermissionDenied", RegistryClient(registry.address, tls=PLAIN).verify)
    assert internal.requests


def test_a_redirect_hop_to_an_internal_address_is_refused(servers: Callable[..., Server]) -> None:
    internal = servers(_internal_service, host="127.0.0.2")
    registry = servers(_registry(location=f"http://{internal.address}/storage/blob"))
    client = RegistryClient(registry.address, tls=PLAIN, egress_policy=LOOPBACK_ONLY)
    digest = "sha256:" + "0" * 64
    error = _raises("EgressNotAllowed", lambda: client.get_blob("team/app", digest))
    assert "the redirect target 127.0.0.2 of registry" in error.message
    assert internal.requests == []


def test_through_a_proxy_the_host_is_checked_before_the_proxy_is_asked(
    servers: Callable[..., Server],
) -> None:
    # The socket is the proxy's then, so the destination is checked where it is resolved.
    proxy = servers(_internal_service)
    with egress.session(LOOPBACK_ONLY) as session:
        session.proxies = {"http": f"http://{proxy.address}"}
        with pytest.raises(egress.EgressRefused) as caught:
            session.get("http://127.0.0.2:9/v2/", timeout=5)
        assert caught.value.address == "127.0.0.2"
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get("http://no-such-host.invalid/v2/", timeout=5)
    assert proxy.requests == []


# --------------------------------------------------------------------------- deadlines


def test_a_registry_dripping_its_answer_is_cut_at_the_total_deadline(
    drips: Callable[..., Drip],
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99999\r\n\r\n"
    drip = drips(head)
    client = RegistryClient(f"127.0.0.1:{drip.port}", tls=PLAIN, timeout=10, deadline=2)
    started = time.monotonic()
    error = _raises("Unreachable", lambda: client.get_manifest("team/app", "1.0.0"))
    elapsed = time.monotonic() - started
    assert "no complete answer within 2 s" in error.message
    assert error.transient
    assert elapsed < 8, elapsed  # per-read timeouts alone: never (a byte every 0.3 s)


def test_a_registry_dripping_its_headers_is_cut_too(drips: Callable[..., Drip]) -> None:
    drip = drips(b"HTTP/1.1 200 OK\r\n", tail=b"X-Drip: 1\r\n")
    client = RegistryClient(f"127.0.0.1:{drip.port}", tls=PLAIN, timeout=10, deadline=2)
    started = time.monotonic()
    error = _raises("Unreachable", client.ping)
    assert "within 2 s" in error.message
    assert time.monotonic() - started < 8


def test_a_tag_listing_has_a_total_deadline_over_all_its_pages(
    servers: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every page answers at once but slowly enough; the pages never end.
    def route(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(0.2)
        page = int(handler.path.rsplit("=", 1)[-1]) if "page=" in handler.path else 0
        _json(
            handler,
            {"tags": [f"t{page}"]},
            Link=f'</v2/team/app/tags/list?page={page + 1}>; rel="next"',
        )

    monkeypatch.setattr(registry_client, "LISTING_DEADLINE", 2.0)
    registry = servers(route)
    client = RegistryClient(registry.address, tls=PLAIN, deadline=1)
    started = time.monotonic()
    error = _raises("Unreachable", lambda: client.list_tags("team/app"))
    assert "within 2 s" in error.message
    assert time.monotonic() - started < 8


def test_webhook_timeout_seconds_is_the_whole_budget(drips: Callable[..., Drip]) -> None:
    drip = drips(b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n")
    spec = RegistrySpec.model_validate(
        {
            "server": "registry.example.com",
            "auth": {"webhook": {"url": f"http://127.0.0.1:{drip.port}/c", "timeoutSeconds": 1}},
        }
    )
    ctx = ResolveContext(lambda n, s: {}, "team", namespaced=False)
    started = time.monotonic()
    with pytest.raises(ReconcileError) as caught:
        webhook.mint(spec, ctx, {})
    elapsed = time.monotonic() - started
    assert caught.value.reason == "WebhookUnreachable"
    assert "within 1 s" in caught.value.message
    assert elapsed < 4, elapsed  # was 10 s and more


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> str:
    """A name whose lookup takes 3 s (a slow or hostile name server), then gives 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "slow.example":
            time.sleep(3)
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "slow.example"


def test_a_slow_name_lookup_is_inside_the_total_deadline(
    servers: Callable[..., Server], slow_dns: str
) -> None:
    registry = servers(lambda handler: _json(handler, {}))
    client = RegistryClient(f"{slow_dns}:{registry.port}", tls=PLAIN, deadline=1)
    started = time.monotonic()
    error = _raises("Unreachable", client.ping)
    elapsed = time.monotonic() - started
    assert "within 1 s" in error.message
    assert elapsed < 2, elapsed  # was 3 s: getaddrinfo cannot be interrupted
    assert registry.requests == []


def test_a_name_lookup_within_the_deadline_still_connects(
    servers: Callable[..., Server], slow_dns: str
) -> None:
    registry = servers(lambda handler: _json(handler, {}))
    with RegistryClient(f"{slow_dns}:{registry.port}", tls=PLAIN, deadline=5) as client:
        assert client.ping() == "none"
    assert len(registry.requests) == 1


def test_the_webhooks_address_check_is_inside_its_timeout(slow_dns: str) -> None:
    spec = RegistrySpec.model_validate(
        {
            "server": "registry.example.com",
            "auth": {"webhook": {"url": f"https://{slow_dns}/c", "timeoutSeconds": 1}},
        }
    )
    ctx = ResolveContext(lambda n, s: {}, "team", namespaced=True)
    started = time.monotonic()
    with pytest.raises(ReconcileError) as caught:
        webhook.mint(spec, ctx, {})
    elapsed = time.monotonic() - started
    assert caught.value.reason == "WebhookUnreachable"
    assert "within 1 s" in caught.value.message
    assert elapsed < 2, elapsed  # was 3 s: the pre-check resolved before the budget began


def test_nested_deadlines_end_no_later_than_the_outer_one() -> None:
    with egress.deadline(1) as outer, egress.deadline(60) as inner:
        assert inner.expires_at == outer.expires_at
        assert egress.current_deadline() is inner
    assert egress.current_deadline() is None
    with pytest.raises(ValueError, match="positive number"), egress.deadline(float("nan")):
        pass


# --------------------------------------------------------------------------- size caps


def _tags_route(pages: list[list[str]]) -> Callable[[BaseHTTPRequestHandler], None]:
    def route(handler: BaseHTTPRequestHandler) -> None:
        page = int(handler.path.rsplit("=", 1)[-1]) if "page=" in handler.path else 0
        link = {}
        if page + 1 < len(pages):
            link = {"Link": f'</v2/team/app/tags/list?page={page + 1}>; rel="next"'}
        _json(handler, {"name": "team/app", "tags": pages[page]}, **link)

    return route


def test_tags_are_capped_in_total_over_all_pages(servers: Callable[..., Server]) -> None:
    per_page = 30_000
    pages = [[f"v{p}.{i}" for i in range(per_page)] for p in range(5)]
    registry = servers(_tags_route(pages))
    error = _raises(
        "AnswerTooLarge",
        lambda: RegistryClient(registry.address, tls=PLAIN).list_tags("team/app"),
    )
    assert f"holds more than {listings.MAX_TAGS} tags" in error.message
    assert len(registry.requests) == 4  # stopped at the page that went over, not after 5
    # Under the cap, every tag of every page is read.
    small = servers(_tags_route(pages[:3]))
    assert len(RegistryClient(small.address, tls=PLAIN).list_tags("team/app")) == 3 * per_page


def test_one_page_with_too_many_tags_is_refused_before_it_is_parsed(
    servers: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(
        listings.json, "loads", lambda b, *a, **k: parsed.append(len(b)) or real_loads(b)
    )
    registry = servers(_tags_route([[str(i) for i in range(150_000)]]))
    error = _raises(
        "AnswerTooLarge",
        lambda: RegistryClient(registry.address, tls=PLAIN).list_tags("team/app"),
    )
    assert "more than 100000 tags" in error.message
    assert parsed == []


def test_a_tag_page_and_all_pages_are_capped_in_bytes(servers: Callable[..., Server]) -> None:
    big = servers(_tags_route([["x" * (9 * 1024 * 1024)]]))
    error = _raises(
        "AnswerTooLarge", lambda: RegistryClient(big.address, tls=PLAIN).list_tags("team/app")
    )
    assert "bytes in a page" in error.message
    pages = [["y" * (7 * 1024 * 1024)] for _ in range(6)]
    many = servers(_tags_route(pages))
    error = _raises(
        "AnswerTooLarge", lambda: RegistryClient(many.address, tls=PLAIN).list_tags("team/app")
    )
    assert f"over {listings.MAX_LISTING_BYTES} bytes in all" in error.message
    assert len(many.requests) == 3  # 7 + 7 MiB read, the third page goes over 16 MiB
    assert listings._LISTING_BUDGET.used == 0  # every listing gave its share back


def test_listings_share_one_memory_budget_for_the_whole_process(
    servers: Callable[..., Server],
) -> None:
    registry = servers(_tags_route([[f"v{i}" for i in range(1000)]]))
    budget = listings._LISTING_BUDGET
    # A listing waits for room within its deadline (1 s here), then stops.
    client = RegistryClient(registry.address, tls=PLAIN, deadline=1.0)
    # Other listings hold all but a little of it.
    assert budget.take(budget.total - 1000)
    try:
        error = _raises("AnswerTooLarge", lambda: client.list_tags("team/app"))
        assert error.transient
        assert "other listings held the listing memory until its deadline (128 MiB" in (
            error.message
        )
    finally:
        budget.give(budget.total - 1000)
    assert budget.used == 0
    assert len(client.list_tags("team/app")) == 1000
    assert budget.used == 0


def test_the_catalog_is_capped_in_repositories(servers: Callable[..., Server]) -> None:
    names = [f"team/chart-{i}" for i in range(listings.MAX_REPOSITORIES + 1)]

    def route(handler: BaseHTTPRequestHandler) -> None:
        _json(handler, {"repositories": names})

    registry = servers(route)
    error = _raises("AnswerTooLarge", RegistryClient(registry.address, tls=PLAIN).list_repositories)
    assert "the catalog" in error.message
    assert "more than 10000 repositories" in error.message


def test_a_streamed_answer_is_cut_one_chunk_past_the_limit(drips: Callable[..., Drip]) -> None:
    # Chunked, no Content-Length, and it never ends: read_capped stops at the limit.
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4
    drip = drips(head, tail=chunk, slow_head=False)
    with egress.session(egress.UNRESTRICTED) as session, egress.deadline(20):
        response = session.get(f"http://127.0.0.1:{drip.port}/", stream=True, timeout=5)
        with pytest.raises(egress.AnswerTooLarge):
            egress.read_capped(response, 100_000)


def test_the_acr_exchange_answer_is_streamed_and_cut(servers: Callable[..., Server]) -> None:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        handler.wfile.write(b'{"refresh_token": "' + b"a" * (4 * 1024 * 1024))
        handler.close_connection = True

    exchange = servers(route)
    with pytest.raises(ReconcileError) as caught:
        acr._exchange(f"http://{exchange.address}/oauth2/exchange", "r.azurecr.io", None, "t", True)
    assert caught.value.reason == "AnswerTooLarge"


def test_the_acr_exchange_of_a_tenant_obeys_the_egress_policy(
    servers: Callable[..., Server],
) -> None:
    internal = servers(_internal_service, host="127.0.0.2")
    with pytest.raises(ReconcileError) as caught:
        acr._exchange(
            f"http://{internal.address}/oauth2/exchange", "r", None, "entra-token", True, TENANT
        )
    assert caught.value.reason == "EgressNotAllowed"
    assert "127.0.0.2" in caught.value.message
    assert "internal-secret-text" not in caught.value.message
    assert internal.requests == []


def test_a_webhook_answer_over_the_cap_is_refused(servers: Callable[..., Server]) -> None:
    def route(handler: BaseHTTPRequestHandler) -> None:
        _json(handler, b"a" * (webhook.MAX_ANSWER_BYTES + 10))

    hook = servers(route)
    spec = RegistrySpec.model_validate(
        {"server": "r.example", "auth": {"webhook": {"url": f"http://{hook.address}/c"}}}
    )
    ctx = ResolveContext(
        lambda n, s: {},
        "team",
        namespaced=True,
        config=OperatorConfig(egress_allowed_cidrs=("127.0.0.1/32",)),
    )
    with pytest.raises(ReconcileError) as caught:
        webhook.mint(spec, ctx, {})
    assert caught.value.reason == "AnswerTooLarge"
