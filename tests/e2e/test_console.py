"""`ocireg check` and `ocireg status`, run as people run them (the installed command, and
through kubectl as the `kubectl ocireg` plugin) against the real control plane and the local
registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    apply,
    ca_config_map,
    registry_object,
    secret_object,
    wait_for_reason,
)

CLUSTER = "ClusterOCIRegistry"
TENANT = "OCIRegistry"
BIN = Path(sys.executable).parent


def ocireg(
    cluster: ControlPlane, *args: str, kubeconfig: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ocireg"), *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig or cluster.admin_kubeconfig)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kubectl_ocireg(cluster: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command as a kubectl plugin: kubectl finds kubectl-ocireg on PATH."""
    return subprocess.run(
        [str(cluster.tools.path("kubectl")), "ocireg", *args],
        env={
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "KUBECONFIG": str(cluster.admin_kubeconfig),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write(path: Path, *objects: dict) -> Path:
    path.write_text(yaml.safe_dump_all(objects))
    return path


def our_secrets(cluster: ControlPlane, namespaces: tuple[str, ...]) -> list[str]:
    """ocireg's Secrets in these namespaces (not all: earlier tests' namespaces are still
    being emptied while this runs)."""
    found = cluster.kubectl(
        "get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=ocireg", "-o", "json"
    )
    return sorted(
        f"{s['metadata']['namespace']}/{s['metadata']['name']}"
        for s in json.loads(found.stdout)["items"]
        if s["metadata"]["namespace"] in namespaces
    )


def test_check_tries_the_credentials_and_writes_nothing(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    namespace: str,
    tmp_path: Path,
) -> None:
    basic = registries.basic
    target = f"{namespace}-t"
    cluster.kubectl("create", "namespace", target)
    cluster.kubectl("label", "namespace", target, f"pull-from={namespace}")
    apply(
        cluster,
        secret_object("login", namespace, username=basic.username, password=basic.password),
        secret_object("wrong", namespace, username=basic.username, password="not-it"),
        ca_config_map(namespace, registries.ca_file),
    )
    name = f"check-{namespace[-6:]}"
    spec = {
        "server": basic.host,
        "auth": {"basic": {"secretRef": {"name": "login"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {"namespaceSelector": {"matchLabels": {"pull-from": namespace}}},
    }
    good = write(tmp_path / "good.yaml", registry_object(CLUSTER, name, spec))
    before = our_secrets(cluster, (namespace, target))
    try:
        checked = kubectl_ocireg(
            cluster, "check", "-f", str(good), "--credentials-namespace", namespace
        )
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.splitlines() == [
            f"{CLUSTER} {name}: OK",
            f"  credentials: basic, accepted by {basic.host}",
            f"  would write: Secret {name} (dockerconfigjson) in 1 namespace(s): {target}, "
            "referenced by ServiceAccounts default",
        ]
        # It reads as the kubeconfig's identity: one that may not read the Secret is told so.
        stranger = cluster.kubeconfig_for_user(f"nobody-{namespace[-6:]}", ["nobodies"])
        forbidden = ocireg(
            cluster,
            "check",
            "-f",
            str(good),
            "--credentials-namespace",
            namespace,
            kubeconfig=stranger,
        )
        assert forbidden.returncode == 1
        assert forbidden.stderr.startswith(f"{CLUSTER} {name}: Forbidden: "), forbidden.stderr

        # Nothing was written: no object, no pull secret.
        assert cluster.kubectl("get", "clusterociregistry", name, check=False).returncode != 0
        assert our_secrets(cluster, (namespace, target)) == before

        # The wrong password: exit 1 and the registry's refusal, never the password.
        spec["auth"] = {"basic": {"secretRef": {"name": "wrong"}}}
        bad = write(tmp_path / "bad.yaml", registry_object(CLUSTER, name, spec))
        refused = ocireg(cluster, "check", "-f", str(bad), "--credentials-namespace", namespace)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"{CLUSTER} {name}: AuthenticationFailed: ")
        assert "not-it" not in refused.stdout + refused.stderr
        assert basic.password not in checked.stdout + checked.stderr + refused.stderr

        # A tenant's object goes through the operator's egress policy: a registry on
        # loopback is refused unless allowed, as the operator would refuse it.
        tenant = registry_object(
            TENANT,
            "mine",
            {**spec, "auth": {"basic": {"secretRef": {"name": "login"}}}},
            namespace,
        )
        tenant_file = write(tmp_path / "tenant.yaml", tenant)
        fenced = ocireg(cluster, "check", "-f", str(tenant_file))
        assert fenced.returncode == 1
        assert "EgressNotAllowed" in fenced.stderr
        allowed = ocireg(cluster, "check", "-f", str(tenant_file), *ALLOW_LOCAL_REGISTRIES)
        assert allowed.returncode == 0, allowed.stderr
        assert f"in {namespace}, referenced by ServiceAccounts default" in allowed.stdout
    finally:
        cluster.kubectl("delete", "namespace", target, "--wait=false", check=False)


def test_check_local_files_needs_no_cluster(
    cluster: ControlPlane, registries: LocalRegistries, tmp_path: Path
) -> None:
    basic = registries.basic
    spec = {
        "server": basic.host,
        "auth": {"basic": {"secretRef": {"name": "login"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {"namespaces": ["team-*"]},
    }
    files = write(
        tmp_path / "all.yaml",
        registry_object(CLUSTER, "local", spec),
        secret_object("login", "ocireg-system", username=basic.username, password=basic.password),
        ca_config_map("ocireg-system", registries.ca_file),
    )
    nowhere = tmp_path / "absent-kubeconfig"
    checked = ocireg(cluster, "check", "--local", "-f", str(files), kubeconfig=nowhere)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0] == f"{CLUSTER} local: OK"
    assert "in the namespaces spec.targets selects" in checked.stdout
    # The same from standard input; without --local the missing cluster is one line.
    piped = ocireg(
        cluster, "check", "--local", "-f", "-", kubeconfig=nowhere, stdin=files.read_text()
    )
    assert piped.returncode == 0, piped.stderr
    no_cluster = ocireg(cluster, "check", "-f", str(files), kubeconfig=nowhere)
    assert no_cluster.returncode == 1
    assert no_cluster.stderr.startswith("ocireg check: error: no usable kubeconfig")
    assert "Traceback" not in no_cluster.stderr


def test_status_lists_every_object_also_as_a_kubectl_plugin(
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    basic = registries.basic
    apply(
        cluster,
        secret_object("login", namespace, username=basic.username, password=basic.password),
        secret_object("wrong", namespace, username=basic.username, password="not-it"),
        ca_config_map(namespace, registries.ca_file),
    )
    run_operator(*ALLOW_LOCAL_REGISTRIES)
    spec = {
        "server": basic.host,
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
    }
    apply(
        cluster,
        registry_object(
            TENANT, "good", {**spec, "auth": {"basic": {"secretRef": {"name": "login"}}}}, namespace
        ),
        registry_object(
            TENANT, "bad", {**spec, "auth": {"basic": {"secretRef": {"name": "wrong"}}}}, namespace
        ),
    )
    wait_for_reason(cluster, TENANT, "good", "Ready", namespace)
    wait_for_reason(cluster, TENANT, "bad", "AuthenticationFailed", namespace)

    shown = ocireg(cluster, "status", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()]
    assert rows[0] == [
        "KIND",
        "NAME",
        "READY",
        "REASON",
        "EXPIRES",
        "FAILURES",
        "NS-FAILED",
        "REFRESHED",
    ]
    mine = {row[1]: row for row in rows[1:] if row[1].startswith(f"{namespace}/")}
    assert mine[f"{namespace}/good"][:7] == [
        TENANT,
        f"{namespace}/good",
        "True",
        "Ready",
        "-",
        "0",
        "0",
    ]
    assert mine[f"{namespace}/good"][-2:][1] == "ago"  # e.g. "12s ago"
    assert int(mine[f"{namespace}/bad"][5]) >= 1  # failed attempts in a row
    assert mine[f"{namespace}/bad"][:4] == [
        TENANT,
        f"{namespace}/bad",
        "False",
        "AuthenticationFailed",
    ]

    # The same command as a kubectl plugin.
    plugin = kubectl_ocireg(cluster, "status", "-n", namespace)
    assert plugin.returncode == 0, plugin.stderr
    through = [line.split()[:5] for line in plugin.stdout.splitlines()]
    assert through[0] == rows[0][:5]
    assert sorted(r for r in through if r[1].startswith(f"{namespace}/")) == sorted(
        row[:5] for row in mine.values()
    )
    listed = subprocess.run(
        [str(cluster.tools.path("kubectl")), "plugin", "list"],
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert str(BIN / "kubectl-ocireg") in listed.stdout
