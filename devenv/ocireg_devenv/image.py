"""The operator's image, built and run without a daemon: buildah (chroot isolation) builds the
repository's Dockerfile and podman runs it, both from Debian (tests/cluster/build.sh installs
them), each session with its own storage and configuration in a temporary directory.

The Dockerfile's base (the official python:3.11-slim-bookworm) cannot be pulled where only
package registries are reachable, so by default the build gets a stand-in: a Debian root made
by mmdebstrap from Debian's own python3.11 packages, cached by its inputs. OCIREG_IMAGE_BASE
names another base to use instead (one the engine can pull, on a machine that may)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ocireg_devenv.processes import DEFAULT_CACHE, LOOPBACK

ROOT = Path(__file__).resolve().parents[2]
RELEASE_SCRIPT = ROOT / "image" / "release.sh"
BASE_ENV = "OCIREG_IMAGE_BASE"
# The stand-in base: what the official image offers the Dockerfile (python3 with venv and
# ensurepip, CA certificates) from Debian bookworm, the official image's own distribution.
# Everything that decides its content is part of its cache key.
STAND_IN_SUITE = "bookworm"
STAND_IN_PACKAGES = ("python3.11", "python3.11-venv", "ca-certificates")
STAND_IN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
STAND_IN_OPTIONS = (
    "--variant=essential",  # no apt: an image, not a system to administer
    *(f"--dpkgopt=path-exclude=/usr/share/{part}/*" for part in ("doc", "man", "info", "locale")),
)
# podman's defaults for root (a million open files) exceed the hard limits of a process
# without CAP_SYS_RESOURCE, as in this sandbox; a pod gets far less than these anyway.
ULIMITS = ("nofile=4096:4096", "nproc=4096:4096")


def stand_in_key() -> str:
    inputs = json.dumps([STAND_IN_SUITE, STAND_IN_PACKAGES, STAND_IN_MIRRORS, STAND_IN_OPTIONS])
    return hashlib.sha256(inputs.encode()).hexdigest()[:12]


def stand_in_base(cache: Path | None = None) -> Path:
    """The stand-in base as a root filesystem tarball, built once per key (about two minutes
    cold, mostly downloads) and shared by every checkout; a lock keeps two sessions from
    building it at once."""
    cache = Path(os.environ.get("OCIREG_CACHE") or DEFAULT_CACHE) if cache is None else cache
    dest = cache / "image-base" / stand_in_key()
    tarball = dest / "rootfs.tar"
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            partial = dest / "rootfs.tar.partial"
            result = subprocess.run(
                [
                    "mmdebstrap",
                    "--quiet",
                    *STAND_IN_OPTIONS,
                    f"--include={','.join(STAND_IN_PACKAGES)}",
                    "--format=tar",
                    STAND_IN_SUITE,
                    str(partial),
                    *STAND_IN_MIRRORS,
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
            partial.rename(tarball)
    return tarball


def host_ca_bundle() -> Path:
    """The CA bundle this machine's own pip trusts (a TLS-intercepting egress proxy adds its
    CA there): the build's pip is given it too, for its RUN steps only."""
    configured = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().openssl_cafile
    return Path(configured)


@dataclass
class ContainerEngine:
    """buildah and podman with storage, runtime state and configuration under ``workdir``, so
    that nothing is shared with another session or the machine's own containers."""

    workdir: Path
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        storage, state = self.workdir / "storage", self.workdir / "run"
        tmp = self.workdir / "tmp"
        for directory in (storage, state, tmp):
            directory.mkdir(parents=True, exist_ok=True)
        (self.workdir / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{storage}"\nrunroot = "{state}"\n'
        )
        limits = ", ".join(f'"{limit}"' for limit in ULIMITS)
        (self.workdir / "containers.conf").write_text(
            f"[containers]\ndefault_ulimits = [{limits}]\n"
            # runc: crun refuses a host with cgroup v1 and v2 mounted side by side. cgroupfs and
            # a file for events: there is no systemd.
            f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
            f'events_logger = "file"\ntmp_dir = "{tmp}"\n'
        )
        # Fully qualified names only: nothing is looked up on a registry by a short name.
        (self.workdir / "registries.conf").write_text("unqualified-search-registries = []\n")
        (self.workdir / "auth.json").write_text('{"auths": {}}\n')
        (self.workdir / "pip.conf").write_text("[global]\ncert = /run/ocireg-build/ca.pem\n")
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.workdir / "storage.conf"),
            "CONTAINERS_CONF": str(self.workdir / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.workdir / "registries.conf"),
            # Registry logins (buildah's and helm's) stay in this session too.
            "REGISTRY_AUTH_FILE": str(self.workdir / "auth.json"),
            "HELM_REGISTRY_CONFIG": str(self.workdir / "helm-registry.json"),
        }

    def run(
        self, tool: str, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [tool, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")
        return result

    def import_base(self, tarball: Path, name: str) -> str:
        self.run("podman", "import", "--quiet", str(tarball), name, timeout=300)
        return name

    def build(self, image: str, version: str, revision: str, base: str, log: Path) -> str:
        """Builds the repository's Dockerfile with the release's own command
        (image/release.sh build-image) on ``base``; the build's output goes to ``log``."""
        flags = [
            "--pull=never" if base.startswith("localhost/") else "--pull",
            # The host's trust for pip's downloads, in RUN steps only: not in any layer.
            f"--volume={host_ca_bundle()}:/run/ocireg-build/ca.pem:ro",
            f"--volume={self.workdir / 'pip.conf'}:/etc/pip.conf:ro",
        ]
        env = {
            "IMAGE": image,
            "VERSION": version,
            "REVISION": revision,
            "BASE": base,
            "BUILD_FLAGS": " ".join(flags),
        }
        result = self.release("build-image", env, timeout=900)
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"the image build failed, see {log}:\n{result.stderr[-3000:]}")
        return f"{image}:{version}"

    def release(
        self, command: str, env: Mapping[str, str], timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """image/release.sh ``command`` with this engine's configuration and ``env``."""
        return subprocess.run(
            ["bash", str(RELEASE_SCRIPT), command],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def inspect(self, *names: str, kind: str = "container") -> list[dict[str, Any]]:
        return json.loads(self.run("podman", kind, "inspect", *names).stdout)

    def image_size(self, name: str) -> int:
        return int(self.inspect(name, kind="image")[0]["Size"])

    def layer_sizes(self, name: str) -> list[tuple[int, str]]:
        """(bytes, instruction) per layer, newest first, as `podman history` shows them."""
        out = self.run("podman", "history", "--format=json", name).stdout
        return [(int(layer["size"]), layer.get("createdBy", "")) for layer in json.loads(out)]

    def exec_in(self, image: str, *argv: str) -> str:
        """Runs a command in a throwaway container of ``image`` (locked down like the
        operator's) and returns its output."""
        entrypoint, *rest = argv
        result = self.run(
            "podman",
            "run",
            "--rm",
            "--network=none",
            "--read-only",
            "--cap-drop=all",
            f"--entrypoint={entrypoint}",
            image,
            *rest,
        )
        return result.stdout

    def reset(self) -> None:
        """Removes every container and image of this engine and its storage (unmounting the
        overlay mounts first: podman does that)."""
        self.run("podman", "system", "reset", "--force", timeout=300, check=False)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.workdir / "storage")


@dataclass
class OperatorContainer:
    """``ocireg run`` in a container of the image, as the chart's pod runs it: the chart's
    arguments and environment, a read-only root with a scratch /tmp (the chart's emptyDir),
    every capability dropped, no privilege escalation, the image's own user, and the in-cluster
    identity a kubelet would mount (a ServiceAccount token, the cluster's CA, the namespace)."""

    engine: ContainerEngine
    image: str
    name: str
    args: Sequence[str]
    env: Mapping[str, str]
    identity_dir: Path
    api_port: int
    health_port: int
    log_path: Path

    def start(self) -> OperatorContainer:
        env = {
            **self.env,
            "KUBERNETES_SERVICE_HOST": LOOPBACK,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
        }
        self.engine.run(
            "podman",
            "run",
            "--detach",
            f"--name={self.name}",
            # Everything it talks to listens on loopback.
            "--network=host",
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs=/tmp:rw,size=64m,mode=1777",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            f"--volume={self.identity_dir}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            *(f"--env={key}={value}" for key, value in env.items()),
            self.image,
            *self.args,
            f"--liveness=http://{LOOPBACK}:{self.health_port}/healthz",
        )
        return self

    def healthy(self) -> bool:
        url = f"http://{LOOPBACK}:{self.health_port}/healthz"
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 90) -> float:
        """Seconds until the health endpoint answered; fails with the container's log."""
        started = time.monotonic()
        while not self.healthy():
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"container {self.name} not healthy:\n{self.logs()[-3000:]}")
            time.sleep(0.5)
        return time.monotonic() - started

    def state(self) -> dict[str, Any]:
        return self.engine.inspect(self.name)[0]["State"]

    def logs(self) -> str:
        """The container's output so far; once it is removed, what was saved at its stop."""
        result = self.engine.run("podman", "logs", self.name, check=False)
        if result.returncode == 0:
            self.log_path.write_text(result.stdout + result.stderr)
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.engine.run("podman", "exec", self.name, *argv, check=check)

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM (kopf finishes and exits), then the exit code; the log is kept."""
        self.engine.run("podman", "stop", f"--time={timeout}", self.name, timeout=timeout + 30)
        self.logs()
        code = int(self.state()["ExitCode"])
        self.engine.run("podman", "rm", "--force", self.name, check=False)
        return code


def write_identity(directory: Path, token: str, ca_pem: bytes, namespace: str) -> Path:
    """What a kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount; readable by the
    image's non-root user."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"token": token.encode(), "ca.crt": ca_pem, "namespace": namespace.encode()}
    for name, content in files.items():
        (directory / name).write_bytes(content)
        (directory / name).chmod(0o644)
    directory.chmod(0o755)
    return directory


__all__ = [
    "BASE_ENV",
    "ContainerEngine",
    "OperatorContainer",
    "stand_in_base",
    "stand_in_key",
    "write_identity",
]
