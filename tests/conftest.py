"""Shared fixtures. The e2e ones start real servers; unit tests never touch them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocireg_devenv.clients import Clients
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.hygiene import KNOWN_SECRETS, Leak
from ocireg_devenv.node import LocalNode, NodeUnavailable
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import Tools
from ocireg_devenv.registries import LocalRegistries

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
def node(
    cluster: ControlPlane,
    registries: LocalRegistries,
    clients: Clients,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalNode]:
    """containerd and a real kubelet registered as a node: the kubelet tier. Skipped, with the
    reason, when this machine cannot run it (not root, containerd missing or not starting);
    under CI (CI=true) that is a failure instead, so CI cannot pass without it."""
    local = LocalNode(cluster, registries, clients, tmp_path_factory.mktemp("node"))
    try:
        local.start()
    except NodeUnavailable as why:
        local.stop()
        _skip_or_fail(f"kubelet tier not run: {why}")
    except BaseException:
        print(local.log_tails())  # shown with the error: why the node did not come up
        local.stop()
        raise
    try:
        yield local
    finally:
        local.stop()


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def crds(cluster: ControlPlane) -> None:
    """The ocireg CRDs from crds/, installed once per session. Applied and waited for in a
    bounded loop: on a loaded machine a single `kubectl wait` sometimes exited 1 before the
    API server had the CRDs established, failing a whole test file for no product reason."""
    names = ("ociregistries.ocireg.dev", "clusterociregistries.ocireg.dev")
    established = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + 180
    last = ""
    while time.monotonic() < deadline:
        applied = cluster.kubectl(
            "apply", "-f", str(Path(__file__).resolve().parents[1] / "crds"), check=False
        )
        if applied.returncode == 0:
            states = [
                cluster.kubectl("get", f"crd/{n}", "-o", f"jsonpath={established}", check=False)
                for n in names
            ]
            if all(s.returncode == 0 and s.stdout.strip() == "True" for s in states):
                return
            last = "; ".join(
                f"{n}: {s.stdout.strip() or s.stderr.strip()}"
                for n, s in zip(names, states, strict=True)
            )
        else:
            last = applied.stderr.strip()
        time.sleep(1)
    raise AssertionError(f"the ocireg CRDs were not established within 180 s: {last}")


@pytest.fixture
def namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards without waiting."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _ocireg_objects_shown(cluster: ControlPlane) -> list[tuple[str, str]]:
    """(where, text) of what users see besides logs: every Event, and the status and
    annotations of every ocireg object."""
    shown: list[tuple[str, str]] = []
    events = cluster.kubectl("get", "events", "-A", "-o", "json", check=False)
    if events.returncode == 0:
        for event in json.loads(events.stdout).get("items", []):
            meta = event.get("metadata", {})
            where = f"Event {meta.get('namespace')}/{meta.get('name')}"
            shown.append((where, json.dumps(event)))
    for kind in ("ociregistries", "clusterociregistries"):
        found = cluster.kubectl("get", kind, "-A", "-o", "json", check=False)
        if found.returncode != 0:
            continue  # the CRDs are not installed in this session
        for item in json.loads(found.stdout).get("items", []):
            meta = item.get("metadata", {})
            where = f"{kind} {meta.get('namespace') or ''}/{meta.get('name')}".replace(" /", " ")
            shown.append((where, json.dumps([item.get("status"), meta.get("annotations")])))
    return shown


def check_secret_hygiene(cluster: ControlPlane, operators: list[OperatorProcess]) -> list[Leak]:
    """Every known credential value (the local registries' passwords, the token server's and
    the cloud stand-ins' tokens...) found in an operator log, an Event or an ocireg object's
    status. Refuses to pass vacuously: there must be secrets to look for and logs to read."""
    assert len(KNOWN_SECRETS) > 0, "no known secrets to scan for"
    logs = [(f"operator log {o.log_path.name}", o.logs()) for o in operators]
    assert any(text.strip() for _, text in logs), "the operator logs are all empty"
    leaks: list[Leak] = []
    for where, text in [*logs, *_ocireg_objects_shown(cluster)]:
        leaks.extend(KNOWN_SECRETS.find(text, where))
    return leaks


@pytest.fixture
def run_operator(
    cluster: ControlPlane,
    registries: LocalRegistries,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start `ocireg run` (admin identity unless a kubeconfig is given); stopped at teardown,
    its log attached to the report when the test fails. At teardown the operators' logs,
    Events and ocireg status are scanned for every known credential value
    (ocireg_devenv.hygiene): any hit fails the test. The local registries are always started
    so that there are credentials to look for."""
    started: list[OperatorProcess] = []
    request.node.stash[OPERATOR_LOGS] = started

    def start(
        *args: str,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
        name: str = "ocireg",
        verbose: bool = True,
    ) -> OperatorProcess:
        operator = OperatorProcess(
            kubeconfig or cluster.admin_kubeconfig,
            tmp_path,
            args,
            env,
            name=f"{name}-{len(started)}",
            verbose=verbose,  # --verbose: kopf's debug lines too, for a failing test's report
        )
        started.append(operator)
        return operator.start()

    yield start
    for operator in started:
        operator.stop()
    if started:
        leaks = check_secret_hygiene(cluster, started)
        if leaks:
            shown = "\n".join(f"  {leak.label} ({leak.form}) in {leak.where}" for leak in leaks)
            pytest.fail(f"credential values leaked:\n{shown}", pytrace=False)


def kubectl_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout
