"""What `ocireg run` logs, read from real processes against the real control plane: what an
operator on call needs (a failure once, at warning, with its reason), nothing per tick, no
probe access lines, and one line and a non-zero exit when no cluster answers at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import free_port
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    condition,
    registry_object,
    secret_object,
    wait_for,
    wait_for_reason,
)

CLUSTER = "ClusterOCIRegistry"


def retry_wait(cluster: ControlPlane, name: str) -> int:
    """The seconds the Reconciling condition says the next retry is away."""
    message = condition(cluster, CLUSTER, name, "Reconciling").get("message") or ""
    return int(message.split("retrying in ")[1].split("s")[0]) if "retrying in " in message else 0


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_an_unreachable_registry_is_one_warning_with_its_reason(
    cluster: ControlPlane, crds: None, run_operator, namespace: str
) -> None:
    operator = run_operator("--log-format", "full", verbose=False)
    name = f"gone-{namespace[-6:]}"
    server = f"127.0.0.1:{free_port()}"  # nothing listens there
    spec = {"server": server, "auth": {"anonymous": {}}, "targets": {"namespaces": [namespace]}}
    apply(cluster, registry_object(CLUSTER, name, spec))
    try:
        wait_for_reason(cluster, CLUSTER, name, "Unreachable", type_="CredentialsReady")
        # The first retry (after about 10 s) failed the same way: the wait grew to about 20 s.
        wait_for(
            lambda: retry_wait(cluster, name) >= 15,
            60,
            "a retry that failed again",
        )
        log = operator.logs()
        about = [line for line in lines(log) if name in line]
        failed = [line for line in about if "failed" in line]
        assert len(failed) == 1, "\n".join(about)
        assert "[WARNING ]" in failed[0]
        assert f"{CLUSTER}/{name} failed: Unreachable:" in failed[0]
        assert server in failed[0]
        # kopf's own per-handler lines are debug now; never "succeeded" for a failure.
        assert "succeeded" not in log
        assert "Handler" not in log
    finally:
        cluster.kubectl("delete", "clusterociregistry", name, "--wait=false", check=False)


def test_an_idle_operator_logs_nothing_per_tick_and_no_probes(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    basic = registries.basic
    apply(
        cluster,
        secret_object("creds", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file, name="corp-ca"),
    )
    operator = run_operator(*ALLOW_LOCAL_REGISTRIES, "--resync", "10", verbose=False)
    spec = {
        "server": basic.host,
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": {"configMap": "corp-ca"}},
        # A chart listing gets kopf's timer (every 10 s): its ticks must not be logged.
        "charts": {"repositories": ["charts/none"], "interval": "10m"},
    }
    apply(cluster, registry_object("OCIRegistry", "idle", spec, namespace))
    wait_for_reason(cluster, "OCIRegistry", "idle", "Ready", namespace)
    wait_for_reason(cluster, "OCIRegistry", "idle", "RepositoryNotFound", namespace, "ChartsSynced")
    time.sleep(3)
    before = operator.logs()
    deadline = time.monotonic() + 15  # a resync (10 s), a timer tick or two, probes
    probes = 0
    while time.monotonic() < deadline:
        assert operator.healthy()
        probes += 1
        time.sleep(1)
    after = operator.logs()
    assert after.startswith(before)
    assert probes >= 10
    assert lines(after[len(before) :]) == []


def _run_without_a_cluster(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocireg", "run"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_run_without_a_usable_cluster_exits_with_one_line(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    closed = tmp_path / "closed.yaml"
    closed.write_text(
        cluster.admin_kubeconfig.read_text().replace(
            cluster.server, f"https://127.0.0.1:{free_port()}"
        )
    )
    stranger = tmp_path / "stranger.yaml"  # the real API server, a token it never issued
    stranger.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
        f"clusters: [{{name: c, cluster: {{server: '{cluster.server}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: not-a-token-it-issued}}]\n"
    )
    expected = {
        broken: "no usable kubeconfig or in-cluster identity (ConfigException:",
        closed: "cannot reach the API server at https://127.0.0.1:",
        stranger: f"the API server at {cluster.server} refused the request: 401",
    }
    for kubeconfig, message in expected.items():
        started = time.monotonic()
        result = _run_without_a_cluster(kubeconfig)
        took = time.monotonic() - started
        assert result.returncode == 1, (kubeconfig.name, result.stderr[-2000:])
        errors = lines(result.stderr)
        assert [e for e in errors if e.startswith("ocireg run: error: ")] == [errors[-1]]
        assert message in errors[-1], errors
        assert "Traceback" not in result.stderr + result.stdout
        assert took < 30, (kubeconfig.name, took)
        assert "not-a-token-it-issued" not in result.stderr
