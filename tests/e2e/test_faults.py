"""Faults on loopback, bounded in time: what a running operator does when a real dependency
goes away and comes back. After each: converged, no Secret lost, blanked or rewritten, no
duplicate ServiceAccount references."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import Tools
from ocireg_devenv.registries import LocalRegistries, RegistryServer

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    api_requests,
    apply,
    ca_config_map,
    condition,
    events_for,
    pull_secret_refs,
    registry_object,
    secret,
    secret_object,
    wait_for,
    wait_for_reason,
)

KIND = "OCIRegistry"
VERIFY_INTERVAL = 30  # refresh.interval below: how often a working registry is re-checked


def _ready_registry(
    cluster: ControlPlane,
    run_operator,
    namespace: str,
    faulty: LocalRegistries,
    server: RegistryServer,
    name: str,
) -> dict:
    """Credentials and CA for `server` of the test's own registries, the operator, and an
    OCIRegistry `name` writing Secret `pull`, re-verified every VERIFY_INTERVAL; returns that
    Secret once the object is Ready."""
    apply(
        cluster,
        secret_object("creds", namespace, password=server.password),
        ca_config_map(namespace, faulty.ca_file, name="ca"),
    )
    run_operator(*ALLOW_LOCAL_REGISTRIES)
    apply(
        cluster,
        registry_object(
            KIND,
            name,
            {
                "server": server.host,
                "auth": {"basic": {"secretRef": {"name": "creds"}, "username": server.username}},
                "tls": {"caBundleRef": {"configMap": "ca"}},
                "targets": {"secretName": "pull"},
                "refresh": {"interval": f"{VERIFY_INTERVAL}s"},
            },
            namespace,
        ),
    )
    wait_for_reason(cluster, KIND, name, "Ready", namespace)
    good = secret(cluster, namespace, "pull")
    assert good is not None
    return good


def test_registry_down_then_back(
    cluster: ControlPlane,
    crds: None,
    tools: Tools,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    # A registry of this test's own, so stopping it disturbs no other test.
    faulty = LocalRegistries(tmp_path / "faulty", tools).start(("basic",))
    server = faulty.basic
    try:
        good = _ready_registry(cluster, run_operator, namespace, faulty, server, "flaky")
        assert good["data"][".dockerconfigjson"]
        assert pull_secret_refs(cluster, namespace) == ["pull"]

        # The registry goes away: noticed at the next verification, said in a condition and
        # a Warning Event; the working Secret stays exactly as it was.
        faulty.stop_server("basic")
        went_down = time.monotonic()
        down = wait_for_reason(
            cluster, KIND, "flaky", "Unreachable", namespace, timeout=VERIFY_INTERVAL + 30
        )
        assert down["status"] == "False"
        print(f"registry outage noticed after {time.monotonic() - went_down:.1f}s")
        assert any(e["reason"] == "Unreachable" for e in events_for(cluster, "flaky"))
        kept = secret(cluster, namespace, "pull")
        assert kept is not None
        assert kept["data"] == good["data"]
        assert kept["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]

        # A transient problem: retried, not given up on.
        stalled = [
            c
            for c in cluster.get_json("ociregistry", "flaky", "-n", namespace)["status"][
                "conditions"
            ]
            if c["type"] == "Stalled"
        ]
        assert stalled == []  # present only while True

        # Back on the same port: Ready again without anyone touching the object, and the
        # Secret was never rewritten (same data, same resourceVersion), referenced once.
        faulty.start_server("basic")
        came_back = time.monotonic()
        wait_for_reason(cluster, KIND, "flaky", "Ready", namespace, timeout=120)
        print(f"recovered {time.monotonic() - came_back:.1f}s after the registry came back")
        after = secret(cluster, namespace, "pull")
        assert after is not None
        assert after["data"] == good["data"]
        assert after["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]
        assert pull_secret_refs(cluster, namespace) == ["pull"]
    finally:
        cluster.kubectl("delete", "ociregistry", "flaky", "-n", namespace, "--wait=false")
        faulty.stop()


# Enough namespaces, written one at a time, that a fan-out lasts a few seconds: without a
# read before each write, 40 took well under one (too short to interrupt reliably).
FAN_OUT = 120


class FanOut:
    """A ClusterOCIRegistry writing into FAN_OUT labelled namespaces of ``cluster``."""

    def __init__(self, cluster: ControlPlane, registries: LocalRegistries, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.label = f"fanout-{namespace[-6:]}"
        self.targets = [f"{namespace[:50]}-{i}" for i in range(FAN_OUT)]
        self.name = f"fanout-{namespace[-6:]}"
        basic = registries.basic
        apply(
            cluster,
            *(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "labels": {"fanout": self.label}},
                }
                for name in self.targets
            ),
            secret_object("creds", namespace, username=basic.username, password=basic.password),
            ca_config_map(namespace, registries.ca_file),
        )
        self.body = registry_object(
            "ClusterOCIRegistry",
            self.name,
            {
                "server": basic.host,
                "auth": {"basic": {"secretRef": {"name": "creds"}}},
                "tls": {"caBundleRef": {"configMap": "registry-ca"}},
                "targets": {
                    "namespaceSelector": {"matchLabels": {"fanout": self.label}},
                    "secretName": "fanned",
                },
            },
        )
        # One namespace at a time, so the fan-out lasts long enough to be interrupted.
        self.operator_args = ("--credentials-namespace", namespace, "--concurrency", "1")

    def written(self) -> int:
        selector = f"ocireg.dev/registry={self.name}"
        return len(self.cluster.get_json("secrets", "-A", "-l", selector)["items"])

    def start_and_wait_for_the_first_copy(self) -> int:
        apply(self.cluster, self.body)
        deadline = time.monotonic() + 60
        while (count := self.written()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def check_converged_then_delete(self) -> None:
        """Every namespace has its Secret and one reference; deleting leaves nothing."""
        wait_for_reason(self.cluster, "ClusterOCIRegistry", self.name, "Ready", timeout=120)
        selector = f"ocireg.dev/registry={self.name}"
        written = self.cluster.get_json("secrets", "-A", "-l", selector)["items"]
        assert sorted(s["metadata"]["namespace"] for s in written) == sorted(self.targets)
        assert all(s["data"][".dockerconfigjson"] for s in written)
        # A namespace's `default` ServiceAccount may be created a moment after its Secret.
        wait_for(
            lambda: all(refs.count("fanned") == 1 for refs in self.default_refs().values()),
            30,
            "one reference in every default ServiceAccount",
        )
        self.cluster.kubectl("delete", "clusterociregistry", self.name, "--timeout=120s")
        assert self.written() == 0
        for target, refs in self.default_refs().items():
            assert "fanned" not in refs, target

    def default_refs(self) -> dict[str, list[str]]:
        """Each target's `default` ServiceAccount's imagePullSecrets names (one list call)."""
        accounts = self.cluster.get_json(
            "serviceaccounts", "-A", "--field-selector", "metadata.name=default"
        )["items"]
        refs = {
            sa["metadata"]["namespace"]: [r["name"] for r in sa.get("imagePullSecrets") or []]
            for sa in accounts
        }
        return {target: refs.get(target, []) for target in self.targets}

    def cleanup(self) -> None:
        self.cluster.kubectl(
            "delete", "clusterociregistry", self.name, "--ignore-not-found", "--wait=false",
            check=False,
        )  # fmt: skip
        self.cluster.kubectl(
            "delete", "namespace", "-l", f"fanout={self.label}", "--wait=false", check=False
        )


def test_operator_killed_mid_fan_out_and_restarted(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    """SIGKILL while a ClusterOCIRegistry is being written into many namespaces (one at a
    time): the restarted operator finishes the job, every namespace has its Secret and one
    reference, and deleting the object leaves nothing behind."""
    fan_out = FanOut(cluster, registries, namespace)
    try:
        first = run_operator(*fan_out.operator_args, name="before-kill")
        count = fan_out.start_and_wait_for_the_first_copy()
        assert first.process.popen is not None
        first.process.popen.kill()
        first.process.popen.wait(10)
        at_kill = fan_out.written()
        assert 0 < count <= at_kill < FAN_OUT, f"not killed mid fan-out ({at_kill}/{FAN_OUT})"
        print(f"killed with {at_kill}/{FAN_OUT} namespaces written")

        run_operator(*fan_out.operator_args, name="after-restart")
        fan_out.check_converged_then_delete()
    finally:
        fan_out.cleanup()


@pytest.fixture
def own_cluster(tools: Tools, tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of this test's own, so restarting its API server disturbs no other."""
    control_plane = ControlPlane(tmp_path / "own-cluster", tools)
    try:
        control_plane.start()
        control_plane.kubectl("apply", "-f", str(Path(__file__).resolve().parents[2] / "crds"))
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/ociregistries.ocireg.dev", "crd/clusterociregistries.ocireg.dev",
        )  # fmt: skip
        yield control_plane
    finally:
        control_plane.stop()


def test_api_server_restarted_during_a_fan_out(
    own_cluster: ControlPlane, registries: LocalRegistries, run_operator
) -> None:
    """The API server goes away for a few seconds while the operator writes into many
    namespaces: the operator rides it out (no crash), its watches recover from 410 Gone, it
    finishes the job and serves a namespace created afterwards; every namespace has its
    Secret and one reference, and deleting the object leaves nothing behind."""
    namespace = f"apirestart-{secrets.token_hex(3)}"
    own_cluster.kubectl("create", "namespace", namespace)
    fan_out = FanOut(own_cluster, registries, namespace)
    operator = run_operator(
        *fan_out.operator_args, "--debug", kubeconfig=own_cluster.admin_kubeconfig
    )
    count = fan_out.start_and_wait_for_the_first_copy()
    own_cluster.restart_apiserver(down_for=5)
    at_restart = fan_out.written()
    assert count > 0, "the fan-out never started"
    assert at_restart < FAN_OUT, f"not restarted mid fan-out ({at_restart}/{FAN_OUT})"
    print(f"API server restarted with {at_restart}/{FAN_OUT} namespaces written")
    # The restarted server no longer has the resourceVersions the watches would resume
    # from (410 Gone): they start again from a fresh list, and still see what happens next.
    wait_for(
        lambda: "re-listing namespaces after 410 Gone" in operator.logs(),
        60,
        "the namespace watch to be re-listed after 410 Gone",
    )
    # Once the fan-out has finished, a new namespace can only come through the watch (the
    # drift-repair resync is minutes away).
    wait_for(lambda: fan_out.written() == FAN_OUT, 120, "the fan-out to finish")
    late = f"{namespace}-late"
    apply(
        own_cluster,
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": late, "labels": {"fanout": fan_out.label}},
        },
    )
    fan_out.targets.append(late)
    wait_for(lambda: secret(own_cluster, late, "fanned"), 10, "the pull secret in a new namespace")
    fan_out.check_converged_then_delete()
    assert operator.process.running, "the operator exited when the API server went away"


def test_registry_token_server_answers_5xx_429_and_garbage(
    cluster: ControlPlane,
    crds: None,
    tools: Tools,
    run_operator,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The registry's Bearer token server fails in each way in turn: the condition names it,
    transient failures are retried (429's Retry-After honoured), the Secret is never touched,
    and each time the object is Ready again on its own once the token server heals."""
    faulty = LocalRegistries(tmp_path / "token-faults", tools).start(("token",))
    server = faulty.token
    token_server = faulty.token_server
    assert token_server is not None
    try:
        good = _ready_registry(cluster, run_operator, namespace, faulty, server, "bearer")

        faults = [
            # (status, body, headers, reason, transient)
            (503, b"<html>maintenance</html>", {}, "RegistryError", True),
            (429, b'{"errors":[]}', {"Retry-After": "40"}, "RateLimited", True),
            (200, b"<html>not a token</html>", {}, "InvalidResponse", True),
        ]
        for status, body, headers, reason, transient in faults:
            token_server.fail_with(status, body, headers)
            failed = wait_for_reason(
                cluster, KIND, "bearer", reason, namespace, timeout=VERIFY_INTERVAL + 30
            )
            assert failed["status"] == "False"
            assert "token server" in failed["message"], failed["message"]
            stalled = condition(cluster, KIND, "bearer", "Stalled", namespace)
            # Stalled is present only while True (abnormal-true, as kstatus and Flux have it).
            assert stalled.get("status") == (None if transient else "True"), (reason, stalled)
            if status == 429:
                waiting = condition(cluster, KIND, "bearer", "Reconciling", namespace)["message"]
                assert int(waiting.split("retrying in ")[1].split("s")[0]) >= 35, waiting
            kept = secret(cluster, namespace, "pull")
            assert kept is not None
            assert kept["data"] == good["data"]
            assert kept["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]
            token_server.heal()
            wait_for_reason(cluster, KIND, "bearer", "Ready", namespace, timeout=90)
        assert token_server.counts["fault"] >= len(faults)
        after = secret(cluster, namespace, "pull")
        assert after is not None
        assert after["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]
        assert pull_secret_refs(cluster, namespace) == ["pull"]
    finally:
        cluster.kubectl("delete", "ociregistry", "bearer", "-n", namespace, "--wait=false")
        faulty.stop()


WATCH_TIMEOUT = 2  # seconds: every watch request of the operator ends this often


def _watch_requests(cluster: ControlPlane, resource: str) -> int:
    """WATCH requests the API server has answered for `resource`, from its own metrics."""
    return api_requests(cluster, "WATCH", (resource,))


def test_watch_streams_expiring_every_few_seconds(
    cluster: ControlPlane, crds: None, registries: LocalRegistries, run_operator, namespace: str
) -> None:
    """The API server ends every watch request after 2 s (`--watch-timeout 2`, as a proxy that
    cuts quiet connections would): the operator resumes each one without missing an event. A
    namespace labelled in, a ServiceAccount stripped of its reference, a namespace labelled
    out, all well after many expiries, are each acted on within seconds (the drift-repair
    resync is 5 minutes away, so only the watches can do it)."""
    label = f"watch-{namespace[-6:]}"
    basic = registries.basic
    apply(
        cluster,
        secret_object("creds", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file),
    )
    operator = run_operator(
        "--credentials-namespace", namespace, "--watch-timeout", str(WATCH_TIMEOUT)
    )
    name = f"watch-{namespace[-6:]}"
    body = registry_object(
        "ClusterOCIRegistry",
        name,
        {
            "server": basic.host,
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaceSelector": {"matchLabels": {"watch": label}}},
        },
    )
    late = f"{namespace[:50]}-late"
    try:
        apply(cluster, body)
        wait_for_reason(cluster, "ClusterOCIRegistry", name, "Ready")
        before = _watch_requests(cluster, "namespaces")
        time.sleep(6 * WATCH_TIMEOUT)
        restarts = _watch_requests(cluster, "namespaces") - before
        assert restarts >= 4, f"only {restarts} namespace watch requests in 12 s"

        cluster.kubectl("create", "namespace", late)
        cluster.kubectl("label", "namespace", late, f"watch={label}")
        wait_for(lambda: secret(cluster, late, name), 10, "the pull secret in the new namespace")
        wait_for(lambda: pull_secret_refs(cluster, late) == [name], 10, "the reference")

        time.sleep(3 * WATCH_TIMEOUT)
        cluster.kubectl(
            "patch", "serviceaccount", "default", "-n", late, "--type=merge",
            "-p", '{"imagePullSecrets": [{"name": "teams-own"}]}',
        )  # fmt: skip
        wait_for(
            lambda: pull_secret_refs(cluster, late) == ["teams-own", name],
            10,
            "the stripped reference to be added back beside the team's own",
        )

        time.sleep(3 * WATCH_TIMEOUT)
        cluster.kubectl("label", "namespace", late, "watch-")
        wait_for(lambda: secret(cluster, late, name) is None, 10, "the pull secret to go")
        wait_for(lambda: pull_secret_refs(cluster, late) == ["teams-own"], 10, "our reference gone")
        assert "Traceback" not in operator.logs()
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", late, "--wait=false", check=False)
