"""What `make tools` (tests/cluster/build.sh) shows a person on a first build: one line per step
with what the step took here, and none of go's download chatter, which goes to a log shown
when a step fails. Run with a stand-in `go` (and stand-ins for the Debian programs) in a
temporary cache, so nothing is built or installed."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "cluster" / "build.sh"

FAKE_GO = """#!/bin/sh
for m in a b c; do echo "go: downloading example.com/$m v1.0.0" >&2; done
if [ -n "$FAIL_ON" ]; then
  case "$*" in *"$FAIL_ON"*) echo "main.go:1: undefined: boom" >&2; exit 1;; esac
fi
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out=$a; prev=$a; done
[ "$1" = install ] && { eval last=\\${$#}; name=${last%%@*}; out="$GOBIN/${name##*/}"; }
printf '#!/bin/sh\\necho "Client Version: v0.0.0"\\n' >"$out"; chmod +x "$out"
"""


def _run(tmp_path: Path, fail_on: str = "") -> subprocess.CompletedProcess[str]:
    if not Path("/usr/lib/cni/loopback").exists():
        pytest.skip("the CNI loopback plugin is missing: build.sh would install Debian packages")
    fakes = tmp_path / "bin"
    fakes.mkdir(exist_ok=True)
    programs = {
        "go": FAKE_GO,
        "skopeo": "#!/bin/sh\necho skopeo version 0\n",
        "containerd": "#!/bin/sh\necho containerd x 0\n",
        "runc": "#!/bin/sh\necho runc version 0\n",
    }
    for name, text in programs.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(stat.S_IRWXU)
    env = {
        **os.environ,
        "PATH": f"{fakes}:{os.environ['PATH']}",
        "OCIREG_CACHE": str(tmp_path / "cache"),
        "FAIL_ON": fail_on,
    }
    return subprocess.run(
        ["bash", str(BUILD)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_first_build_shows_one_line_per_step_and_no_go_chatter(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "go: downloading" not in result.stderr
    steps = [line for line in lines if line.startswith("[tools ")]
    # kube-local, pause, helm, registry, crane, actionlint, the Debian packages
    assert [s.split("]")[0] for s in steps] == [f"[tools {n}/7" for n in range(1, 8)]
    # Each build step says what it took here cold and ends with its own time.
    for step in steps[:6]:
        assert " (" in step, step
        assert " ... done in " in step, step
        assert step.endswith("s"), step
    assert "14 min cold" in steps[0]
    assert lines[-1].startswith("[tools] ready in ")
    # The chatter is kept, next to the tools.
    (log,) = (tmp_path / "cache" / "tools").glob("k8s-*/build.log")
    assert "go: downloading example.com/a" in log.read_text()
    # A second run finds it all built.
    again = _run(tmp_path)
    assert again.stderr.splitlines()[0].startswith("[tools] cached: ")


def test_a_failing_step_shows_what_it_printed(tmp_path: Path) -> None:
    result = _run(tmp_path, fail_on="cmd/registry@")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-6].startswith("[tools 4/7] registry")
    assert lines[-6].endswith("FAILED")
    assert "`go install` failed" in lines[-5]
    assert lines[-1] == "    main.go:1: undefined: boom"
    # Only the failed command's output, not the steps' before it.
    assert sum("go: downloading" in line for line in lines) == 3
