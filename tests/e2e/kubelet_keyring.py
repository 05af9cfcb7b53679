"""The kubelet's own choice of credentials, for tests that pull the way a node would.

``kube-local keyring`` runs the kubelet's code (pkg/credentialprovider: ParseImageName,
MakeDockerKeyring, Lookup) on Secret objects as the API returns them; crane then pulls with
exactly the credentials it printed, one after the other, as the kubelet tries them."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocireg_devenv.clients import Clients
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import Tools

# Fields of the keyring's answer that go into a Docker config entry for crane.
_CONFIG_FIELDS = ("username", "password", "auth", "identitytoken", "registrytoken")


def secret_objects(cluster: ControlPlane, namespace: str, names: list[str]) -> list[dict]:
    return [cluster.get_json("secret", name, "-n", namespace) for name in names]


def kubelet_credentials(
    tools: Tools, image: str, secret_bodies: list[dict], workdir: Path
) -> list[dict[str, str]]:
    """The credentials the kubelet would send for ``image`` given these pull Secrets (in
    imagePullSecrets order), in the order it would try them."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for body in secret_bodies:
        path = workdir / f"secret-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(body))
        files.append(str(path))
    result = subprocess.run(
        [tools.path("kube-local"), "keyring", f"--image={image}", *files],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def image_host(image: str) -> str:
    first = image.split("/", 1)[0]
    return first if ("." in first or ":" in first or first == "localhost") else "docker.io"


@dataclass
class PullResult:
    pulled: bool
    used: int | None  # index of the credential that pulled (None: anonymous, or no pull)
    errors: list[str]  # crane's complaint for each credential that did not pull


def crane_pull_with(
    clients: Clients,
    image: str,
    credential: dict[str, Any] | None,
    workdir: Path,
    insecure: bool = False,
) -> subprocess.CompletedProcess[str]:
    """crane pulls ``image`` with one credential as the keyring gave it (None: anonymous)."""
    config_dir = workdir / f"crane-{secrets.token_hex(4)}"
    config_dir.mkdir(parents=True)
    auths = {}
    if credential is not None:
        auths[image_host(image)] = {k: credential[k] for k in _CONFIG_FIELDS if credential.get(k)}
    (config_dir / "config.json").write_text(json.dumps({"auths": auths}))
    return clients.crane(
        "pull",
        image,
        str(config_dir / "image.tar"),
        docker_config_dir=config_dir,
        insecure=insecure,
    )


def pull_like_the_kubelet(
    clients: Clients,
    image: str,
    credentials: list[dict[str, str]],
    workdir: Path,
    insecure: bool = False,
) -> PullResult:
    """Try each credential in order, as the kubelet does; with none, pull anonymously."""
    errors: list[str] = []
    for index, credential in enumerate(credentials or [None]):
        result = crane_pull_with(clients, image, credential, workdir, insecure)
        if result.returncode == 0:
            return PullResult(True, index if credentials else None, errors)
        errors.append(result.stderr.strip()[-500:])
    return PullResult(False, None, errors)
