"""Two operator replicas electing a leader through a Lease (`ocireg run --leader-elect`), on
the real control plane: one works, the other stands by; a killed leader is replaced after one
lease duration, a stopping one hands over at once, and a deposed one stops writing. Both
serve /metrics all along, each saying whether it leads."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import signal
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ocireg.kube.leader import Timing
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import free_port
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

CLUSTER = "ClusterOCIRegistry"
TIMING = Timing()


@pytest.fixture
def setup(cluster: ControlPlane, crds: None, registries: LocalRegistries, namespace: str) -> str:
    """Credentials and CA in `namespace` (the operators' credentials namespace, which also
    holds their Lease); returns the target namespace."""
    basic = registries.basic
    target = f"{namespace[:55]}-t"
    cluster.kubectl("create", "namespace", target)
    apply(
        cluster,
        secret_object("creds", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file),
    )
    return target


def _registry(registries: LocalRegistries, target: str) -> dict:
    return registry_object(
        CLUSTER,
        f"ha-{target[-6:]}",
        {
            "server": registries.basic.host,
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {"namespaces": [target], "secretName": "ha-pull"},
        },
    )


class Replicas:
    """Starts elected replicas, each with its own identity (HOSTNAME, as in a pod)."""

    def __init__(self, cluster: ControlPlane, run_operator, namespace: str) -> None:
        self.cluster, self.run_operator, self.namespace = cluster, run_operator, namespace
        self.lease = f"ocireg-leader-{secrets.token_hex(3)}"

    def start(self, name: str, *extra: str) -> OperatorProcess:
        return self.run_operator(
            "--leader-elect",
            "--leader-election-id",
            self.lease,
            "--credentials-namespace",
            self.namespace,
            *extra,
            name=name,
            env={"HOSTNAME": name},
        )

    def spec(self) -> dict:
        found = self.cluster.kubectl("get", "lease", self.lease, "-n", self.namespace, "-o", "json")
        return json.loads(found.stdout)["spec"]

    def holder(self) -> str:
        """The replica name holding the Lease ('' when none)."""
        found = self.cluster.kubectl(
            "get", "lease", self.lease, "-n", self.namespace, "-o", "json", check=False
        )
        if found.returncode != 0:
            return ""
        identity = json.loads(found.stdout)["spec"].get("holderIdentity") or ""
        return identity.rsplit("_", 1)[0]


@pytest.fixture
def replicas(cluster: ControlPlane, run_operator, namespace: str) -> Replicas:
    return Replicas(cluster, run_operator, namespace)


def _leads(operator: OperatorProcess) -> bool:
    return "this replica leads" in operator.logs()


def _password_in_pull_secret(cluster: ControlPlane, target: str) -> str:
    found = secret(cluster, target, "ha-pull")
    if found is None:
        return ""
    config = json.loads(base64.b64decode(found["data"][".dockerconfigjson"]))
    return next(iter(config["auths"].values()))["password"]


def _resource_version(cluster: ControlPlane, target: str) -> str:
    found = secret(cluster, target, "ha-pull")
    assert found is not None
    return found["metadata"]["resourceVersion"]


def _rotate(cluster: ControlPlane, registries: LocalRegistries, namespace: str) -> str:
    new_password = secrets.token_urlsafe(18)
    registries.set_password("basic", new_password)
    cluster.kubectl(
        "patch", "secret", "creds", "-n", namespace, "--type=merge",
        "-p", json.dumps({"stringData": {"password": new_password}}),
    )  # fmt: skip
    return new_password


def test_standby_takes_over_when_the_leader_is_killed(
    cluster: ControlPlane,
    registries: LocalRegistries,
    replicas: Replicas,
    namespace: str,
    setup: str,
    record_property,
) -> None:
    target = setup
    first = replicas.start("replica-a")
    wait_for(lambda: replicas.holder() == "replica-a", 20, "replica a to take the Lease")
    second = replicas.start("replica-b")
    assert "standing by for Lease" in second.logs()
    body = _registry(registries, target)
    name = body["metadata"]["name"]
    try:
        apply(cluster, body)
        wait_for_reason(cluster, CLUSTER, name, "Ready")
        assert _password_in_pull_secret(cluster, target) == registries.basic.password

        # Two replicas alive: one works, nothing is written twice, the standby does nothing.
        before = _resource_version(cluster, target)
        time.sleep(10)
        assert _resource_version(cluster, target) == before
        assert replicas.holder() == "replica-a"
        assert not _leads(second)
        assert "Handler" not in second.logs()  # kopf never ran in the standby

        # The leader is killed without a chance to hand over; the credentials change.
        assert first.process.popen is not None
        first.process.popen.send_signal(signal.SIGKILL)
        first.process.popen.wait(10)
        killed_at = time.monotonic()
        new_password = _rotate(cluster, registries, namespace)

        # The standby waits out one lease duration, then leads and follows the change.
        wait_for(lambda: replicas.holder() == "replica-b", 40, "replica b to take the Lease")
        took_lease = time.monotonic() - killed_at
        wait_for(
            lambda: _password_in_pull_secret(cluster, target) == new_password,
            40,
            "the new leader to write the new password",
        )
        takeover = time.monotonic() - killed_at
        record_property("lease_taken_seconds", round(took_lease, 1))
        record_property("takeover_seconds", round(takeover, 1))
        print(f"after SIGKILL: Lease taken in {took_lease:.1f}s, new password in {takeover:.1f}s")
        # Not before the dead leader's lease ran out (no overlap), and not much after.
        assert took_lease >= TIMING.lease_seconds - TIMING.retry_period - 1
        assert took_lease < TIMING.lease_seconds + 3 * TIMING.retry_period + 5
        assert replicas.spec()["leaseTransitions"] == 1
        assert _leads(second)

        # Converged and quiet: one reference, Ready, no rewrites while nothing changes.
        assert pull_secret_refs(cluster, target).count("ha-pull") == 1
        wait_for_reason(cluster, CLUSTER, name, "Ready")
        settled = _resource_version(cluster, target)
        time.sleep(12)
        assert _resource_version(cluster, target) == settled
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)


def test_a_stopping_leader_hands_over_at_once(
    cluster: ControlPlane,
    registries: LocalRegistries,
    replicas: Replicas,
    setup: str,
    record_property,
) -> None:
    target = setup
    first = replicas.start("replica-a")
    wait_for(lambda: replicas.holder() == "replica-a", 20, "replica a to take the Lease")
    second = replicas.start("replica-b")

    # A rollout or a drained node: SIGTERM. The leader finishes, releases, exits 0.
    stopping = time.monotonic()
    assert first.stop() == 0
    assert "released Lease" in first.logs()
    wait_for(lambda: replicas.holder() == "replica-b", 15, "replica b to take the Lease")
    handover = time.monotonic() - stopping
    record_property("handover_seconds", round(handover, 1))
    print(f"handover after SIGTERM: {handover:.1f}s")
    # Well inside a lease duration: the standby did not have to wait the lease out.
    assert handover < TIMING.lease_seconds - TIMING.retry_period

    body = _registry(registries, target)
    try:
        apply(cluster, body)  # served by the new leader
        wait_for_reason(cluster, CLUSTER, body["metadata"]["name"], "Ready", timeout=40)
        assert _password_in_pull_secret(cluster, target) == registries.basic.password
        assert pull_secret_refs(cluster, target) == ["ha-pull"]
        assert second.process.running
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", body["metadata"]["name"], "--wait=false", check=False
        )


def test_a_deposed_leader_stops_at_once(
    cluster: ControlPlane, replicas: Replicas, namespace: str, setup: str
) -> None:
    """Someone else holds the Lease (as after a partition the leader did not notice): the
    leader cannot renew, and exits within the renew deadline, before the lease could pass to
    anyone else."""
    leader = replicas.start("replica-a")
    wait_for(lambda: replicas.holder() == "replica-a", 20, "replica a to take the Lease")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.kubectl(
        "patch", "lease", replicas.lease, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"holderIdentity": "intruder_1", "renewTime": now}}),
    )  # fmt: skip
    deposed = time.monotonic()
    assert leader.process.popen is not None
    code = leader.process.popen.wait(TIMING.renew_deadline + 3 * TIMING.retry_period + 5)
    stopped = time.monotonic() - deposed
    print(f"deposed leader stopped after {stopped:.1f}s with code {code}")
    assert code == 1
    assert stopped < TIMING.lease_seconds  # gone before a standby could take the Lease
    assert "lost Lease" in leader.logs()
    assert replicas.holder() == "intruder"


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics as Prometheus reads it: family name -> its samples' labels and values."""
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    answer.raise_for_status()
    families = text_string_to_metric_families(answer.text)
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in families}


def test_every_replica_serves_metrics_and_says_whether_it_leads(
    cluster: ControlPlane, registries: LocalRegistries, replicas: Replicas, setup: str
) -> None:
    """The chart has Prometheus scrape every pod: a standby must answer too (it served no
    /metrics before it led, so one target was always down), saying it stands by."""
    target = setup
    ports = {name: free_port() for name in ("replica-a", "replica-b")}

    def start(name: str) -> OperatorProcess:
        address = ("--metrics-address", "127.0.0.1")
        return replicas.start(name, "--metrics-port", str(ports[name]), *address)

    def leader_gauge(name: str) -> float:
        ((labels, value),) = _scrape(ports[name])["ocireg_leader"]
        assert labels == {}
        return value

    first = start("replica-a")
    wait_for(lambda: replicas.holder() == "replica-a", 20, "replica a to take the Lease")
    body = _registry(registries, target)
    name = body["metadata"]["name"]
    try:
        apply(cluster, body)
        wait_for_reason(cluster, CLUSTER, name, "Ready")
        second = start("replica-b")
        assert "standing by for Lease" in second.logs()

        standby = _scrape(ports["replica-b"])  # answers at all: a live target
        assert standby["process_resident_memory_bytes"]
        assert leader_gauge("replica-b") == 0.0
        assert leader_gauge("replica-a") == 1.0
        # Only the leader reports the registry objects: one series per object in all.
        assert not standby.get("ocireg_registry_ready")
        leading = _scrape(ports["replica-a"])["ocireg_registry_ready"]
        assert ({"kind": CLUSTER, "namespace": "", "name": name}, 1.0) in leading

        # The leader stops (a rollout): the standby takes over and says so.
        assert first.stop() == 0
        wait_for(lambda: leader_gauge("replica-b") == 1.0, 20, "replica b to report it leads")
        assert replicas.holder() == "replica-b"
        wait_for(
            lambda: (
                ({"kind": CLUSTER, "namespace": "", "name": name}, 1.0)
                in _scrape(ports["replica-b"]).get("ocireg_registry_ready", [])
            ),
            40,
            "the new leader to report the object Ready",
        )
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)
