"""Faults on loopback, bounded in time: what a running operator does when a real dependency
goes away and comes back. After each: converged, no Secret lost, blanked or rewritten, no
duplicate ServiceAccount references."""

from __future__ import annotations

import time
from pathlib import Path

from ocireg.devenv.controlplane import ControlPlane
from ocireg.devenv.processes import Tools
from ocireg.devenv.registries import LocalRegistries

from .helpers import (
    apply,
    events_for,
    pull_secret_refs,
    registry_object,
    secret,
    wait_for_reason,
)

KIND = "OCIRegistry"
VERIFY_INTERVAL = 30  # refresh.interval below: how often a working registry is re-checked


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
        apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds", "namespace": namespace},
                "stringData": {"password": server.password},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "ca", "namespace": namespace},
                "data": {"ca.crt": faulty.ca_file.read_text()},
            },
        )
        run_operator()
        apply(
            cluster,
            registry_object(
                KIND,
                "flaky",
                {
                    "server": server.host,
                    "auth": {
                        "basic": {"secretRef": {"name": "creds"}, "username": server.username}
                    },
                    "tls": {"caBundleRef": {"configMap": "ca"}},
                    "targets": {"secretName": "pull"},
                    "refresh": {"interval": f"{VERIFY_INTERVAL}s"},
                },
                namespace,
            ),
        )
        wait_for_reason(cluster, KIND, "flaky", "Ready", namespace)
        good = secret(cluster, namespace, "pull")
        assert good is not None
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
        assert stalled == [] or stalled[0]["status"] == "False"

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


FAN_OUT = 40


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
    basic = registries.basic
    label = f"fanout-{namespace[-6:]}"
    targets = [f"{namespace[:50]}-{i}" for i in range(FAN_OUT)]
    apply(
        cluster,
        *(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"fanout": label}},
            }
            for name in targets
        ),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": namespace},
            "stringData": {"username": basic.username, "password": basic.password},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "registry-ca", "namespace": namespace},
            "data": {"ca.crt": registries.ca_file.read_text()},
        },
    )
    body = registry_object(
        "ClusterOCIRegistry",
        f"fanout-{namespace[-6:]}",
        {
            "server": basic.host,
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {
                "namespaceSelector": {"matchLabels": {"fanout": label}},
                "secretName": "fanned",
            },
        },
    )
    name = body["metadata"]["name"]
    selector = f"ocireg.dev/registry={name}"

    def written() -> int:
        return len(cluster.get_json("secrets", "-A", "-l", selector)["items"])

    args = ("--credentials-namespace", namespace, "--concurrency", "1")
    try:
        first = run_operator(*args, name="before-kill")
        apply(cluster, body)
        deadline = time.monotonic() + 60
        while (count := written()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.process.popen is not None
        first.process.popen.kill()
        first.process.popen.wait(10)
        at_kill = written()
        assert 0 < count <= at_kill < FAN_OUT, f"not killed mid fan-out ({at_kill}/{FAN_OUT})"
        print(f"killed with {at_kill}/{FAN_OUT} namespaces written")

        run_operator(*args, name="after-restart")
        wait_for_reason(cluster, "ClusterOCIRegistry", name, "Ready", timeout=120)
        secrets_written = cluster.get_json("secrets", "-A", "-l", selector)["items"]
        assert sorted(s["metadata"]["namespace"] for s in secrets_written) == sorted(targets)
        for target in targets:
            assert pull_secret_refs(cluster, target).count("fanned") == 1, target
            found = secret(cluster, target, "fanned")
            assert found is not None
            assert found["data"][".dockerconfigjson"]

        # Deleted: every copy and every reference goes, nothing orphaned.
        cluster.kubectl("delete", "clusterociregistry", name, "--timeout=120s")
        assert written() == 0
        for target in targets:
            assert "fanned" not in pull_secret_refs(cluster, target), target
    finally:
        cluster.kubectl(
            "delete", "clusterociregistry", name, "--ignore-not-found", "--wait=false", check=False
        )
        cluster.kubectl("delete", "namespace", "-l", f"fanout={label}", "--wait=false", check=False)
