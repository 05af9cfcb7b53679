"""Sending one HTTP request to a registry, its token server or its blob storage, and reading
the answer within bounds: the session (every connection through the egress adapter: the
object's address policy and the calling thread's total deadline), the TLS trust, no
redirects followed (:meth:`RegistryClient._send <ocireg.oci.client.RegistryClient._send>`
follows those it allows), answers read up to a size cap, and the failures of all that as a
:class:`RegistryError` without requests' text (which holds URLs)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import requests

from ocireg import egress
from ocireg.api.reasons import Reason
from ocireg.egress import EgressPolicy
from ocireg.oci.ca_bundle import MAX_CA_BUNDLE_BYTES
from ocireg.oci.errors import RegistryError, invalid
from ocireg.oci.headers import parse_rate_limit
from ocireg.oci.urls import host_port, loggable

log = logging.getLogger(__name__)

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


class Transport:
    """The HTTP side of one :class:`RegistryClient <ocireg.oci.client.RegistryClient>`:
    thread-safe, closed (its session released, if it made it) by :meth:`close` or when
    garbage-collected."""

    def __init__(
        self,
        host: str,
        base_url: str,
        tls: TLSOptions,
        *,
        timeout: float,
        session: requests.Session | None,
        user_agent: str,
        egress_policy: EgressPolicy,
        redact: Callable[[str], str],
    ) -> None:
        self.host = host  # as the user wrote it, for messages
        self.base_url = base_url
        self.tls = tls
        self.timeout = timeout
        self.redact = redact
        self._owns_session = session is None
        # Every request (registry, token realm, redirect hops, blob storage) goes through the
        # egress adapter: the object's address policy and the total deadline.
        self._session = session if session is not None else egress.session(egress_policy)
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._request_count = 0
        self._rate_limit_remaining: int | None = None
        self.problem: RegistryError | None = None  # raised by the first request
        # verify= for the registry and its token server: True, False or the CA bundle's
        # context (egress.trust_context, loaded in memory).
        self.verify: bool | ssl.SSLContext = True
        self._setup_tls()
        self._finalizer = weakref.finalize(
            self, _release, self._session if self._owns_session else None
        )

    def _setup_tls(self) -> None:
        tls = self.tls
        if tls.insecure:
            return  # plain HTTP; a https token realm still gets default verification
        if tls.skip_verify:
            self.verify = False
            return
        if tls.ca_bundle is None:
            return
        if _PEM_CERT not in tls.ca_bundle:
            self.problem = RegistryError(
                Reason.TLS_ERROR,
                "the CA bundle for the registry holds no PEM certificate "
                f"(no '{_PEM_CERT}' line); check the object tls.caBundleRef points to",
            )
            return
        if len(tls.ca_bundle) > MAX_CA_BUNDLE_BYTES:  # read_ca_bundle refuses it first
            self.problem = RegistryError(
                Reason.TLS_ERROR,
                f"the CA bundle for the registry is larger than {MAX_CA_BUNDLE_BYTES // 1024} "
                "KiB; reference only the CAs the registry needs",
            )
            return
        # In memory, not a temporary file: one file per client (chart clients are kept per
        # object) filled the pod's 64 MiB /tmp.
        try:
            self.verify = egress.trust_context(tls.ca_bundle)
        except ssl.SSLError as error:
            self.problem = RegistryError(
                Reason.TLS_ERROR,
                "the CA bundle for the registry holds no usable PEM certificate "
                f"({error.reason or type(error).__name__}); check the object tls.caBundleRef "
                "points to",
            )

    @property
    def request_count(self) -> int:
        return self._request_count

    @property
    def rate_limit_remaining(self) -> int | None:
        return self._rate_limit_remaining

    def close(self) -> None:
        """Release the HTTP session if this transport created it."""
        self._finalizer()

    # ---------------------------------------------------------------- sending

    def request(
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
        if self.problem is not None:
            problem = self.problem
            raise RegistryError(problem.reason, problem.message)
        verify: bool | ssl.SSLContext = self.verify if trusted else not self.tls.skip_verify
        with self._lock:
            self._request_count += 1
        log.debug("%s %s", method, loggable(url))
        with self.mapped_errors(url, role):
            resp = self._session.request(
                method,
                url,
                headers={"User-Agent": self._user_agent, **(headers or {})},
                params=params,
                data=data,
                stream=True,
                timeout=self.timeout,
                verify=verify,  # type: ignore[arg-type]  # an SSLContext: egress's adapter takes it
                allow_redirects=False,
            )
        remaining = parse_rate_limit(
            resp.headers.get("RateLimit-Remaining") or resp.headers.get("X-RateLimit-Remaining")
        )
        if remaining is not None:
            self._rate_limit_remaining = remaining
        return resp

    @contextlib.contextmanager
    def mapped_errors(self, url: str, role: str = "registry") -> Iterator[None]:
        """requests' exceptions as RegistryError, without their text (it holds URLs)."""
        try:
            yield
        except egress.EgressRefused as refused:
            owner = "" if role == "registry" else f" of registry {self.host}"
            raise RegistryError(
                Reason.EGRESS_NOT_ALLOWED, refused.describe(role, owner), transient=False
            ) from None
        except egress.DeadlineExceeded as exc:
            raise self.too_slow(url, exc.seconds) from None
        except requests.exceptions.RequestException as exc:
            raise self.request_error(url, exc) from None

    # ---------------------------------------------------------------- reading

    def read_capped(self, resp: requests.Response, limit: int, what: str) -> bytes:
        try:
            with self.mapped_errors(resp.url or self.base_url):
                return egress.read_capped(resp, limit)
        except egress.AnswerTooLarge as exc:
            size = f"{exc.size} bytes, " if exc.size is not None else ""
            raise RegistryError(
                Reason.ANSWER_TOO_LARGE,
                f"{what} from {self.host} is {size}over the {limit}-byte limit",
            ) from None

    def read_json(self, resp: requests.Response, limit: int, what: str) -> Any:
        body = self.read_capped(resp, limit, what)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting
            raise invalid(f"{what} is not JSON") from None

    # ---------------------------------------------------------------- failures

    def request_error(self, url: str, exc: requests.exceptions.RequestException) -> RegistryError:
        current = egress.current_deadline()
        if current is not None and current.expired:
            # The watchdog cut the connection, whatever error that surfaced as.
            return self.too_slow(url, current.seconds)
        if isinstance(exc, requests.exceptions.SSLError):
            return self._tls_error(url, exc)
        if isinstance(
            exc,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.ChunkedEncodingError,
        ):
            return self._unreachable(url, exc)
        return invalid(f"request to {host_port(url)} failed: {type(exc).__name__}")

    def too_slow(self, url: str, seconds: float) -> RegistryError:
        return RegistryError(
            Reason.UNREACHABLE,
            f"{host_port(url)} sent no complete answer within {seconds:g} s (the total "
            "deadline of a request to a registry); it may be overloaded, or dripping its answer",
        )

    def _tls_error(self, url: str, exc: BaseException) -> RegistryError:
        target = host_port(url)
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
            Reason.TLS_ERROR,
            f"TLS connection to {target} failed: {self.redact(detail)}; {_TLS_HINT}",
        )

    def _unreachable(self, url: str, exc: BaseException) -> RegistryError:
        target = host_port(url)
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
            why = f"no connection within {self.timeout:g} s"
        elif any(
            isinstance(c, requests.exceptions.Timeout | TimeoutError)
            or "Timeout" in type(c).__name__
            for c in causes
        ):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = "the connection failed or was cut"
        return RegistryError(
            Reason.UNREACHABLE,
            f"cannot reach {target}: {why}; check the address and that the operator can "
            "reach it over the network",
        )


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
