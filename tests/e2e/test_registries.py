"""The local registries are real: crane pushes, skopeo reads with a dockerconfigjson."""

from __future__ import annotations

import json
import secrets
import tarfile
from pathlib import Path

import pytest

from ocireg_devenv.clients import Clients, docker_config, write_docker_config
from ocireg_devenv.registries import LocalRegistries


def _config_dir(tmp_path: Path, name: str, host: str, user: str, password: str) -> Path:
    directory = tmp_path / name
    write_docker_config(directory, docker_config({host: (user, password)}))
    return directory


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_push_with_crane_then_read_with_skopeo(
    kind: str, registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    server = registries.servers[kind]
    good = _config_dir(tmp_path, "good", server.host, server.username, server.password)
    content = secrets.token_bytes(64)
    ref = f"{server.host}/smoke/{kind}:v1"
    digest = clients.push_image(ref, content, good)
    assert digest.startswith("sha256:")

    pulled = clients.skopeo_pull(ref, good / "config.json", tmp_path / "pulled")
    assert pulled.returncode == 0, pulled.stderr
    manifest = json.loads((tmp_path / "pulled" / "manifest.json").read_text())
    layer_digest = manifest["layers"][0]["digest"].removeprefix("sha256:")
    # The layer that came back is the (gzipped) tar holding exactly the bytes we pushed.
    with tarfile.open(tmp_path / "pulled" / layer_digest) as layer:
        member = layer.extractfile("hello.txt")
        assert member is not None
        assert member.read() == content

    wrong = _config_dir(tmp_path, "wrong", server.host, server.username, "not-the-password")
    refused = clients.skopeo_pull(ref, wrong / "config.json", tmp_path / "refused")
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr


def test_token_registry_sends_clients_to_the_token_server(
    registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    assert registries.token_server is not None
    server = registries.token
    before = registries.token_server.counts["basic"]
    good = _config_dir(tmp_path, "good", server.host, server.username, server.password)
    clients.push_image(f"{server.host}/smoke/counted:v1", b"counted", good)
    assert registries.token_server.counts["basic"] > before


def test_plain_http_registry_without_auth(
    registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    server = registries.plain
    empty = tmp_path / "anon"
    write_docker_config(empty, {"auths": {}})
    ref = f"{server.host}/smoke/plain:v1"
    clients.push_image(ref, b"plain", empty, insecure=True)
    pulled = clients.skopeo_pull(ref, empty / "config.json", tmp_path / "pulled", tls_verify=False)
    assert pulled.returncode == 0, pulled.stderr


def test_tls_registry_is_refused_without_the_ca(
    registries: LocalRegistries, clients: Clients, tmp_path: Path
) -> None:
    server = registries.basic
    good = _config_dir(tmp_path, "good", server.host, server.username, server.password)
    result = clients.skopeo(
        "inspect",
        "--retry-times=0",
        f"--authfile={good / 'config.json'}",
        f"docker://{server.host}/smoke/basic:v1",
    )
    assert result.returncode != 0
    assert "certificate" in result.stderr.lower()
