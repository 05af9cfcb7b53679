"""Run `ocireg run` as a subprocess against a cluster and stop it cleanly."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import requests

from ocireg_devenv.processes import LOOPBACK, Process, free_port, wait_until


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        name: str = "ocireg",
        verbose: bool = True,
    ) -> None:
        self.health_port = free_port()
        self.process = Process(
            name,
            [
                sys.executable,
                "-m",
                "ocireg",
                "run",
                *(["--verbose"] if verbose else []),
                f"--liveness=http://{LOOPBACK}:{self.health_port}/healthz",
                *args,
            ],
            workdir / f"{name}.log",
            env={"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})},
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


__all__ = ["OperatorProcess"]
