"""Active/standby replicas through a coordination.k8s.io Lease, as client-go does it.

Only the holder of the Lease runs the operator; the others wait, answering their health
probe, and take over when the holder stops renewing (killed, partitioned) or hands the Lease
back (a clean shutdown, so a rolling update switches over in about one retry period).

The kubernetes client ships a leader elector, but it makes its API calls without a timeout
(a hung call would keep a deposed leader writing beside the new one), never releases the
Lease on shutdown and logs every retry at INFO; hence this small one. The rule for taking
over is a pure function, `may_take`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import kubernetes
from kubernetes.client.exceptions import ApiException

from ocireg.kube.client import CoordinationV1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """client-go's defaults. A deposed leader stops at most `renew_deadline` after its last
    successful renewal; a candidate waits `lease_seconds` after it last saw the Lease change,
    so the two never overlap while `renew_deadline` + one API timeout < `lease_seconds`."""

    lease_seconds: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    request_timeout: float = 3.0


@dataclass(frozen=True)
class Record:
    """The parts of a Lease the election reads."""

    holder: str
    lease_seconds: int
    renew_time: str
    transitions: int
    resource_version: str


def record_of(lease: dict[str, Any]) -> Record:
    spec = lease.get("spec") or {}
    return Record(
        holder=spec.get("holderIdentity") or "",
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=lease["metadata"]["resourceVersion"],
    )


def may_take(record: Record, me: str, unchanged_for: float, default_seconds: int) -> bool:
    """Whether `me` may write itself into the Lease now. `unchanged_for` is how long this
    process has watched the Lease keep the same holder and renewTime (its own clock only:
    the holder's timestamps are never compared with ours, so clock skew cannot matter)."""
    if not record.holder or record.holder == me:
        return True  # free (handed back) or ours to renew
    return unchanged_for >= (record.lease_seconds or default_seconds)


def identity() -> str:
    """The pod name (HOSTNAME in a pod) and a random suffix: a restarted container is a new
    candidate, never mistaken for the one that held the Lease before."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(
        self,
        namespace: str,
        name: str,
        me: str | None = None,
        timing: Timing = Timing(),
        api: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace, self.name = namespace, name
        self.me = me or identity()
        self.timing = timing
        self._api = api or CoordinationV1(kubernetes.client.ApiClient())
        self._clock = clock
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) last observed
        self._seen_at = 0.0
        self._acquired_at = ""
        self.leading = False

    def _call(self, method: str, *args: Any) -> Any:
        call = getattr(self._api, method)
        return call(*args, timeout=self.timing.request_timeout)

    def _read(self) -> dict[str, Any]:
        lease: dict[str, Any] = self._call("read_namespaced_lease", self.name, self.namespace)
        return lease

    def try_acquire_or_renew(self) -> bool:
        """One round: create, renew or take the Lease if the rule allows. False on any error
        or lost race (a 409 means another candidate wrote first)."""
        try:
            try:
                body = self._read()
            except ApiException as error:
                if error.status != 404:
                    raise
                return self._create()
            record = record_of(body)
            now = self._clock()
            if self._seen != (record.holder, record.renew_time):
                self._seen, self._seen_at = (record.holder, record.renew_time), now
            if not may_take(record, self.me, now - self._seen_at, self.timing.lease_seconds):
                return False
            return self._write(body, record)
        except ApiException as error:
            log.debug("leader election: %s %s", error.status, error.reason)
            return False
        except Exception as error:  # network trouble: the next round tries again
            log.debug("leader election: %s", type(error).__name__)
            return False

    def _spec(self, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        if not self._acquired_at:
            self._acquired_at = now
        return {
            "holderIdentity": self.me,
            "leaseDurationSeconds": self.timing.lease_seconds,
            "acquireTime": self._acquired_at,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _create(self) -> bool:
        body = {"metadata": {"name": self.name, "namespace": self.namespace}}
        body["spec"] = self._spec(0)
        try:
            self._call("create_namespaced_lease", self.namespace, body)
        except ApiException as error:
            if error.status == 409:  # someone else created it first
                return False
            raise
        return True

    def _write(self, body: dict[str, Any], record: Record) -> bool:
        taking = record.holder != self.me
        if taking:
            self._acquired_at = ""
        body["spec"] = self._spec(record.transitions + (1 if taking else 0))
        try:
            # resourceVersion in the body: a concurrent writer makes this a 409, not a tie.
            self._call("replace_namespaced_lease", self.name, self.namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        if taking and record.holder:
            log.info("took over the leader Lease from %s", record.holder)
        return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True) or `stop` is set (False)."""
        stop = stop or threading.Event()
        log.info(
            "standing by for Lease %s/%s as %s; the holder runs the operator",
            self.namespace,
            self.name,
            self.me,
        )
        while not stop.is_set():
            if self.try_acquire_or_renew():
                self.leading = True
                log.info("acquired Lease %s/%s: this replica leads", self.namespace, self.name)
                return True
            stop.wait(self.timing.retry_period)
        return False

    def keep(self, on_lost: Callable[[], None], stop: threading.Event) -> None:
        """Renew every retry period until `stop`; call `on_lost` once if no renewal has
        succeeded for `renew_deadline` (a candidate may take over soon after)."""
        last_renewed = self._clock()
        while not stop.wait(self.timing.retry_period):
            if self.try_acquire_or_renew():
                last_renewed = self._clock()
            elif self._clock() - last_renewed >= self.timing.renew_deadline:
                self.leading = False
                on_lost()
                return

    def release(self) -> None:
        """Hand the Lease back if we still hold it, so a standby takes over at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            body = self._read()
            if record_of(body).holder != self.me:
                return
            body["spec"]["holderIdentity"] = None
            body["spec"]["leaseDurationSeconds"] = 1
            body["spec"]["renewTime"] = _micro_time()
            self._call("replace_namespaced_lease", self.name, self.namespace, body)
            log.info("released Lease %s/%s", self.namespace, self.name)
        except Exception as error:  # the standby then waits out the lease instead
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, error)


class _Alive(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the http.server interface
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"standby": true}')

    def log_message(self, format: str, *args: Any) -> None:  # probes are noise
        pass


def serve_standby_health(url: str) -> ThreadingHTTPServer:
    """Answer the liveness URL while standing by (kopf serves it once this replica leads):
    a waiting replica is alive, and must not be restarted by its probe."""
    parts = urlsplit(url)
    server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), _Alive)  # noqa: S104
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def run_while_leading(
    election: LeaderElection, run: Callable[[], None], liveness_url: str | None
) -> None:
    """Stand by until the Lease is ours, then `run` (the operator, until it stops). Losing
    the Lease ends the process at once, as client-go programs do: a deposed leader must stop
    writing before a standby may start, and the pod's restart makes it a candidate again."""
    standby = serve_standby_health(liveness_url) if liveness_url else None
    try:
        election.acquire()
    finally:
        if standby is not None:  # kopf serves the same address from now on
            standby.shutdown()
            standby.server_close()

    def lost() -> None:
        log.error("lost Lease %s/%s: stopping at once", election.namespace, election.name)
        logging.shutdown()
        os._exit(1)

    stop = threading.Event()
    keeper = threading.Thread(target=election.keep, args=(lost, stop), name="lease", daemon=True)
    keeper.start()
    try:
        run()
    finally:
        stop.set()
        # A renewal in flight could otherwise write us back in after the release.
        keeper.join(timeout=2 * election.timing.request_timeout + 1)
        election.release()


__all__ = [
    "LeaderElection",
    "Record",
    "Timing",
    "may_take",
    "record_of",
    "run_while_leading",
    "serve_standby_health",
]
