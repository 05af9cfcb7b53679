"""`ocireg demo`: a real local control plane and registry with the operator running.

Everything is started on loopback from the binaries tests/cluster/build.sh builds; nothing
touches the user's kubeconfig or Docker config.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .devenv.clients import Clients, docker_config, write_docker_config
from .devenv.controlplane import ControlPlane
from .devenv.operator import OperatorProcess
from .devenv.processes import Tools, ToolsMissing
from .devenv.registries import LocalRegistries


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _show(result_stdout: str) -> None:
    print("    " + result_stdout.strip().replace("\n", "\n    "), flush=True)


def run_demo(keep: bool = False) -> int:
    try:
        tools = Tools.locate()
    except ToolsMissing as error:
        print(f"ocireg demo: {error}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="ocireg-demo-"))
    _say(f"Starting etcd, kube-apiserver and kube-controller-manager (work dir {workdir})")
    cluster = ControlPlane(workdir / "cluster", tools)
    registries = LocalRegistries(workdir / "registries", tools)
    operator: OperatorProcess | None = None
    try:
        started = time.monotonic()
        cluster.start()
        print(f"    control plane ready in {time.monotonic() - started:.1f}s at {cluster.server}")
        _show(cluster.kubectl("version").stdout)
        _show(cluster.kubectl("get", "namespaces").stdout)

        _say("Starting a TLS registry with htpasswd authentication")
        registries.start(("basic",))
        registry = registries.basic
        print(f"    registry {registry.url} (user {registry.username})")

        _say("Pushing an image with crane")
        clients = Clients(tools, registries.ca_file, workdir / "clients")
        auth_dir = write_docker_config(
            workdir / "pusher",
            docker_config({registry.host: (registry.username, registry.password)}),
        ).parent
        image = f"{registry.host}/demo/hello:1.0"
        digest = clients.push_image(image, secrets.token_bytes(32), auth_dir)
        print(f"    pushed {image}@{digest}")

        _say("Running the operator (ocireg run) against the local API server")
        operator = OperatorProcess(cluster.admin_kubeconfig, workdir, ("--standalone",))
        operator.start()
        print(f"    healthy; log: {operator.log_path}")

        _say("Reading the image back with skopeo, as a workload's pull secret would")
        pulled = clients.skopeo_pull(image, auth_dir / "config.json", workdir / "pulled")
        print("    pulled OK" if pulled.returncode == 0 else f"    pull failed: {pulled.stderr}")

        _say(
            "The OCIRegistry / ClusterOCIRegistry handlers (pull secrets written and rotated "
            "by the operator) are not in this build yet; this demo shows the real environment "
            "they run on."
        )
        if keep:
            print(f"\n    export KUBECONFIG={cluster.admin_kubeconfig}\n    Ctrl-C to stop.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0 if pulled.returncode == 0 else 1
    finally:
        _say("Stopping")
        if operator is not None:
            operator.stop()
        registries.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
