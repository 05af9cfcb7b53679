"""Real registry clients for the tests and the demo: crane pushes, skopeo reads, helm pulls.

Every call gets its own Docker config file, so nothing touches the user's ~/.docker.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from ocireg_devenv.processes import Tools

# skopeo refuses to copy without a signature policy; the Debian package may not ship one.
_ACCEPT_ANYTHING = {"default": [{"type": "insecureAcceptAnything"}]}


def docker_config(auths: dict[str, tuple[str, str]]) -> dict:
    """A Docker config.json body for {host: (username, password)}."""
    return {
        "auths": {
            host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
            for host, (user, password) in auths.items()
        }
    }


def write_docker_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def _run(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def random_layer(path: Path, content: bytes) -> Path:
    """A tar layer with one file, for images that are distinguishable by their content."""
    info = tarfile.TarInfo("hello.txt")
    info.size = len(content)
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(content))
    return path


class Clients:
    """crane, skopeo and helm, configured to trust the local CA."""

    def __init__(self, tools: Tools, ca_file: Path, workdir: Path) -> None:
        self.tools = tools
        self.ca_file = ca_file
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_dir = workdir / "certs"
        self.cert_dir.mkdir(exist_ok=True)
        (self.cert_dir / "ca.crt").write_bytes(ca_file.read_bytes())
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps(_ACCEPT_ANYTHING))

    def crane(
        self, *args: str, docker_config_dir: Path | None = None, insecure: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = {"SSL_CERT_FILE": str(self.ca_file)}
        if docker_config_dir is not None:
            env["DOCKER_CONFIG"] = str(docker_config_dir)
        flags = ["--insecure"] if insecure else []
        return _run([self.tools.path("crane"), *args, *flags], env)

    def push_image(
        self, ref: str, content: bytes, docker_config_dir: Path, insecure: bool = False
    ) -> str:
        """Push a one-layer image with crane; return its digest."""
        layer = random_layer(self.workdir / "layer.tar", content)
        result = self.crane(
            "append",
            "-f",
            str(layer),
            "-t",
            ref,
            docker_config_dir=docker_config_dir,
            insecure=insecure,
        )
        if result.returncode != 0:
            raise RuntimeError(f"crane push {ref} failed: {result.stderr.strip()}")
        return result.stdout.strip().rsplit("@", 1)[-1]

    def skopeo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run([self.tools.path("skopeo"), "--policy", str(self.policy), *args])

    def skopeo_pull(
        self, ref: str, authfile: Path, dest: Path, tls_verify: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Copy an image out of the registry with skopeo, authenticating with ``authfile``
        (a Docker config, e.g. a pull secret's .dockerconfigjson)."""
        tls = [f"--src-cert-dir={self.cert_dir}"] if tls_verify else ["--src-tls-verify=false"]
        return self.skopeo(
            "copy",
            "--retry-times=0",
            f"--src-authfile={authfile}",
            *tls,
            f"docker://{ref}",
            f"dir:{dest}",
        )

    def helm(
        self, *args: str, registry_config: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "HELM_CACHE_HOME": str(self.workdir / "helm-cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm-config"),
            "HELM_DATA_HOME": str(self.workdir / "helm-data"),
        }
        extra = [f"--registry-config={registry_config}"] if registry_config else []
        return _run([self.tools.path("helm"), *args, *extra], env)
