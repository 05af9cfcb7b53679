"""The kubelet tier's own node: a second one, started and stopped beside the session's, leaves
nothing on the host (processes, mounts, cgroups, files outside its directory) and does not
disturb the first."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ocireg_devenv.clients import Clients
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.node import HOST_PATHS, LocalNode, _cgroup_dirs, _mounts_under
from ocireg_devenv.registries import LocalRegistries

from .pods import assert_runs, run_pod


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_stopped_node_leaves_nothing_behind_and_the_other_node_keeps_working(
    cluster: ControlPlane,
    registries: LocalRegistries,
    clients: Clients,
    node: LocalNode,
    namespace: str,
    tmp_path: Path,
) -> None:
    existed = {p for p in HOST_PATHS if p.exists()}
    cgroups_before = _cgroup_dirs()
    second = LocalNode(
        cluster, registries, clients, tmp_path / "second", name=f"second-{secrets.token_hex(3)}"
    ).start()
    image = f"{registries.plain.host}/node/app-{secrets.token_hex(3)}:1"
    second.push_image(image, docker_config_dir=None)
    try:
        pod = run_pod(cluster, second, namespace, image)
        assert_runs(cluster, namespace, pod)
        containers = set(second.ctr("containers", "ls", "-q").split())
        assert len(containers) == 2  # the sandbox and the app
        assert _mounts_under(second.workdir)  # the container's root filesystem
    finally:
        second.stop()  # raises if it could not remove something of its own

    assert _processes_mentioning(str(second.workdir)) == []
    assert _mounts_under(second.workdir) == []
    left = {p for p in _cgroup_dirs() - cgroups_before if p.name in containers}
    assert left == set()
    created = {p for p in HOST_PATHS if p.exists()} - existed
    assert created == set(), created
    assert not (second.workdir / "containerd").exists()
    assert not (second.workdir / "kubelet").exists()
    assert os.path.exists(node.socket)  # the session's node is untouched...
    assert_runs(cluster, namespace, run_pod(cluster, node, namespace, image))  # ...and works
