"""The kubelet tier's node configuration, without starting anything: the shapes containerd 1.6
and the kubelet on this kind of machine need (docs/development.md says why)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml

from ocireg_devenv import node as node_module
from ocireg_devenv.node import LocalNode, NodeUnavailable, _remove_stale_tree, image_layer


def _node(tmp_path: Path) -> LocalNode:
    def server(host: str, tls: bool) -> SimpleNamespace:
        return SimpleNamespace(host=host, url=f"{'https' if tls else 'http'}://{host}", tls=tls)

    registries = SimpleNamespace(
        servers={"basic": server("127.0.0.1:5001", True), "plain": server("127.0.0.1:5003", False)},
        plain=server("127.0.0.1:5003", False),
        ca_file=tmp_path / "ca.crt",
    )
    cluster = SimpleNamespace(pki_dir=tmp_path / "pki", tools=None)
    return LocalNode(cast(Any, cluster), cast(Any, registries), cast(Any, None), tmp_path / "node")


def test_registry_hosts_files_have_the_host_table_with_the_ca(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node._write_registry_hosts()
    tls = tomllib.loads((node.hosts_dir / "127.0.0.1:5001" / "hosts.toml").read_text())
    assert tls["server"] == "https://127.0.0.1:5001"
    assert tls["host"]["https://127.0.0.1:5001"]["ca"] == str(tmp_path / "ca.crt")
    assert tls["host"]["https://127.0.0.1:5001"]["capabilities"] == ["pull", "resolve"]
    plain = tomllib.loads((node.hosts_dir / "127.0.0.1:5003" / "hosts.toml").read_text())
    assert list(plain["host"]) == ["http://127.0.0.1:5003"]
    assert "ca" not in plain["host"]["http://127.0.0.1:5003"]


def test_containerd_keeps_everything_in_the_node_directory(tmp_path: Path) -> None:
    node = _node(tmp_path)
    (tmp_path / "cni").mkdir()
    config = tomllib.loads(node._containerd_config())
    assert config["version"] == 2
    for path in (config["root"], config["state"], config["grpc"]["address"]):
        assert path.startswith(str(node.workdir))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "127.0.0.1:5003/ocireg/pause:1"
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is False
    assert runc["options"]["Root"].startswith(str(node.workdir))
    assert cri["registry"]["config_path"] == str(node.hosts_dir)
    assert cri["cni"]["conf_dir"] == str(node.cni_conf_dir)


def test_the_kubelet_listens_on_loopback_with_cgroup_v1_settings(tmp_path: Path) -> None:
    config = _node(tmp_path)._kubelet_config()
    yaml.safe_dump(config)  # it is what gets written
    assert config["address"] == config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupsPerQOS"] is False
    assert config["enforceNodeAllocatable"] == []
    assert config["failSwapOn"] is False
    assert config["authentication"]["anonymous"] == {"enabled": False}


def test_the_cni_network_is_loopback_only(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node._write_cni_config()
    (conflist,) = node.cni_conf_dir.iterdir()
    assert [p["type"] for p in json.loads(conflist.read_text())["plugins"]] == ["loopback"]


def test_image_layers_keep_the_mode(tmp_path: Path) -> None:
    import io
    import tarfile

    layer = image_layer({"pause": (b"\x7fELF", 0o755), "marker.txt": (b"x", 0o644)})
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert {m.name: m.mode for m in tar.getmembers()} == {"pause": 0o755, "marker.txt": 0o644}


def test_only_empty_directories_and_dead_sockets_are_removed(tmp_path: Path) -> None:
    import socket

    empty = tmp_path / "empty"
    (empty / "a" / "b").mkdir(parents=True)
    _remove_stale_tree(empty, set())
    assert not empty.exists()

    kept = tmp_path / "kept"
    (kept / "files").mkdir(parents=True)
    (kept / "files" / "someone-elses.txt").write_text("")
    (kept / "dead").mkdir()
    (kept / "live").mkdir()
    dead, live = kept / "dead" / "kubelet.sock", kept / "live" / "kubelet.sock"
    with socket.socket(socket.AF_UNIX) as closed, socket.socket(socket.AF_UNIX) as open_:
        closed.bind(str(dead))
        open_.bind(str(live))
        open_.listen()
        _remove_stale_tree(kept, {str(live)})
        assert not (kept / "dead").exists()
        assert live.exists()
    assert (kept / "files" / "someone-elses.txt").exists()


def test_the_tier_says_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module.os, "geteuid", lambda: 1000)
    with pytest.raises(NodeUnavailable, match="needs root"):
        node_module.check_node_possible()
    monkeypatch.setattr(node_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(node_module.shutil, "which", lambda name: None)
    with pytest.raises(NodeUnavailable, match="containerd is not installed"):
        node_module.check_node_possible()


def test_under_ci_a_tier_that_cannot_run_fails_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import _skip_or_fail

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not root"):
        _skip_or_fail("kubelet tier not run: not root")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not root"):
        _skip_or_fail("kubelet tier not run: not root")
