"""No tenant can starve the operator (issue 14, point 5): twelve OCIRegistry objects whose
registry accepts and never finishes answering, in one namespace or in twelve, while another
team's registry and a platform team's ClusterOCIRegistry become Ready in about the time they
take with no hostile objects, and a ServiceAccount and a namespace created meanwhile get their
references and Secret from their watch events."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from ocireg.cli import build_parser
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    apply,
    ca_config_map,
    pull_secret_refs,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"
HOSTILE = 12
# The answer to a healthy registry may take this much longer than with no hostile objects
# (generous: the machine is shared; today's main never answers at all).
SLACK_SECONDS = 10.0
DRIP_SECONDS = 2.0  # well under the client's 10 s read timeout: the request never times out
LIFETIME_SECONDS = 300.0  # the drip server closes everything after this, whatever happens
NAMESPACE_SHARE = 2  # the default of --namespace-workers (a literal: the test runs on old code)


class DripRegistry:
    """A 'registry' on 127.0.0.1 that accepts, starts an HTTP answer and then sends one more
    header line every DRIP_SECONDS, never finishing. Counts the connections it holds."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._held: set[socket.socket] = set()
        self.accepted = 0
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._accept, name="drip", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def start(self) -> DripRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in self._held:
                conn.close()
            self._held.clear()

    def _over(self) -> bool:
        return self._stop.is_set() or time.monotonic() - self._started > LIFETIME_SECONDS

    def _accept(self) -> None:
        while not self._over():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._held.add(conn)
                self.accepted += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(DRIP_SECONDS)
            with contextlib.suppress(TimeoutError):
                conn.recv(65536)  # the request; what it asks does not matter
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self._over():
                time.sleep(DRIP_SECONDS)
                conn.sendall(b"X-Still-Thinking: yes\r\n")
        except OSError:
            pass  # the client gave up
        finally:
            with self._lock:
                self._held.discard(conn)
            conn.close()


@pytest.fixture
def drip() -> Iterator[DripRegistry]:
    server = DripRegistry().start()
    try:
        yield server
    finally:
        server.stop()


def _egress_args() -> list[str]:
    """Tenant objects here point at 127.0.0.1; allow it where the egress policy exists."""
    run = build_parser().parse_args(["run"])
    allowed = hasattr(run, "egress_allowed_cidrs")
    return ["--egress-allowed-cidr", "127.0.0.1/32"] if allowed else []


def _basic_registry(name: str, namespace: str, host: str, **extra: object) -> dict:
    spec = {
        "server": host,
        "auth": {"basic": {"secretRef": {"name": "creds"}, "username": "robot"}},
        "targets": {"secretName": name, "serviceAccounts": ["*"]},
        **extra,
    }
    return registry_object(KIND, name, spec, namespace)


def _time_to_ready(
    cluster: ControlPlane, kind: str, name: str, namespace: str | None, bound: float
) -> float:
    started = time.monotonic()
    wait_for_reason(cluster, kind, name, "Ready", namespace, timeout=bound)
    return time.monotonic() - started


@pytest.mark.parametrize("spread", ["one-namespace", "twelve-namespaces"])
def test_twelve_registries_that_never_answer_do_not_delay_another_team(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    drip: DripRegistry,
    spread: str,
) -> None:
    basic = registries.basic
    team = namespace  # another team: a healthy registry (the devenv's basic one)
    platform = f"{namespace}-platform"
    hostile = (
        [f"{namespace}-hostile"]
        if spread == "one-namespace"
        else [f"{namespace}-hostile-{i}" for i in range(HOSTILE)]
    )
    arriving = f"{namespace}-new"  # a namespace created while the hostile objects hang
    for extra in (platform, *hostile):
        cluster.kubectl("create", "namespace", extra)
    cluster.kubectl("label", "namespace", team, f"fairness={namespace}")
    try:
        good_tls = {"caBundleRef": {"configMap": "ca"}}
        apply(
            cluster,
            secret_object("creds", team, username=basic.username, password=basic.password),
            ca_config_map(team, registries.ca_file, name="ca"),
            secret_object("creds", platform, username=basic.username, password=basic.password),
            ca_config_map(platform, registries.ca_file, name="ca"),
            *(secret_object("creds", ns, password=secrets.token_hex(8)) for ns in hostile),
        )
        run_operator("--credentials-namespace", platform, *_egress_args())
        basic_auth = {"basic": {"secretRef": {"name": "creds"}, "username": basic.username}}

        # The normal time: a registry created with no hostile object around (after a first
        # one, so that the operator's start is not counted).
        apply(cluster, _basic_registry("warm-up", team, basic.host, auth=basic_auth, tls=good_tls))
        wait_for_reason(cluster, KIND, "warm-up", "Ready", team, timeout=60)
        apply(cluster, _basic_registry("before", team, basic.host, auth=basic_auth, tls=good_tls))
        normal = _time_to_ready(cluster, KIND, "before", team, 60)

        # Twelve objects whose registry never finishes answering, in one or twelve namespaces.
        apply(
            cluster,
            *(
                _basic_registry(
                    f"slow-{i}", hostile[i % len(hostile)], drip.host, tls={"insecure": True}
                )
                for i in range(HOSTILE)
            ),
        )
        # They are at work: connections held, and no more being opened.
        counts: list[int] = []

        def settled() -> bool:
            counts.append(drip.held())
            return len(counts) >= 4 and counts[-1] >= 2 and len(set(counts[-4:])) == 1

        wait_for(settled, 60, "the hostile registries' connections to settle")
        held = drip.held()

        bound = normal + SLACK_SECONDS
        apply(cluster, _basic_registry("after", team, basic.host, auth=basic_auth, tls=good_tls))
        after = _time_to_ready(cluster, KIND, "after", team, bound)
        apply(
            cluster,
            {
                "apiVersion": "ocireg.dev/v1alpha1",
                "kind": "ClusterOCIRegistry",
                "metadata": {"name": f"{namespace}-corp"},
                "spec": {
                    "server": basic.host,
                    "auth": basic_auth,
                    "tls": good_tls,
                    "targets": {
                        "namespaceSelector": {"matchLabels": {"fairness": namespace}},
                        "secretName": "corp",
                        "serviceAccounts": ["*"],
                    },
                },
            },
        )
        corp = _time_to_ready(cluster, "ClusterOCIRegistry", f"{namespace}-corp", None, bound)
        # A ServiceAccount created now gets the team's references from its watch event.
        started = time.monotonic()
        cluster.kubectl("create", "serviceaccount", "late", "-n", team)
        wait_for(
            lambda: {"before", "after", "corp"} <= set(pull_secret_refs(cluster, team, "late")),
            SLACK_SECONDS,
            "the new ServiceAccount's references",
        )
        account = time.monotonic() - started
        # A namespace created now gets the platform's pull secret from its watch event.
        started = time.monotonic()
        cluster.kubectl("create", "namespace", arriving)
        cluster.kubectl("label", "namespace", arriving, f"fairness={namespace}")
        wait_for(
            lambda: secret(cluster, arriving, "corp"), SLACK_SECONDS, "the new namespace's Secret"
        )
        arrived = time.monotonic() - started
        print(
            f"\n[fairness {spread}] normal {normal:.2f} s; with {HOSTILE} hanging objects "
            f"({drip.held()} connections held, {drip.accepted} accepted): tenant {after:.2f} s, "
            f"cluster {corp:.2f} s, new ServiceAccount {account:.2f} s, new namespace "
            f"{arrived:.2f} s; bound {bound:.2f} s"
        )
        # One namespace never held more than its share of the tenant pool.
        assert held <= len(hostile) * NAMESPACE_SHARE
        assert drip.held() <= len(hostile) * NAMESPACE_SHARE
    finally:
        drip.stop()  # the hanging requests end; their objects can be deleted
        # The operator finishes deleting them (finalizers) before it stops; best effort, so
        # that a failure above stays the failure reported.
        with contextlib.suppress(subprocess.TimeoutExpired):
            for ns in hostile:
                cluster.kubectl("delete", "ociregistries", "--all", "-n", ns, check=False)
            platform_object = ["clusterociregistry", f"{namespace}-corp", "--ignore-not-found"]
            cluster.kubectl("delete", *platform_object, check=False)
        for ns in (platform, arriving, *hostile):
            cluster.kubectl(
                "delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False
            )
