"""Shared fixtures. The e2e ones start real servers; unit tests never touch them."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocireg.devenv.clients import Clients
from ocireg.devenv.controlplane import ControlPlane
from ocireg.devenv.operator import OperatorProcess
from ocireg.devenv.processes import Tools
from ocireg.devenv.registries import LocalRegistries

OPERATOR_LOGS = pytest.StashKey[list[OperatorProcess]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    # A failing test shows what every operator it started logged.
    if report.failed:
        for operator in item.stash.get(OPERATOR_LOGS, []):
            report.sections.append((f"operator log ({operator.log_path})", operator.logs()))
    return report


@pytest.fixture(scope="session")
def tools() -> Tools:
    # No skip here: without the tools the e2e suite must fail loudly, not pass quietly.
    return Tools.locate()


@pytest.fixture(scope="session")
def cluster(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    control_plane = ControlPlane(tmp_path_factory.mktemp("cluster"), tools)
    try:
        control_plane.start()
        yield control_plane
    finally:
        control_plane.stop()


@pytest.fixture(scope="session")
def registries(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistries]:
    local = LocalRegistries(tmp_path_factory.mktemp("registries"), tools)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def clients(
    tools: Tools, registries: LocalRegistries, tmp_path_factory: pytest.TempPathFactory
) -> Clients:
    return Clients(tools, registries.ca_file, tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="session")
def crds(cluster: ControlPlane) -> None:
    """The ocireg CRDs from crds/, installed once per session."""
    cluster.kubectl("apply", "-f", str(Path(__file__).resolve().parents[1] / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/ociregistries.ocireg.dev",
        "crd/clusterociregistries.ocireg.dev",
    )


@pytest.fixture
def namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards without waiting."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def run_operator(
    cluster: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start `ocireg run` (admin identity unless a kubeconfig is given); stopped at teardown,
    its log attached to the report when the test fails."""
    started: list[OperatorProcess] = []
    request.node.stash[OPERATOR_LOGS] = started

    def start(
        *args: str,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
        name: str = "ocireg",
    ) -> OperatorProcess:
        operator = OperatorProcess(
            kubeconfig or cluster.admin_kubeconfig,
            tmp_path,
            ("--standalone", *args),
            env,
            name=f"{name}-{len(started)}",
        )
        started.append(operator)
        return operator.start()

    yield start
    for operator in started:
        operator.stop()


def kubectl_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout
