"""Admission-time injection (optional, ``--admission-webhook``): a mutating webhook that adds
the managed pull secrets to a ServiceAccount in the request that creates it.

Without it, a new ServiceAccount (the ``default`` of a new namespace, most often) gets its
references from the ServiceAccount watch in handlers.py, a moment after it was created; a
pod admitted in that moment copies the account's empty ``imagePullSecrets`` and never gets
them (pods do not follow later changes), so it may end in ImagePullBackOff. The webhook closes
that window: the account is stored with the references in its very first version.

The rules, all meant to keep the cluster working whatever happens to the operator:

- failurePolicy Ignore and a short timeout: a stopped, hung or unreachable operator delays a
  ServiceAccount creation by at most the timeout and never fails it;
- every error inside the handler (API trouble, a slow read, a bug) answers "allowed,
  unchanged" and is logged by name; only names are ever logged;
- the decision is `wanted` / `account_fields` below (pure), the same selection the
  watch uses (namespace_selected, service_account_selected), from the registries this
  process has verified (the Runtime's registries), plus the namespace's labels read from the API
  (a namespace created a moment ago has not reached the namespace watch yet);
- the account's own entries are kept, none is duplicated, and ours are recorded in the same
  annotation the watch uses, so cleanup removes exactly those.

Certificates and the MutatingWebhookConfiguration: by default the process makes a
self-signed certificate in memory when the webhook server starts and keeps the webhook entry
``pull-secrets.ocireg.dev`` of one named configuration pointing at itself (URL + caBundle),
re-checking it every minute and removing its entry on a clean shutdown. With
``--admission-cert-file`` etc. it serves a certificate from files (reloaded when they change).
See docs/admission.md.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import logging
import pathlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import aiohttp.web
import kopf

from ocireg.api.spec import Format, Targets
from ocireg.kube.client import ApiError, Kube, load_config
from ocireg.pullsecrets import plan
from ocireg.pullsecrets.fanout import Registries
from ocireg.settings import AdmissionConfig

log = logging.getLogger(__name__)

HANDLER_ID: Final = "pull-secrets"  # kopf routes POST /<handler id> to the handler
WEBHOOK_NAME: Final = "pull-secrets.ocireg.dev"
CERT_VALIDITY: Final = dt.timedelta(days=3650)
# How often the configuration is re-checked (drift, deletion), and retried after a failure.
KEEP_SECONDS: Final = 60.0
RETRY_SECONDS: Final = 5.0
# Part of the webhook's timeoutSeconds kept for the answer to travel back: the handler gives
# up (and allows unchanged) this much before the API server would.
MARGIN_SECONDS: Final = 1.0
# The API server's AdmissionReview for one ServiceAccount creation is a few KiB. A larger body
# is refused (413) before it is parsed; with failurePolicy Ignore the account is still created,
# and the ServiceAccount watch adds the references a moment later.
MAX_REVIEW_BYTES: Final = 256 * 1024
_SERVICE_ACCOUNT_KIND: Final = {"group": "", "version": "v1", "kind": "ServiceAccount"}
_SERVICE_ACCOUNT_RESOURCE: Final = {"group": "", "version": "v1", "resource": "serviceaccounts"}
# Bounds on the port, which anyone who reaches it may call (review finding 4). Each accepted
# connection costs up to ~0.6 MiB (Python's TLS buffer of 256 KiB, a body up to the cap), so
# their number is capped before TLS is set up for them; one peer address gets a share only,
# and when the port is full a newcomer takes the place of the oldest connection of the peer
# holding the most, so a few hostile pods cannot keep the API server out.
MAX_CONNECTIONS: Final = 32
MAX_CONNECTIONS_PER_PEER: Final = 8
# Requests being parsed and decided at once (the rest is answered 503 at once: with
# failurePolicy Ignore the account is created unchanged and the watch adds the references),
# and per peer address, so a flood of well-formed reviews from one pod leaves room for others.
MAX_IN_FLIGHT: Final = 8
MAX_IN_FLIGHT_PER_PEER: Final = 2
# A connection must send a request's headers within this long of opening (or of the previous
# answer); its TLS handshake and then the body each within the webhook's timeoutSeconds,
# after which the API server has given up anyway.
IDLE_SECONDS: Final = 15.0
# Parsing and decisions run here, never on kopf's event loop, nor on kopf's pool behind
# reconciles; one thread per request allowed in flight, so an admitted request never queues.
_POOL = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="ocireg-admission")
# The configuration keeper's writes, apart: a flood of reviews never delays them, nor they a review.
_KEEPER_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocireg-admission-config")


# -- pure parts: the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A registry with verified credentials, as the webhook sees it."""

    ref: plan.RegistryRef
    targets: Targets
    placed: bool  # its pull secret is known to be written in the namespace at hand


def wanted(
    candidates: list[Candidate],
    namespace: str,
    labels: Mapping[str, str],
    account: str,
    phase: str = "Active",
) -> list[tuple[Candidate, str]]:
    """The pull secrets a ServiceAccount being created may refer to: one per registry that
    selects its namespace and the account (the watch's own rules), in a stable order. Two
    registries may want the same name (a ClusterOCIRegistry and a tenant's OCIRegistry
    `ghcr`): both are listed, since only the one whose Secret it is may add it (decide)."""
    out: list[tuple[Candidate, str]] = []
    for candidate in sorted(
        candidates, key=lambda c: (c.ref.kind, c.ref.namespace or "", c.ref.name)
    ):
        targets = candidate.targets
        if not plan.service_account_selected(targets, account):
            continue
        if not plan.namespace_selected(candidate.ref, targets, namespace, labels, phase):
            continue
        name = plan.secret_names(targets, candidate.ref.name)[Format.dockerconfigjson]
        out.append((candidate, name))
    return out


def secret_is_ours(
    ref: plan.RegistryRef,
    namespace: str,
    observed: Mapping[str, Any] | None,
    live: frozenset[str] = frozenset(),
) -> bool:
    """Whether a Secret may be referred to on this registry's behalf: absent (the registry
    writes it in a moment) or this registry object's (plan.secret_claim, as every writer
    decides). A Secret someone else owns under the same name, another object of the same
    name's included, is a SecretConflict, and never becomes ours by reference."""
    return observed is None or plan.secret_claim(ref, namespace, observed, live).mine


def account_fields(service_account: Mapping[str, Any], names: list[str]) -> dict[str, Any] | None:
    """The ServiceAccount's imagePullSecrets and our bookkeeping annotation with the given
    references added (plan.service_account_change: the rule the namespace jobs follow), as
    the fields to set on the object being created; None when there is nothing to add."""
    change = plan.service_account_change(service_account, names, [])
    if change is None:
        return None
    annotations = change["metadata"]["annotations"]
    return {
        "imagePullSecrets": change["imagePullSecrets"],
        "metadata": {"annotations": annotations},
    }


# -- pure parts: the certificate and the configuration ---------------------------------------


def self_signed_certificate(
    hostnames: Collection[str], now: dt.datetime | None = None
) -> tuple[bytes, bytes]:
    """A self-signed serving certificate (ECDSA P-256) for these names and addresses, and its
    key, both PEM. The certificate is also the CA the API server is told to trust."""
    # Imported here: with --admission-cert-file the webhook never needs cryptography (about
    # 10 MB of the process, docs/performance.md).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hostnames):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names.append(x509.DNSName(host))
            continue
        if not address.is_unspecified:
            names.append(x509.IPAddress(address))
    if not names:
        raise ValueError("no usable host name or address for the webhook certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocireg admission webhook")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def review_problem(webhook: str | None, review: Any) -> str | None:
    """Why a request is not one this webhook answers (None: it is). Anyone who reaches the
    port can send one (the API server does not authenticate itself to webhooks unless given
    an admission kubeconfig), so only the exact shape the API server sends for a
    ServiceAccount CREATE gets as far as the handler: no other kind, operation, subresource
    or API version. The answer names the field, never echoes a value."""
    if webhook != HANDLER_ID:
        return "unknown webhook path"
    if not isinstance(review, dict):
        return "the body is not an AdmissionReview object"
    if review.get("apiVersion") != "admission.k8s.io/v1" or review.get("kind") != "AdmissionReview":
        return "only AdmissionReview admission.k8s.io/v1 is served"
    request = review.get("request")
    if not isinstance(request, dict):
        return "the AdmissionReview has no request"
    uid = request.get("uid")
    if not isinstance(uid, str) or not 0 < len(uid) <= 128:
        return "request.uid is missing or malformed"
    if request.get("kind") != _SERVICE_ACCOUNT_KIND:
        return "only ServiceAccount objects are served"
    if request.get("resource") != _SERVICE_ACCOUNT_RESOURCE or request.get("subResource"):
        return "only the serviceaccounts resource is served"
    if request.get("operation") != "CREATE":
        return "only CREATE is served"
    namespace = request.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        return "request.namespace is missing"
    if not isinstance(request.get("userInfo"), dict):
        return "request.userInfo is missing"
    account = request.get("object")
    if not isinstance(account, dict) or account.get("kind") not in (None, "ServiceAccount"):
        return "request.object is not a ServiceAccount"
    metadata = account.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("namespace") not in (None, "", namespace):
        return "request.object.metadata does not match request.namespace"
    return None


async def read_capped(request: aiohttp.web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is over ``limit`` (chunked bodies
    too: they have no Content-Length to check first)."""
    if request.content_length is not None and request.content_length > limit:
        raise aiohttp.web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=request.content_length
        )
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise aiohttp.web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)


def webhook_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/{HANDLER_ID}"


def webhook_entry(
    url: str, ca_bundle: str | None, timeout_seconds: int, exclude_namespaces: Collection[str]
) -> dict[str, Any]:
    """Our entry of the MutatingWebhookConfiguration: ServiceAccount CREATE only, never
    failing a request, never called for the excluded namespaces."""
    client_config: dict[str, Any] = {"url": url}
    if ca_bundle:
        client_config["caBundle"] = ca_bundle
    selector: dict[str, Any] = {}
    if exclude_namespaces:
        selector = {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": sorted(set(exclude_namespaces)),
                }
            ]
        }
    return {
        "name": WEBHOOK_NAME,
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["serviceaccounts"],
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "timeoutSeconds": timeout_seconds,
        "admissionReviewVersions": ["v1"],
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "IfNeeded",
        "namespaceSelector": selector,
    }


def _contains(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` (as the API server returns it, with its defaults filled in) has
    every field ``desired`` sets, with the same value."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            _contains(actual.get(key), value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(_contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def configuration_patch(
    observed: Mapping[str, Any], entry: Mapping[str, Any]
) -> dict[str, Any] | None:
    """A JSON merge patch that puts ``entry`` into the configuration (other entries kept), or
    None when it is there already. It carries the resourceVersion it was computed from, so a
    concurrent writer makes it fail with 409 instead of being overwritten."""
    webhooks = list(observed.get("webhooks") or [])
    current = next((w for w in webhooks if w.get("name") == entry["name"]), None)
    if current is not None and _contains(current, entry):
        return None
    others = [w for w in webhooks if w.get("name") != entry["name"]]
    return {
        "metadata": {"resourceVersion": (observed.get("metadata") or {}).get("resourceVersion")},
        "webhooks": [*others, dict(entry)],
    }


def removal_patch(observed: Mapping[str, Any], url: str) -> dict[str, Any] | None:
    """A JSON merge patch that removes our entry, only while it still points at ``url`` (a
    replica that took over since then has written its own)."""
    webhooks = list(observed.get("webhooks") or [])
    ours = [
        w
        for w in webhooks
        if w.get("name") == WEBHOOK_NAME and (w.get("clientConfig") or {}).get("url") == url
    ]
    if not ours:
        return None
    return {
        "metadata": {"resourceVersion": (observed.get("metadata") or {}).get("resourceVersion")},
        "webhooks": [w for w in webhooks if w not in ours],
    }


def configuration_object(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {plan.MANAGED_BY: plan.MANAGER}},
        "webhooks": [dict(entry)],
    }


# -- the Kubernetes API -----------------------------------------------------------------------


class AdmissionAPI:
    """The API calls of the webhook: two reads per decision, the configuration writes. A
    client of its own (kube.Kube over a new ApiClient), so admission requests never wait for
    the operator's other calls."""

    def __init__(self) -> None:
        self.kube = Kube()

    def namespace(self, name: str, timeout: float) -> tuple[dict[str, str], str] | None:
        """(labels, phase) of a namespace, or None if there is none by that name."""
        item = self.kube.namespace(name, timeout)
        if item is None:
            return None
        labels = dict((item.get("metadata") or {}).get("labels") or {})
        return labels, (item.get("status") or {}).get("phase") or "Active"

    def secret_metadata(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        """A Secret's metadata only (its data never crosses the wire), or None if absent."""
        return self.kube.secret_metadata(namespace, name, timeout)

    def ensure_configuration(self, name: str, entry: Mapping[str, Any]) -> str:
        """Create the configuration or put our entry into it: created | updated | unchanged."""
        observed = self.kube.webhook_configuration(name, timeout=10)
        if observed is None:
            self.kube.create_webhook_configuration(configuration_object(name, entry), timeout=10)
            return "created"
        patch = configuration_patch(observed, entry)
        if patch is None:
            return "unchanged"
        self.kube.patch_webhook_configuration(name, patch, timeout=10)
        return "updated"

    def remove_entry(self, name: str, url: str) -> bool:
        observed = self.kube.webhook_configuration(name, timeout=5)
        if observed is None:
            return False
        patch = removal_patch(observed, url)
        if patch is None:
            return False
        self.kube.patch_webhook_configuration(name, patch, timeout=5)
        return True


# -- the webhook server -----------------------------------------------------------------------


def parse_review(webhook: str | None, body: bytes) -> tuple[Any, str | None]:
    """The review in a body and why it is not served (None: it is). On the admission pool:
    256 KiB of JSON is milliseconds of CPU kopf's event loop would otherwise spend."""
    try:
        review = json.loads(body)
    except (ValueError, RecursionError):  # deep nesting raises RecursionError, not ValueError
        return None, "the body is not JSON"
    return review, review_problem(webhook, review)


def _peer(peername: Any) -> str:
    return str(peername[0]) if isinstance(peername, tuple) and peername else "?"


@dataclass
class _Connection:
    peer: str
    transport: asyncio.Transport
    busy: int = 0  # requests of it being parsed or decided


class Gate:
    """Which connections and requests the webhook port takes (MAX_CONNECTIONS & co above).
    Lives on the event loop: no locks."""

    def __init__(
        self,
        connections: int = MAX_CONNECTIONS,
        per_peer: int = MAX_CONNECTIONS_PER_PEER,
        in_flight: int = MAX_IN_FLIGHT,
        in_flight_per_peer: int = MAX_IN_FLIGHT_PER_PEER,
    ) -> None:
        self.limits = (connections, per_peer, in_flight, in_flight_per_peer)
        self.open: dict[Any, _Connection] = {}  # by peername, oldest first
        self.in_flight: dict[str, int] = {}  # by peer address
        self.tasks: set[asyncio.Task[None]] = set()
        self.turned_away = 0  # connections refused or evicted, and reviews answered 503
        self._logged = 0.0

    def _purge(self) -> None:
        for key in [k for k, c in self.open.items() if c.transport.is_closing()]:
            del self.open[key]

    def _note(self, what: str) -> None:
        self.turned_away += 1
        now = time.monotonic()
        if now - self._logged >= 60:  # at most a line a minute, however hard the port is hit
            self._logged = now
            log.warning(
                "admission: the webhook port is full (%s; %d turned away so far): a pod may be"
                " flooding it, see docs/admission.md",
                what,
                self.turned_away,
            )

    def admit(self, transport: asyncio.Transport) -> bool:
        """Whether a connection just accepted may stay (False: close it, before any TLS)."""
        most_connections, per_peer, _, _ = self.limits
        self._purge()
        peername = transport.get_extra_info("peername")
        peer = _peer(peername)
        mine = sum(1 for c in self.open.values() if c.peer == peer)
        if mine >= per_peer:
            self._note(f"{per_peer} connections from one address")
            return False
        if len(self.open) >= most_connections:
            counts: dict[str, int] = {}
            for c in self.open.values():
                counts[c.peer] = counts.get(c.peer, 0) + 1
            largest = max(counts, key=counts.__getitem__)
            # The newcomer takes the oldest idle or unfinished connection of the peer holding
            # the most, unless it would then hold the most itself.
            victim = next(
                (k for k, c in self.open.items() if c.peer == largest and not c.busy), None
            )
            if mine + 1 > counts[largest] or victim is None:
                self._note(f"{most_connections} connections")
                return False
            self.open.pop(victim).transport.abort()
            self._note(f"{most_connections} connections, the oldest of {largest} closed")
        self.open[peername] = _Connection(peer, transport)
        return True

    def begin(self, peername: Any) -> bool:
        """Whether a review whose body is read may be parsed and decided now."""
        _, _, most, per_peer = self.limits
        peer = _peer(peername)
        if sum(self.in_flight.values()) >= most or self.in_flight.get(peer, 0) >= per_peer:
            self._note("reviews in flight")
            return False
        self.in_flight[peer] = self.in_flight.get(peer, 0) + 1
        if peername in self.open:
            self.open[peername].busy += 1
        return True

    def end(self, peername: Any) -> None:
        peer = _peer(peername)
        left = self.in_flight.get(peer, 0) - 1
        if left > 0:
            self.in_flight[peer] = left
        else:
            self.in_flight.pop(peer, None)
        if peername in self.open:
            self.open[peername].busy -= 1

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for connection in self.open.values():
            connection.transport.abort()
        self.open.clear()


class _Guard(asyncio.Protocol):
    """The first protocol of every accepted connection: the gate decides whether it stays,
    and only then is TLS set up for it (asyncio's own TLS server would allocate its buffers
    for every connection first) and aiohttp's request handler put behind it."""

    def __init__(
        self, gate: Gate, context: ssl.SSLContext, factory: Any, handshake_timeout: float
    ) -> None:
        self.gate, self.context = gate, context
        self.factory, self.handshake_timeout = factory, handshake_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server's
        if not self.gate.admit(transport):
            transport.abort()
            return
        transport.pause_reading()  # start_tls resumes it, with TLS in between
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self.gate.tasks.add(task)
        task.add_done_callback(self.gate.tasks.discard)

    def data_received(self, data: bytes) -> None:  # reading is paused until TLS is set up
        pass

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        early = _Early()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                early,
                self.context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
                # A caller that never acknowledges our close holds its buffers 30 s otherwise.
                ssl_shutdown_timeout=2.0,
            )
        except (OSError, TimeoutError, ConnectionError):  # a failed or slow handshake
            transport.abort()
            return
        if tls is None or early.ended:
            transport.abort()
            return
        handler = self.factory()
        tls.set_protocol(handler)
        handler.connection_made(tls)
        if early.data:
            handler.data_received(bytes(early.data))


class _Early(asyncio.Protocol):
    """What TLS delivers between the handshake's end and start_tls returning (a request sent
    with the client's last handshake flight), kept for aiohttp's handler, which must see
    connection_made first."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.ended = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True


class AdmissionServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, with a certificate made by ``cryptography`` (kopf's own
    self-signed certificates need the optional certbuilder package), its port bounded (the
    Gate) and, when a configuration name is given, keeping that MutatingWebhookConfiguration
    pointed at it."""

    def __init__(self, config: AdmissionConfig, api: AdmissionAPI | None = None) -> None:
        unspecified = config.address in ("", "0.0.0.0", "::")  # noqa: S104 - a comparison
        super().__init__(
            addr=config.address or None,  # None: every address, IPv4 and IPv6
            port=config.port,
            host=config.host or ("127.0.0.1" if unspecified else None),
            certfile=config.cert_file,
            pkeyfile=config.key_file,
            cafile=config.ca_file,
            file_check_interval=30.0,
        )
        self.config = config
        self.api = api
        self.gate = Gate()

    @staticmethod
    def build_certificate(
        hostnames: Collection[str], password: str | None = None
    ) -> tuple[bytes, bytes]:
        del password  # the key only ever sits in kopf's short-lived temporary file
        return self_signed_certificate(hostnames)

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:  # type: ignore[override]
        """kopf's request handling (kopf._kits.webhooks.WebhookServer._serve, which has no
        size cap, no time limit and parses on the event loop), with the body capped and read
        within the webhook's timeout, parsed and checked by `review_problem` on the
        admission pool before kopf's admission machinery sees it, and past the gate's limits
        answered 503 at once."""
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                body = await read_capped(request, MAX_REVIEW_BYTES)
        except TimeoutError:
            log.info("admission: a request from %s sent its body too slowly", request.remote)
            raise aiohttp.web.HTTPRequestTimeout(
                reason="the body took too long", headers={"Connection": "close"}
            ) from None
        except ConnectionError:  # the caller went, or the gate closed it for a newcomer
            raise aiohttp.web.HTTPBadRequest(reason="connection lost") from None
        peername = request.transport.get_extra_info("peername") if request.transport else None
        if not self.gate.begin(peername):
            raise aiohttp.web.HTTPServiceUnavailable(
                reason="too many reviews at once", headers={"Retry-After": "1"}
            )
        try:
            loop = asyncio.get_running_loop()
            review, problem = await loop.run_in_executor(
                _POOL, parse_review, request.match_info.get("id"), body
            )
            del body
            if problem is not None:
                log.info("admission: refused a request from %s: %s", request.remote, problem)
                raise aiohttp.web.HTTPBadRequest(reason=problem)
            headers = dict(request.headers)
            sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
            try:
                response = await fn(review, webhook=HANDLER_ID, sslpeer=sslpeer, headers=headers)
            except Exception as error:  # kopf's WebhookError & co (our handler never raises)
                log.warning("admission: request not served: %s", type(error).__name__)
                raise aiohttp.web.HTTPBadRequest(reason="the review could not be served") from None
            return aiohttp.web.json_response(response)
        finally:
            self.gate.end(peername)

    async def _listen(self, fn: Any) -> AsyncIterator[dict[str, Any]]:
        """kopf.WebhookServer.__call__ (serve; serve again when the certificate files
        change), with the listening socket ours, so that the Gate sees every connection
        before TLS or aiohttp spend anything on it."""
        loop = asyncio.get_running_loop()

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        while True:
            cadata, context = self._build_ssl()
            assert context is not None  # always HTTPS: the API server calls nothing else
            self.gate = gate = Gate()
            app = aiohttp.web.Application()
            app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
            # keepalive_timeout also bounds the wait for a request's headers (aiohttp closes
            # a connection idle that long, one that sends half a request line included).
            runner = aiohttp.web.AppRunner(
                app, handle_signals=False, keepalive_timeout=IDLE_SECONDS, lingering_time=1.0
            )
            await runner.setup()
            server: asyncio.Server | None = None
            try:
                port = self.port or self._allocate_free_port()
                handshake = float(self.config.timeout_seconds)
                server = await loop.create_server(
                    functools.partial(_Guard, gate, context, runner.server, handshake),
                    self.addr or None,
                    port,
                    reuse_address=True,
                    reuse_port=True,  # as kopf's: a restarted process may bind at once
                )
                host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
                client_config: dict[str, Any] = {"url": self._build_url("https", host, port, "")}
                if cadata is not None:
                    client_config["caBundle"] = base64.b64encode(cadata).decode("ascii")
                yield client_config
                await self._until_files_change()
                log.info("admission: certificate files changed, serving them")
            finally:
                if server is not None:
                    server.close()
                gate.close()
                await runner.cleanup()

    async def _until_files_change(self) -> None:
        """Return when the certificate files' content changes (mounted Secrets change no
        mtime reliably); never, for a certificate made in memory."""
        paths = [p for p in (self.certfile, self.pkeyfile, self.cafile) if p is not None]
        if not paths:
            await asyncio.Event().wait()

        def digest() -> str:
            hasher = hashlib.sha256()
            for path in paths:
                hasher.update(pathlib.Path(path).read_bytes())
            return hasher.hexdigest()

        first = digest()
        while True:
            await asyncio.sleep(self.file_check_interval)
            if digest() != first:
                return

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        # _listen yields again after restarting with renewed certificate files.
        name = self.config.configuration if self.api is not None else None
        keeper: asyncio.Task[None] | None = None
        url: str | None = None
        try:
            async for client_config in self._listen(fn):
                url = webhook_url(client_config["url"])
                log.info("admission webhook serving ServiceAccount creations at %s", url)
                if keeper is not None:
                    keeper.cancel()
                if self.api is not None and name:
                    entry = webhook_entry(
                        url,
                        client_config.get("caBundle"),
                        self.config.timeout_seconds,
                        self.config.exclude_namespaces,
                    )
                    keeper = asyncio.create_task(
                        _keep(self.api, name, entry), name="admission configuration"
                    )
                yield client_config
        finally:
            if keeper is not None:
                keeper.cancel()
            if self.api is not None and name and url is not None:
                await _remove(self.api, name, url)


async def _keep(api: AdmissionAPI, name: str, entry: dict[str, Any]) -> None:
    """Keep our entry in the configuration: now, then every minute (it may have been deleted
    or edited), sooner after a failure."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            result = await loop.run_in_executor(_KEEPER_POOL, api.ensure_configuration, name, entry)
        except ApiError as error:
            hint = " (the operator may not write it: see docs/admission.md)"
            log.error(
                "admission: MutatingWebhookConfiguration %s: HTTP %s%s",
                name,
                error.status,
                hint if error.status == 403 else "",
            )
            await asyncio.sleep(RETRY_SECONDS)
            continue
        except Exception as error:
            log.error("admission: MutatingWebhookConfiguration %s: %r", name, error)
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if result != "unchanged":
            log.info("admission: MutatingWebhookConfiguration %s %s", name, result)
        await asyncio.sleep(KEEP_SECONDS)


async def _remove(api: AdmissionAPI, name: str, url: str) -> None:
    """On a clean stop: take our entry out, so nothing calls a process that is gone (the API
    server would skip it anyway, after a refused connection or the timeout)."""
    loop = asyncio.get_running_loop()
    try:
        removed = await asyncio.wait_for(
            loop.run_in_executor(_KEEPER_POOL, api.remove_entry, name, url), timeout=6
        )
    except Exception as error:
        log.warning("admission: could not remove the webhook entry from %s: %r", name, error)
        return
    if removed:
        log.info("admission: removed the webhook entry from MutatingWebhookConfiguration %s", name)


# -- the handler ------------------------------------------------------------------------------


def _held_nowhere(_ref: plan.RegistryRef, _namespace: str, _name: str) -> bool:
    return False  # before the index is there: each Secret is looked up (decide)


def candidates(
    registries: Registries,
    namespace: str,
    holds: Callable[[plan.RegistryRef, str, str], bool],
) -> list[Candidate]:
    """The registries this process has verified credentials for; ``holds``: whether a
    namespace holds an object's Secret of a name, as the index knows (Fanout.holds)."""
    out = []
    for ref, tracked in registries.ready(namespace):
        spec = tracked.spec
        if spec is not None:
            targets = spec.effective_targets
            pull = plan.secret_names(targets, ref.name)[Format.dockerconfigjson]
            out.append(Candidate(ref, targets, holds(ref, namespace, pull)))
    return out


def decide(
    api: AdmissionAPI,
    found: list[Candidate],
    service_account: Mapping[str, Any],
    namespace: str,
    deadline: float,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The fields to set on the ServiceAccount being created (None: none) and the names
    added. Blocking: runs on the admission pool."""
    account = (service_account.get("metadata") or {}).get("name") or ""
    relevant = [c for c in found if plan.service_account_selected(c.targets, account)]
    if not relevant:
        return None, []

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("out of time")
        return left

    seen = api.namespace(namespace, remaining())
    if seen is None:
        return None, []
    labels, phase = seen
    live = frozenset(c.ref.uid for c in found if c.ref.uid)
    looked: dict[str, Mapping[str, Any] | None] = {}
    names: list[str] = []
    for candidate, name in wanted(relevant, namespace, labels, account, phase):
        if name in names:
            continue  # another registry's, and it is in place
        if not candidate.placed:
            if name not in looked:
                looked[name] = api.secret_metadata(namespace, name, remaining())
            if not secret_is_ours(candidate.ref, namespace, looked[name], live):
                continue
        names.append(name)
    patch = account_fields(service_account, names)
    return patch, ([] if patch is None else names)


async def mutate_service_account(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Add the managed pull secrets to a ServiceAccount being created. Never raises: any
    error lets the request through unchanged (kopf would deny it otherwise)."""
    meta = body.get("metadata") or {}
    namespace, account = meta.get("namespace"), meta.get("name") or meta.get("generateName")
    try:
        if not namespace:
            return
        running = memo.get("runtime")
        if running is None:
            return
        fanout = running.fanout
        holds = fanout.holds if fanout is not None else _held_nowhere
        found = candidates(running.registries, namespace, holds)
        if not found:
            return
        config: AdmissionConfig = memo.config.admission
        budget = max(0.5, config.timeout_seconds - MARGIN_SECONDS)
        deadline = time.monotonic() + budget
        loop = asyncio.get_running_loop()
        fields, added = await asyncio.wait_for(
            loop.run_in_executor(
                _POOL, decide, memo.admission_api, found, dict(body), namespace, deadline
            ),
            timeout=budget,
        )
    except Exception as error:
        reason = f"HTTP {error.status}" if isinstance(error, ApiError) else repr(error)
        log.warning(
            "admission: ServiceAccount %s/%s admitted unchanged: %s", namespace, account, reason
        )
        return
    if fields is None:
        return
    patch["imagePullSecrets"] = fields["imagePullSecrets"]
    for key, value in fields["metadata"]["annotations"].items():
        patch.metadata.annotations[key] = value
    log.info(
        "admission: ServiceAccount %s/%s created with imagePullSecrets %s",
        namespace,
        account,
        ", ".join(added),
    )


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: AdmissionConfig = memo.config.admission
    load_config()  # the clients below copy the configuration as it is when they are made
    memo.admission_api = AdmissionAPI()
    settings.admission.server = AdmissionServer(config, memo.admission_api)
    settings.admission.managed = None  # our own writer: kopf's has a fixed 30 s timeout
    # One access log line per ServiceAccount creation is noise, even with --verbose.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def register(config: AdmissionConfig) -> None:
    """Register the webhook with kopf (before kopf.run). Without this nothing is served: kopf
    refuses to start with admission handlers and no server."""
    if not config.enabled:
        return
    kopf.on.startup(id="admission-configure")(configure)
    kopf.on.mutate(
        "serviceaccounts",
        id=HANDLER_ID,
        operations=["CREATE"],
        ignore_failures=True,
        side_effects=False,
    )(mutate_service_account)
