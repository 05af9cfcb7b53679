"""Small helpers to run local servers: free loopback ports, child processes, tools on disk."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ocireg"
# Present in a source checkout (an editable install), absent from an installed wheel.
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "cluster" / "build.sh"


class ToolsMissing(RuntimeError):
    """The Go-built tools are not there yet."""


@dataclass(frozen=True)
class Tools:
    """Where the tool binaries are: kube-local (etcd, apiserver, controller-manager,
    kubectl), helm, registry, crane; skopeo comes from the system PATH."""

    bin_dir: Path

    @classmethod
    def locate(cls) -> Tools:
        env = os.environ.get("OCIREG_TOOLS_BIN")
        bin_dir = Path(env) if env else _checkout_bin_dir()
        bin_dir = bin_dir or DEFAULT_CACHE / "tools" / "current" / "bin"
        if not (bin_dir / "kube-local").exists():
            raise ToolsMissing(
                f"no tool binaries in {bin_dir}: run `bash tests/cluster/build.sh` "
                "(or `make tools`) first, or set OCIREG_TOOLS_BIN"
            )
        return cls(bin_dir)

    def path(self, name: str) -> str:
        candidate = self.bin_dir / name
        if candidate.exists():
            return str(candidate)
        found = shutil.which(name)
        if not found:
            raise ToolsMissing(f"{name} not found in {self.bin_dir} or on PATH")
        return found


def _checkout_bin_dir() -> Path | None:
    """The bin directory keyed by this checkout's own tool sources, so two checkouts with
    different tools (two branches, two worktrees) each run theirs; None outside a checkout."""
    if not BUILD_SCRIPT.exists():
        return None
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--where"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def free_port() -> int:
    """A currently free TCP port on loopback (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Children get SIGTERM when the process that started them dies, so a killed test run
    # leaves no apiserver behind.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, process: Process | None = None
) -> None:
    """Poll ``check`` until it is true; fail with the process log when time runs out or the
    process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running:
            raise RuntimeError(
                f"{process.name} exited while waiting for {what}:\n{process.log_tail()}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tail = f"\n{process.log_tail()}" if process is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
