"""A real node on loopback: Debian's containerd and the kubelet from ``kube-local``, registered
with the local control plane, pulling from the local registries with the pods' pull secrets.

Everything they keep lives under one temporary directory (containerd's root, state and socket,
the kubelet's root, pod logs, runc's state, the CNI config, the registry hosts files). What
they put elsewhere all the same (shim sockets under /run/containerd/s, log symlinks in
/var/log/containers, cgroups) is noted before start and removed at :meth:`LocalNode.stop`,
which raises if anything is left behind.

What it takes on this kind of machine (cgroup v1, no systemd, no Docker): runc with cgroupfs,
``restrict_oom_score_adj``, a loopback-only CNI network (pods use ``hostNetwork: true``), one
``hosts.toml`` per registry with a ``[host."https://H"]`` table carrying the CA, a locally
built pause image pre-pulled under the configured ``sandbox_image`` name, and a kubelet with
``failCgroupV1: false``, ``cgroupsPerQOS: false`` and no node allocatable enforcement.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ocireg_devenv.clients import Clients
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import LOOPBACK, Process, Tools, free_port, wait_until
from ocireg_devenv.registries import LocalRegistries, RegistryServer

NODE_NAME = "ocireg-node"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM_SOCKETS = Path("/run/containerd/s")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# Host paths containerd, runc or the kubelet may create despite being pointed elsewhere;
# whichever did not exist before start is removed at stop.
HOST_PATHS = (
    Path("/run/containerd"),
    Path("/var/lib/containerd"),
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
    CONTAINER_LOG_LINKS,
    Path("/var/lib/cni"),
    Path("/run/netns"),
    Path("/etc/cni"),
)
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CONTAINERD_NAMESPACE = "k8s.io"  # the CRI plugin's
PAUSE_TAG = "ocireg/pause:1"


class NodeUnavailable(RuntimeError):
    """This machine cannot run the kubelet tier (not root, no containerd, containerd would
    not start); the message says which."""


def _run(argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _cgroup_dirs() -> set[Path]:
    found: set[Path] = set()
    if not CGROUP_ROOT.is_dir():
        return found
    for root, dirs, _files in os.walk(CGROUP_ROOT):
        for name in dirs:
            found.add(Path(root) / name)
    return found


def _entries(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _mounts_under(directory: Path) -> list[Path]:
    """Mount points at or under ``directory``, deepest first."""
    found = []
    prefix = str(directory.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


@dataclass(frozen=True)
class HostSnapshot:
    """What was on the host before the node started, to remove only what it added."""

    existing_paths: frozenset[Path]
    cgroups: frozenset[Path]
    shim_sockets: frozenset[str]
    log_links: frozenset[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            frozenset(p for p in HOST_PATHS if p.exists() or p.is_symlink()),
            frozenset(_cgroup_dirs()),
            frozenset(_entries(SHIM_SOCKETS)),
            frozenset(_entries(CONTAINER_LOG_LINKS)),
        )


def check_node_possible() -> None:
    """Raise :class:`NodeUnavailable` saying why the kubelet tier cannot run here."""
    if os.geteuid() != 0:
        raise NodeUnavailable("the kubelet tier needs root (containerd, runc, cgroups, mounts)")
    for program in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if shutil.which(program) is None:
            raise NodeUnavailable(
                f"{program} is not installed: `bash tests/cluster/build.sh` installs containerd "
                "and runc from Debian"
            )
    if not any((d / "loopback").exists() for d in CNI_BIN_DIRS):
        raise NodeUnavailable("the CNI loopback plugin is missing (containernetworking-plugins)")


def image_layer(files: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar layer holding {path: (content, mode)}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (content, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class LocalNode:
    """containerd + kubelet registered as node :data:`NODE_NAME`. Start with :meth:`start`,
    stop with :meth:`stop`."""

    def __init__(
        self,
        cluster: ControlPlane,
        registries: LocalRegistries,
        clients: Clients,
        workdir: Path,
        tools: Tools | None = None,
        name: str = NODE_NAME,
    ) -> None:
        self.cluster = cluster
        self.registries = registries
        self.clients = clients
        self.tools = tools or cluster.tools
        self.workdir = workdir
        self.name = name
        self.containerd_dir = workdir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.kubelet_dir = workdir / "kubelet"
        self.pod_logs = workdir / "pod-logs"
        self.hosts_dir = workdir / "certs.d"
        self.cni_conf_dir = workdir / "cni"
        self.pause_image = f"{registries.plain.host}/{PAUSE_TAG}"
        self.processes: list[Process] = []
        self._snapshot: HostSnapshot | None = None
        self._container_ids: set[str] = set()  # every container this node's containerd had

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> LocalNode:
        check_node_possible()
        self._snapshot = HostSnapshot.take()
        for directory in (self.containerd_dir, self.kubelet_dir, self.pod_logs):
            directory.mkdir(parents=True, exist_ok=True)
        self.push_image(self.pause_image, docker_config_dir=None)
        self._write_registry_hosts()
        self._write_cni_config()
        containerd = self._start_containerd()
        try:
            wait_until(self._containerd_answers, 60, "containerd to answer", containerd)
        except (RuntimeError, TimeoutError) as error:
            raise NodeUnavailable(f"containerd did not start: {error}") from None
        # Pre-pulled so that the sandbox never needs a pull (nor a credential).
        self.ctr("images", "pull", "--plain-http", self.pause_image, timeout=120)
        kubelet = self._start_kubelet()
        wait_until(self.ready, timeout, f"node {self.name} to be Ready", kubelet)
        return self

    def stop(self) -> None:
        """Delete the node's pods, stop the kubelet, remove every container, stop containerd,
        then remove what they left on the host. Raises if something could not be removed."""
        kubelet = next((p for p in self.processes if p.name == "kubelet"), None)
        containerd = next((p for p in self.processes if p.name == "containerd"), None)
        if containerd is not None and containerd.running:
            with contextlib.suppress(RuntimeError):
                self._container_ids.update(self.ctr("containers", "ls", "-q").split())
        if kubelet is not None and kubelet.running:
            self._delete_pods(timeout=60)
        if kubelet is not None:
            kubelet.stop()
            # The control plane may outlive this node (another node, the next session step).
            for kind, name in (("node", self.name), ("clusterrolebinding", f"{self.name}-node")):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        if containerd is not None and containerd.running:
            self._remove_containers()
        if containerd is not None:
            containerd.stop()
        self.processes.clear()
        leftovers = self._clean_host()
        if leftovers:
            raise RuntimeError("the kubelet tier left behind:\n  " + "\n  ".join(leftovers))

    def __enter__(self) -> LocalNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(lines)}" for p in self.processes)

    # -- what tests use --------------------------------------------------------------------

    def ready(self) -> bool:
        result = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def push_image(self, ref: str, docker_config_dir: Path | None, marker: bytes = b"") -> str:
        """Push a runnable linux/amd64 image (the pause program as entrypoint, plus a file
        holding ``marker`` so images differ) with crane; return its digest."""
        layer = self.workdir / "images" / f"layer-{time.monotonic_ns()}.tar"
        layer.parent.mkdir(parents=True, exist_ok=True)
        pause = Path(self.tools.path("pause")).read_bytes()
        layer.write_bytes(
            image_layer({"pause": (pause, 0o755), "marker.txt": (marker or ref.encode(), 0o644)})
        )
        insecure = not ref.startswith(self.registries.basic.host) and not ref.startswith(
            self.registries.token.host
        )
        appended = self.clients.crane(
            "append",
            "-f",
            str(layer),
            "-t",
            ref,
            docker_config_dir=docker_config_dir,
            insecure=insecure,
        )
        if appended.returncode != 0:
            raise RuntimeError(f"crane append {ref}: {appended.stderr.strip()}")
        mutated = self.clients.crane(
            "mutate",
            ref,
            "--entrypoint=/pause",
            "--set-platform=linux/amd64",
            "-t",
            ref,
            docker_config_dir=docker_config_dir,
            insecure=insecure,
        )
        if mutated.returncode != 0:
            raise RuntimeError(f"crane mutate {ref}: {mutated.stderr.strip()}")
        return mutated.stdout.strip().rsplit("@", 1)[-1]

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return _run(
            ["ctr", f"--address={self.socket}", f"--namespace={CONTAINERD_NAMESPACE}", *args],
            timeout=timeout,
        )

    def forget_image(self, ref: str) -> None:
        """Remove a pulled image from containerd, so the next pod must pull it again."""
        with contextlib.suppress(RuntimeError):
            self.ctr("images", "rm", ref)

    # -- containerd ------------------------------------------------------------------------

    def _write_registry_hosts(self) -> None:
        # containerd 1.6 reads only this shape: a [host."scheme://H"] table; with anything
        # else it falls back to plain HTTP on the default port.
        servers: list[RegistryServer] = list(self.registries.servers.values())
        for server in servers:
            directory = self.hosts_dir / server.host
            directory.mkdir(parents=True, exist_ok=True)
            # The top-level ca is for containerd's fallback to `server` after a failed try.
            ca = [f'ca = "{self.registries.ca_file}"'] if server.tls else []
            lines = [
                f'server = "{server.url}"',
                *ca,
                "",
                f'[host."{server.url}"]',
                '  capabilities = ["pull", "resolve"]',
                *[f"  {line}" for line in ca],
            ]
            (directory / "hosts.toml").write_text("\n".join(lines) + "\n")

    def _write_cni_config(self) -> None:
        # Pods run with hostNetwork; the network only has to exist for the node to be Ready.
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "ocireg-loopback",
            "plugins": [{"type": "loopback"}],
        }
        (self.cni_conf_dir / "10-loopback.conflist").write_text(json.dumps(conflist))

    def _containerd_config(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        cni_bin = next(str(d) for d in CNI_BIN_DIRS if (d / "loopback").exists())
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.containerd_dir / "root"}"',
                f'state = "{self.containerd_dir / "state"}"',
                "[grpc]",
                f'  address = "{self.socket}"',
                "[ttrpc]",
                f'  address = "{self.socket}.ttrpc"',
                "[debug]",
                '  level = "info"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.containerd_dir / "opt"}"',
                f"[{cri}]",
                f'  sandbox_image = "{self.pause_image}"',
                # Unprivileged-style OOM score handling: the shim may not lower its score here.
                "  restrict_oom_score_adj = true",
                "  disable_apparmor = true",
                f'  stream_server_address = "{LOOPBACK}"',
                '  stream_server_port = "0"',
                f"[{cri}.containerd]",
                '  default_runtime_name = "runc"',
                f"[{cri}.containerd.runtimes.runc]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.runc.options]",
                "  SystemdCgroup = false",
                f'  Root = "{self.containerd_dir / "runc"}"',
                f"[{cri}.cni]",
                f'  bin_dir = "{cni_bin}"',
                f'  conf_dir = "{self.cni_conf_dir}"',
                f"[{cri}.registry]",
                f'  config_path = "{self.hosts_dir}"',
                "",
            ]
        )

    def _start_containerd(self) -> Process:
        config = self.containerd_dir / "config.toml"
        config.write_text(self._containerd_config())
        containerd = Process(
            "containerd",
            ["containerd", f"--config={config}"],
            self.workdir / "logs" / "containerd.log",
        ).start()
        self.processes.append(containerd)
        return containerd

    def _containerd_answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            self.ctr("version", timeout=10)
        except RuntimeError:
            return False
        return True

    def _remove_containers(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._container_ids.update(self.ctr("containers", "ls", "-q").split())
            for task in self.ctr("tasks", "ls", "-q").split():
                with contextlib.suppress(RuntimeError):
                    self.ctr("tasks", "kill", "--signal=SIGKILL", task)
                with contextlib.suppress(RuntimeError):
                    self.ctr("tasks", "rm", "--force", task)
            for container in self.ctr("containers", "ls", "-q").split():
                with contextlib.suppress(RuntimeError):
                    self.ctr("containers", "rm", container)

    # -- kubelet ---------------------------------------------------------------------------

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": LOOPBACK,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": free_port(),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(self.pod_logs),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.pki_dir / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # This machine: cgroup v1, no systemd, swap possibly on, nothing to reserve.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            # A busy shared disk must not evict the test pods or garbage-collect the images.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
        }

    def _start_kubelet(self) -> Process:
        cert = self.cluster.ca.client_cert(f"system:node:{self.name}", ("system:nodes",))
        kubeconfig = self.cluster.write_kubeconfig(
            self.workdir / "kubelet.kubeconfig", f"system:node:{self.name}", cert=cert
        )
        # RBAC only (no Node authorizer here): the node role, bound to this node's user.
        self.cluster.kubectl(
            "create",
            "clusterrolebinding",
            f"{self.name}-node",
            "--clusterrole=system:node",
            f"--user=system:node:{self.name}",
            check=False,
        )
        config = self.workdir / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config()))
        kubelet = Process(
            "kubelet",
            [
                self.tools.path("kube-local"),
                "kubelet",
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.kubelet_dir / 'pki'}",
                # No --node-ip: the kubelet refuses a loopback one; nothing dials the node.
                f"--hostname-override={self.name}",
                "--v=2",
            ],
            self.workdir / "logs" / "kubelet.log",
        ).start()
        self.processes.append(kubelet)
        return kubelet

    def _pods(self) -> list[dict[str, Any]]:
        result = self.cluster.kubectl(
            "get", "pods", "-A", "--field-selector", f"spec.nodeName={self.name}", "-o", "json"
        )
        return json.loads(result.stdout)["items"]

    def _delete_pods(self, timeout: float) -> None:
        with contextlib.suppress(Exception):
            self.cluster.kubectl(
                "delete",
                "pods",
                "-A",
                "--field-selector",
                f"spec.nodeName={self.name}",
                "--grace-period=1",
                "--wait=false",
            )
            # The kubelet confirms each deletion once the containers are gone.
            wait_until(lambda: not self._pods(), timeout, "the node's pods to be deleted")

    # -- host cleanup ----------------------------------------------------------------------

    def _our_shims(self) -> Iterator[int]:
        # Shims outlive containerd by design; ours name our socket on their command line.
        needle = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and needle in argv:
                    yield int(entry.name)

    def _clean_host(self) -> list[str]:
        """Remove what the node left outside its directory; return what could not be.

        Only what is provably this node's counts as left behind (its shims, mounts under its
        directory, the cgroups of its containers): another node running on the same machine
        at the same time keeps its own."""
        leftovers: list[str] = []
        for pid in list(self._our_shims()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while list(self._our_shims()) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers += [f"containerd shim pid {pid}" for pid in self._our_shims()]
        for mount in _mounts_under(self.workdir):
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True, check=False)
        leftovers += [f"mount {m}" for m in _mounts_under(self.workdir)]
        snapshot = self._snapshot
        if snapshot is not None:
            leftovers += self._remove_cgroups(snapshot)
            # Shim sockets nobody listens on any more (a live node's are listened on).
            listening = _listening_unix_sockets()
            for name in _entries(SHIM_SOCKETS) - snapshot.shim_sockets:
                path = SHIM_SOCKETS / name
                if str(path) not in listening:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            for name in _entries(CONTAINER_LOG_LINKS) - snapshot.log_links:
                link = CONTAINER_LOG_LINKS / name
                with contextlib.suppress(FileNotFoundError):
                    if link.is_symlink() and os.readlink(link).startswith(str(self.workdir)):
                        link.unlink()
            for path in HOST_PATHS:
                if path not in snapshot.existing_paths:
                    _remove_stale_tree(path, _listening_unix_sockets())
                    # Still there with nobody listening in it: this node's, and left behind.
                    if path.exists() and not _has_live_socket(path, _listening_unix_sockets()):
                        leftovers.append(f"{path} (created by this node, not empty)")
        for name in ("containerd", "kubelet"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
            if (self.workdir / name).exists():
                leftovers.append(str(self.workdir / name))
        return leftovers

    def _remove_cgroups(self, snapshot: HostSnapshot) -> list[str]:
        # runc (cgroupfs driver) makes <controller>/k8s.io/<container id> per container.
        leftovers = []
        for directory in sorted(
            _cgroup_dirs() - snapshot.cgroups, key=lambda p: len(p.parts), reverse=True
        ):
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError as error:
                if directory.name in self._container_ids:
                    leftovers.append(f"cgroup {directory} ({error.strerror})")
        return leftovers


def _listening_unix_sockets() -> set[str]:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {fields[-1] for line in lines if len(fields := line.split()) >= 8}


def _remove_stale_tree(path: Path, listening: set[str]) -> None:
    """Remove, bottom-up, the unix sockets under ``path`` nobody listens on (the kubelet
    puts its device-plugin socket in /var/lib/kubelet whatever its --root-dir) and the
    directories left empty; anything else, and live sockets, stay."""
    if not path.is_dir() or path.is_symlink():
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            file = Path(root) / name
            if file.is_socket() and str(file) not in listening:
                with contextlib.suppress(OSError):
                    file.unlink()
        for name in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / name).rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _has_live_socket(path: Path, listening: set[str]) -> bool:
    return any(
        str(Path(root) / name) in listening
        for root, _dirs, files in os.walk(path)
        for name in files
    )


__all__ = ["NODE_NAME", "LocalNode", "NodeUnavailable", "check_node_possible", "image_layer"]
