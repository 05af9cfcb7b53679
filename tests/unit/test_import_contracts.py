"""The import contracts in pyproject.toml ([tool.importlinter], run by `make lint`) hold for the
tree as it is, and would catch the breaks they are there for: each case below copies the
product package, adds one forbidden import, and expects lint-imports to name that contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=package_root,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(ROOT / "operator")
    assert result.returncode == 0, result.stdout
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("pullsecrets/plan.py", "import requests", "Decisions are pure"),
        ("charts/publish.py", "from ocireg.kube import client", "Decisions are pure"),
        ("charts/sync.py", "import kubernetes", "Only ocireg.kube talks to the Kubernetes API"),
        ("kube/cache.py", "from ocireg.pullsecrets import plan", "Rooms import downward only"),
        ("api/spec.py", "from ocireg import settings", "Rooms import downward only"),
        ("pullsecrets/fanout.py", "from ocireg.charts import handlers", "Handlers are on top"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    shutil.copytree(ROOT / "operator" / "ocireg", tmp_path / "ocireg")
    target = tmp_path / "ocireg" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
