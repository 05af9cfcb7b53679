"""Run `ocireg run` as a subprocess against a cluster and stop it cleanly."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from ocireg_devenv.processes import LOOPBACK, Process, free_port, wait_until

# Runs in a mount namespace of the operator's own (unshare --mount): a private /run with the
# identity at the path the client's in-cluster loader reads; the host's /run is untouched.
# Each step execs the next, so the operator keeps the pid the caller started.
_MOUNT_IDENTITY = (
    "set -e; mount -t tmpfs -o size=1m,mode=755 ocireg-identity /run; "
    "mkdir -p /run/secrets/kubernetes.io/serviceaccount; "
    'cp "$1/token" "$1/ca.crt" "$1/namespace" /run/secrets/kubernetes.io/serviceaccount/; '
    'shift; exec "$@"'
)


@dataclass(frozen=True)
class InClusterIdentity:
    """Start the operator as a pod's container starts it: no kubeconfig, a ServiceAccount
    token, the cluster CA and the namespace at /var/run/secrets/kubernetes.io/serviceaccount,
    and KUBERNETES_SERVICE_HOST/PORT. The client then takes its in-cluster path, which
    imports less than the kubeconfig one (what a pod's memory is). Needs root (a mount
    namespace), as the benchmark has; ``directory`` holds what ``image.write_identity``
    writes."""

    directory: Path
    api_port: int

    def launcher(self) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                _MOUNT_IDENTITY, "sh", str(self.directory)]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {
            "KUBERNETES_SERVICE_HOST": LOOPBACK,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
        }


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        name: str = "ocireg",
        verbose: bool = True,
        in_cluster: InClusterIdentity | None = None,
    ) -> None:
        self.health_port = free_port()
        launch: list[str] = []
        identity_env = {"KUBECONFIG": str(kubeconfig)}
        if in_cluster is not None:
            launch = in_cluster.launcher()
            identity_env = in_cluster.env()
        self.process = Process(
            name,
            [
                *launch,
                sys.executable,
                "-m",
                "ocireg",
                "run",
                *(["--verbose"] if verbose else []),
                f"--liveness=http://{LOOPBACK}:{self.health_port}/healthz",
                *args,
            ],
            workdir / f"{name}.log",
            env={**identity_env, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def start(self, timeout: float = 60) -> OperatorProcess:
        self.process.start()
        wait_until(self.healthy, timeout, "the operator's health endpoint", self.process)
        return self

    def healthy(self) -> bool:
        url = f"http://{LOOPBACK}:{self.health_port}/healthz"
        return requests.get(url, timeout=2).status_code == 200

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then wait: kopf finishes what it is doing and exits. Returns the code."""
        self.process.stop(timeout)
        return None if self.process.popen is None else self.process.popen.returncode

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["InClusterIdentity", "OperatorProcess"]
