"""Where the operator may send a request, and for how long: the one transport every outbound
HTTP request goes through (registry client, token realms, redirect hops, the ACR exchange,
webhooks).

- Egress policy. For a tenant's OCIRegistry the destination must be a public address:
  loopback, link-local (cloud metadata), private, shared (CGNAT), unique-local, reserved,
  multicast and unspecified addresses are refused, and so are the IPv6 forms that carry one
  of those (IPv4-mapped, IPv4-compatible, IPv4-translated ::ffff:0:0:0/96 (SIIT), NAT64
  64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo), and the deprecated site-local
  fec0::/10, unless the operator allows a range (--egress-allowed-cidr). The check
  is made on the connected socket before a byte is sent (no TLS hello, no header), so a DNS
  answer that changes between a check and the connect (rebinding) cannot lead a request to a
  refused address. Through an HTTP proxy the socket is the proxy's: the host is then checked
  when resolved, before the request. A ClusterOCIRegistry is unrestricted (platform teams
  use internal registries).
- Total deadline. Per-read timeouts let a server that drips one byte every few seconds hold
  a worker for ever. ``with deadline(seconds):`` bounds everything the thread sends and reads
  inside it (connect, TLS, headers, streamed bodies, redirect chains): when it passes, a
  watchdog shuts the sockets down, which ends any blocked read at once. Name lookups
  (getaddrinfo cannot be interrupted) run on a helper thread the request waits for only as
  long as its deadline leaves.
- Size caps: :func:`read_capped` streams a body and stops one chunk past the limit.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FLAG: Final = "--egress-allowed-cidr"
_CHUNK: Final = 64 * 1024
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215 local-use NAT64: where the IPv4 address sits depends on the operator's prefix
# length, and it never routes on the internet, so it is refused as a whole.
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
# RFC 2765 (SIIT) IPv4-translated addresses, ::ffff:0:a.b.c.d; Python's ipv4_mapped and
# is_global do not know them (::ffff:0:7f00:1 counts as global).
_IPV4_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")
# Deprecated site-local (RFC 3879): a private range for any network still using it, and
# is_global says True for it.
_SITE_LOCAL: Final = ipaddress.ip_network("fec0::/10")


# --------------------------------------------------------------------------- the policy


def parse_cidrs(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The allowed ranges; raises ValueError naming a malformed one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{FLAG}: {cidr!r} is not an IP range (CIDR)") from None
    return tuple(networks)


def embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (translation and tunnel forms)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64 or address in _IPV4_COMPATIBLE or address in _IPV4_TRANSLATED:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # (server, client): the client is the real destination
    return []


def _public(address: Address) -> bool:
    return address.is_global and not address.is_multicast


def address_refused(address: Address, allowed: Iterable[Network] = ()) -> bool:
    """True for an address a tenant's request may not go to (see the module docstring)."""
    allowed = tuple(allowed)
    if any(address in network for network in allowed):
        return False
    if address in _NAT64_LOCAL or address in _SITE_LOCAL:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.teredo is not None:
        return True  # a tunnel that can end anywhere; no registry is served from one
    inner = embedded_ipv4(address)
    if inner:
        # Translated or tunnelled: the IPv4 address is where the packets end up.
        return any(not any(a in n for n in allowed) and not _public(a) for a in inner)
    return not _public(address)


@dataclass(frozen=True)
class EgressPolicy:
    """What one object's requests may reach: anything (``restricted`` False: a
    ClusterOCIRegistry), or public addresses plus the operator's allowed ranges."""

    restricted: bool = False
    allowed: tuple[Network, ...] = ()

    @classmethod
    def for_object(cls, namespaced: bool, allowed_cidrs: Iterable[str]) -> EgressPolicy:
        return cls(True, parse_cidrs(allowed_cidrs)) if namespaced else UNRESTRICTED

    def refuses(self, address: Address) -> bool:
        return self.restricted and address_refused(address, self.allowed)

    def check_host(self, host: str, resolve: Callable[..., Any] | None = None) -> None:
        """Every address ``host`` resolves to must be allowed (the check before a request that
        goes through a proxy). Raises EgressRefused, or OSError when it does not resolve."""
        if not self.restricted:
            return
        try:
            infos = (resolve or lookup)(host, None, proto=socket.IPPROTO_TCP)
        except UnicodeError:
            raise socket.gaierror(f"{host!r} is not a valid host name") from None
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if self.refuses(address):
                raise EgressRefused(host, str(address))


UNRESTRICTED: Final = EgressPolicy()


class EgressRefused(Exception):
    """A request for a tenant's object would have gone to a refused address (raised before
    anything was sent). Not an OSError, so that urllib3 and requests let it through as is."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(host, address)
        self.host = host
        self.address = address

    def describe(self, role: str, owner: str = "") -> str:
        """A message for the object's status, e.g. "the token server 10.0.0.1 of registry
        r.example is ...": host and address, never an answer (none was asked for)."""
        shown = self.host if self.host == self.address else f"{self.host} ({self.address})"
        return (
            f"{role} {shown}{owner} is a non-public address (loopback, link-local, private or "
            "reserved) that an OCIRegistry may not reach; the operator can allow a range with "
            f"{FLAG}"
        )


# --------------------------------------------------------------------------- deadlines


class DeadlineExceeded(Exception):
    """The total deadline of a request passed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within {seconds:g} s")
        self.seconds = seconds


class AnswerTooLarge(Exception):
    def __init__(self, limit: int, size: int | None = None) -> None:
        super().__init__(f"the answer is over the {limit}-byte limit")
        self.limit = limit
        self.size = size


class Deadline:
    """A point in time after which every socket registered with it is shut down."""

    def __init__(self, seconds: float, expires_at: float) -> None:
        self.seconds = seconds
        self.expires_at = expires_at
        self.expired = False
        self._closed = False
        self._guards: list[socket.socket] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def check(self) -> None:
        if self.expired or self.remaining() <= 0:
            self.expired = True
            raise DeadlineExceeded(self.seconds)

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes. A duplicate of its descriptor is kept
        (closed when the deadline ends) so the number can never be reused by another socket
        before the watchdog acts on it."""
        try:
            guard = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            if not self._closed and not self.expired:
                self._guards.append(guard)
                return
            expired = self.expired
        if expired:
            _shutdown(guard)
        guard.close()

    def expire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = True
            guards, self._guards = self._guards, []
        for guard in guards:
            _shutdown(guard)
            guard.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            guards, self._guards = self._guards, []
        for guard in guards:
            guard.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread that expires deadlines in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline.expires_at, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ocireg-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap:
                    self._wake.wait()
                at, _, deadline = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
            deadline.expire()  # outside the lock: shutdowns may take a moment


_WATCHDOG: Final = _Watchdog()
_current = threading.local()


def current_deadline() -> Deadline | None:
    stack: list[Deadline] = getattr(_current, "stack", [])
    return stack[-1] if stack else None


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Everything this thread sends and reads inside must finish within ``seconds`` (and
    within any enclosing deadline)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a deadline must be a positive number of seconds, got {seconds!r}")
    outer = current_deadline()
    expires_at = time.monotonic() + seconds
    if outer is not None and outer.expires_at <= expires_at:
        seconds, expires_at = outer.seconds, outer.expires_at
    current = Deadline(seconds, expires_at)
    _WATCHDOG.add(current)
    stack: list[Deadline] = getattr(_current, "stack", None) or []
    _current.stack = stack
    stack.append(current)
    try:
        yield current
    finally:
        stack.pop()
        current.close()


def lookup(host: str, port: int | None, *args: Any, **kwargs: Any) -> list[Any]:
    """socket.getaddrinfo, within the current deadline. getaddrinfo cannot be interrupted
    (a slow resolver, or a tenant's name server answering late, would hold the request past
    its deadline), so it runs on a helper thread this one waits for only as long as the
    deadline leaves; past it DeadlineExceeded, and the helper ends when the resolver gives up
    (its own timeout, resolv.conf). Without a deadline, a plain call."""
    current = current_deadline()
    if current is None:
        return socket.getaddrinfo(host, port, *args, **kwargs)
    current.check()
    answer: list[Any] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            answer.extend(socket.getaddrinfo(host, port, *args, **kwargs))
        except BaseException as error:  # handed to the waiting thread
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=run, name="ocireg-lookup", daemon=True).start()
    while not done.is_set() and current.remaining() > 0:
        done.wait(current.remaining())
    if not done.is_set():
        current.expire()
        raise DeadlineExceeded(current.seconds)
    if failure:
        raise failure[0]
    return answer


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the transport


def _pool_classes(policy: EgressPolicy, check_peer: bool) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections obey the current deadline and, when ``check_peer``,
    check the address they connected to before anything is sent."""

    def opened(conn: HTTPConnection, sock: socket.socket, name: str = "") -> socket.socket:
        if check_peer and policy.restricted:
            peer = str(sock.getpeername()[0]).split("%", 1)[0]
            if policy.refuses(ipaddress.ip_address(peer)):
                sock.close()
                raise EgressRefused(name or conn.host, peer)
        current = current_deadline()
        if current is not None:
            current.watch(sock)
            conn._ocireg_deadline = current  # type: ignore[attr-defined]
        return sock

    def before_connect(conn: HTTPConnection) -> None:
        current = current_deadline()
        if current is not None:
            current.check()
            limit = max(0.001, current.remaining())
            timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
            conn.timeout = limit if timeout is None else min(timeout, limit)

    def before_request(conn: HTTPConnection) -> None:
        # A connection kept from an earlier request belongs to this request's deadline now.
        current = current_deadline()
        if current is not None and conn.sock is not None:
            current.check()
            if getattr(conn, "_ocireg_deadline", None) is not current:
                current.watch(conn.sock)
                conn._ocireg_deadline = current  # type: ignore[attr-defined]

    def connect(conn: HTTPConnection, plain_connect: Callable[[], socket.socket]) -> socket.socket:
        """urllib3's connect, with the name looked up within the deadline first (lookup) and
        each address it gave tried in turn, as urllib3 would."""
        before_connect(conn)
        host = conn._dns_host
        if current_deadline() is None or _is_literal(host):
            return opened(conn, plain_connect())
        try:
            infos = lookup(host.rstrip("."), conn.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise NameResolutionError(conn.host, conn, error) from error
        last: Exception | None = None
        try:
            for address in dict.fromkeys(str(info[4][0]) for info in infos):
                conn._dns_host = address
                before_connect(conn)
                try:
                    return opened(conn, plain_connect(), host.rstrip("."))
                except NewConnectionError as error:  # the next address, as urllib3 does
                    last = error
        finally:
            conn._dns_host = host
        if last is not None:
            raise last
        raise NameResolutionError(conn.host, conn, socket.gaierror(f"{host}: no address"))

    class Connection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return connect(self, super()._new_conn)

        def request(self, *args: Any, **kwargs: Any) -> None:
            before_request(self)
            super().request(*args, **kwargs)

    class TLSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return connect(self, super()._new_conn)

        def request(self, *args: Any, **kwargs: Any) -> None:
            before_request(self)
            super().request(*args, **kwargs)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    return {"http": Pool, "https": TLSPool}


def trust_context(pem: str) -> ssl.SSLContext:
    """A verifying TLS context that trusts exactly the PEM certificates in ``pem``, loaded in
    memory (no temporary file: CA bundles written to /tmp filled the pod's small emptyDir).
    Pass it as requests' ``verify=`` to a session from :func:`session`. Raises ssl.SSLError
    when ``pem`` holds no usable certificate."""
    return ssl.create_default_context(cadata=pem)


class EgressAdapter(HTTPAdapter):
    """requests' adapter with the egress policy and the deadline on every connection; it also
    takes an ssl.SSLContext (trust_context) as ``verify``, which plain requests cannot."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        super().__init__()

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:  # requests' own (host, pool) TypedDicts
        if not isinstance(verify, ssl.SSLContext):
            return super().build_connection_pool_key_attributes(request, verify, cert)
        host, pool = super().build_connection_pool_key_attributes(request, True, cert)
        pool["ssl_context"] = verify  # part of the pool key: no connection shared across trusts
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if not isinstance(verify, ssl.SSLContext):
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
            return
        # No ca_certs: urllib3 would add that file (requests' default bundle) to the context.
        super().cert_verify(conn, url, False, cert)  # type: ignore[no-untyped-call]
        conn.cert_reqs = "CERT_REQUIRED"

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.policy, check_peer=True)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        # The socket is the proxy's (the operator's choice): deadline, no address check.
        manager.pool_classes_by_scheme = _pool_classes(self.policy, check_peer=False)
        return manager

    # requests' arguments are passed on as they came (verify may be an SSLContext here, which
    # requests' stubs do not know of).
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        proxies = kwargs.get("proxies") or {}
        if self.policy.restricted and select_proxy(request.url or "", proxies):
            try:
                self.policy.check_host(urlsplit(request.url or "").hostname or "")
            except OSError as error:
                raise requests.exceptions.ConnectionError(error, request=request) from None
        current = current_deadline()
        if current is not None:
            current.check()
        response = super().send(request, **kwargs)
        if current is not None and current.expired:
            # Cut by the watchdog while the headers came in: what arrived is not an answer.
            response.close()
            raise DeadlineExceeded(current.seconds)
        return response


def session(policy: EgressPolicy) -> requests.Session:
    """A requests session whose every request obeys ``policy`` and the current deadline."""
    new = requests.Session()
    adapter = EgressAdapter(policy)
    new.mount("http://", adapter)
    new.mount("https://", adapter)
    return new


def read_capped(
    response: requests.Response, limit: int, on_chunk: Callable[[int], None] | None = None
) -> bytes:
    """The whole (decoded) body, streamed, at most ``limit`` bytes: AnswerTooLarge past it
    (a declared Content-Length over the limit is refused before reading), DeadlineExceeded
    when the current deadline passed while reading (a body cut by the watchdog is never
    taken for a complete one). ``on_chunk`` is told each chunk's size before it is kept."""
    length = response.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise AnswerTooLarge(limit, int(length))
    body = bytearray()
    current = current_deadline()
    try:
        for chunk in response.iter_content(_CHUNK):
            if on_chunk is not None:
                on_chunk(len(chunk))  # may raise: the caller's own memory accounting
            body += chunk
            if len(body) > limit:
                raise AnswerTooLarge(limit)
    except requests.exceptions.RequestException:
        if current is not None and current.expired:
            raise DeadlineExceeded(current.seconds) from None
        raise
    if current is not None and current.expired:
        raise DeadlineExceeded(current.seconds)
    return bytes(body)


__all__ = [
    "FLAG",
    "UNRESTRICTED",
    "AnswerTooLarge",
    "Deadline",
    "DeadlineExceeded",
    "EgressAdapter",
    "EgressPolicy",
    "EgressRefused",
    "address_refused",
    "current_deadline",
    "deadline",
    "embedded_ipv4",
    "lookup",
    "parse_cidrs",
    "read_capped",
    "session",
    "trust_context",
]
