"""`ocireg-demo` (`make demo`): a real local control plane, a registry and the operator,
showing a pull secret written, used by a real client, and rotated when the password changes.

Everything runs on loopback from the binaries tests/cluster/build.sh builds; nothing touches
the user's kubeconfig or Docker config.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ocireg.api.crd import crd_files
from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import Tools, ToolsMissing
from ocireg_devenv.registries import LocalRegistries

CREDENTIALS_NAMESPACE = "ocireg-system"
TEAMS = ("team-a", "team-b")


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _show(text: str) -> None:
    print("    " + text.strip().replace("\n", "\n    "), flush=True)


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _apply(cluster: ControlPlane, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def _pull_secret(cluster: ControlPlane, namespace: str) -> dict[str, Any] | None:
    result = cluster.kubectl(
        "get", "secret", "corp-registry", "-n", namespace, "-o", "json", check=False
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def _sample(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "ocireg.dev/v1alpha1",
        "kind": "ClusterOCIRegistry",
        "metadata": {"name": "corp-registry"},
        "spec": {
            "server": server,
            "auth": {"basic": {"secretRef": {"name": "corp-registry-login"}}},
            "tls": {"caBundleRef": {"configMap": "corp-ca"}},
            "targets": {
                "namespaceSelector": {"matchLabels": {"pull-from": "corp-registry"}},
                "excludeNamespaces": ["kube-*"],
                "serviceAccounts": ["default"],
            },
        },
    }


def _pull_with(clients: Clients, secret: dict[str, Any], image: str, workdir: Path) -> bool:
    authfile = workdir / f"auth-{secrets.token_hex(3)}.json"
    authfile.write_bytes(base64.b64decode(secret["data"][".dockerconfigjson"]))
    result = clients.skopeo_pull(image, authfile, workdir / "pulled")
    return result.returncode == 0


def run_demo(keep: bool = False) -> int:
    try:
        tools = Tools.locate()
    except ToolsMissing as error:
        print(f"ocireg-demo: {error}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="ocireg-demo-"))
    cluster = ControlPlane(workdir / "cluster", tools)
    registries = LocalRegistries(workdir / "registries", tools)
    operator: OperatorProcess | None = None
    try:
        _say(f"Starting etcd, kube-apiserver and kube-controller-manager (work dir {workdir})")
        started = time.monotonic()
        cluster.start()
        print(f"    control plane ready in {time.monotonic() - started:.1f}s at {cluster.server}")
        _show(cluster.kubectl("version").stdout)

        _say("Starting a TLS registry with htpasswd authentication and pushing an image")
        registries.start(("basic",))
        registry = registries.basic
        clients = Clients(tools, registries.ca_file, workdir / "clients")
        pusher = write_docker_config(
            workdir / "pusher",
            docker_config({registry.host: (registry.username, registry.password)}),
        ).parent
        image = f"{registry.host}/demo/hello:1.0"
        digest = clients.push_image(image, secrets.token_bytes(32), pusher)
        print(f"    pushed {image}@{digest}")

        _say("Installing the CRDs, the registry login and CA, and two team namespaces")
        (workdir / "crds").mkdir()
        for name, text in crd_files().items():
            (workdir / "crds" / name).write_text(text)
        _show(cluster.kubectl("apply", "-f", str(workdir / "crds")).stdout)
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/clusterociregistries.ocireg.dev",
        )  # fmt: skip
        namespaces = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CREDENTIALS_NAMESPACE}},
            *(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": team, "labels": {"pull-from": "corp-registry"}},
                }
                for team in TEAMS
            ),
        ]
        _apply(cluster, *namespaces)
        _apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "corp-registry-login", "namespace": CREDENTIALS_NAMESPACE},
                "stringData": {"username": registry.username, "password": registry.password},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "corp-ca", "namespace": CREDENTIALS_NAMESPACE},
                "data": {"ca.crt": registries.ca_file.read_text()},
            },
        )

        _say("Running the operator (ocireg run) against the local API server")
        operator = OperatorProcess(
            cluster.admin_kubeconfig,
            workdir,
            ("--credentials-namespace", CREDENTIALS_NAMESPACE),
        )
        operator.start()
        print(f"    healthy; log: {operator.log_path}")

        _say("Applying a ClusterOCIRegistry")
        sample = _sample(registry.host)
        _show(yaml.safe_dump(sample, sort_keys=False))
        _apply(cluster, sample)
        started = time.monotonic()
        _wait(
            lambda: all(_pull_secret(cluster, team) for team in TEAMS),
            60,
            "the pull secrets",
        )
        cluster.kubectl(
            "wait", "--for=condition=Ready", "--timeout=60s", "clusterociregistry/corp-registry"
        )
        print(f"    pull secrets written in {time.monotonic() - started:.1f}s")
        _show(cluster.kubectl("get", "clusterociregistries", "-o", "wide").stdout)
        _show(
            cluster.kubectl(
                "get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=ocireg"
            ).stdout
        )
        refs = cluster.kubectl(
            "get", "serviceaccount", "default", "-n", TEAMS[0],
            "-o", "jsonpath={.imagePullSecrets[*].name}",
        ).stdout  # fmt: skip
        print(f"    ServiceAccount {TEAMS[0]}/default imagePullSecrets: {refs}")

        _say("Pulling the image with skopeo, using the pull secret's bytes as its auth file")
        first = _pull_secret(cluster, TEAMS[0])
        assert first is not None
        ok = _pull_with(clients, first, image, workdir)
        print("    pulled OK" if ok else "    pull FAILED")
        if not ok:
            return 1

        _say("Rotating the password: at the registry, then in the login Secret")
        new_password = secrets.token_urlsafe(18)
        registries.set_password("basic", new_password)
        cluster.kubectl(
            "patch", "secret", "corp-registry-login", "-n", CREDENTIALS_NAMESPACE,
            "--type=merge", "-p", json.dumps({"stringData": {"password": new_password}}),
        )  # fmt: skip
        print("    the old pull secret now fails:", end=" ", flush=True)
        print("no" if _pull_with(clients, first, image, workdir) else "yes")
        started = time.monotonic()

        def all_rotated() -> list[dict[str, Any]]:
            current = [_pull_secret(cluster, team) for team in TEAMS]
            changed = [s for s in current if s and s["data"] != first["data"]]
            return changed if len(changed) == len(TEAMS) else []

        rotated = _wait(all_rotated, 60, "the pull secrets to follow the new password")
        print(f"    every pull secret followed in {time.monotonic() - started:.1f}s")
        ok = _pull_with(clients, rotated[0], image, workdir)
        print("    pulled OK with the rotated secret" if ok else "    pull FAILED")
        if not ok:
            return 1

        _say("A namespace created later gets its pull secret at once")
        started = time.monotonic()
        _apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "team-c", "labels": {"pull-from": "corp-registry"}},
            },
        )
        _wait(lambda: _pull_secret(cluster, "team-c"), 30, "the pull secret in team-c")
        print(f"    team-c has it after {time.monotonic() - started:.1f}s")

        if keep:
            print(f"\n    export KUBECONFIG={cluster.admin_kubeconfig}\n    Ctrl-C to stop.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})

        _say("Deleting the ClusterOCIRegistry removes every copy")
        cluster.kubectl("delete", "clusterociregistry", "corp-registry", "--timeout=60s")
        left = cluster.kubectl(
            "get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=ocireg", "-o", "name"
        ).stdout.strip()
        print(f"    managed Secrets left: {left or 'none'}")
        return 0 if not left else 1
    finally:
        _say("Stopping")
        if operator is not None:
            operator.stop()
        registries.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ocireg-demo",
        description="start a local control plane and registry, and show ocireg at work",
    )
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    return run_demo(keep=parser.parse_args(argv).keep)


if __name__ == "__main__":
    sys.exit(main())
