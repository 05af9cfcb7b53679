"""The README's demo command works: it runs the whole story end to end on its own control
plane and exits 0 only if every step did what it says."""

from __future__ import annotations

import subprocess
import sys

from ocireg_devenv.processes import Tools


def test_demo_runs_end_to_end(tools: Tools) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocireg_devenv.demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in (
        "pulled OK",
        "the old pull secret now fails: yes",
        "pulled OK with the rotated secret",
        "team-c has it after",
        "managed Secrets left: none",
    ):
        assert line in output, output
