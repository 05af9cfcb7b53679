"""The test environment finds the tools built for this checkout's own sources. When it did not
(the devenv package moved one directory up and its path to build.sh still counted the old
depth), it silently fell back to the cache's `current` link, which can point at an older build
without the kubelet tier's `pause` or kube-local's `keyring`: CI failed on a fresh clone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ocireg_devenv import processes

ROOT = Path(__file__).resolve().parents[2]


def test_the_build_script_is_this_checkouts() -> None:
    assert processes.BUILD_SCRIPT == ROOT / "tests" / "cluster" / "build.sh"
    assert processes.BUILD_SCRIPT.is_file()


def test_the_bin_directory_is_keyed_by_this_checkouts_tool_sources() -> None:
    where = subprocess.run(
        ["bash", str(ROOT / "tests" / "cluster" / "build.sh"), "--where"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert processes._checkout_bin_dir() == Path(where)
    assert "/current/" not in where
