"""`ocireg run` starts against the real API server, reports healthy and stops cleanly."""

from __future__ import annotations

import subprocess
import sys

from ocireg_devenv.controlplane import ControlPlane


def test_operator_runs_and_stops_cleanly(cluster: ControlPlane, run_operator) -> None:
    operator = run_operator()
    assert operator.healthy()
    assert operator.stop() == 0
    assert "ocireg 0.1.0 starting; scope: cluster" in operator.logs()


def test_operator_namespace_scope(cluster: ControlPlane, run_operator, namespace: str) -> None:
    operator = run_operator("--namespace", namespace)
    assert f"scope: {namespace}" in operator.logs()
    assert operator.stop() == 0


def test_version_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocireg", "version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "ocireg 0.1.0"
