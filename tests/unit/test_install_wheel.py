"""The wheel (and so the image, which installs it) carries the operator only: no local control
plane, registry stand-ins, PKI or demo, and nothing in the product imports them."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "operator" / "ocireg"
# What only the local environment and the tests need.
NOT_SHIPPED = ("ocireg_devenv", "moto", "jwt", "bcrypt", "pytest", "hypothesis")


def test_the_wheel_holds_the_ocireg_package_only(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ocireg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"ocireg"}
    modules = {name for name in names if name.endswith(".py")}
    # Every product module is in it (a package without __init__.py would be silently left out).
    expected = {f"ocireg/{p.relative_to(PRODUCT).as_posix()}" for p in PRODUCT.rglob("*.py")}
    assert modules == expected
    assert not [name for name in names if "devenv" in name or "demo" in name]


def test_no_product_module_imports_the_local_environment() -> None:
    offenders = []
    for path in sorted(PRODUCT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.split(".")[0] in NOT_SHIPPED
            ]
    assert offenders == []


def test_the_image_copies_the_product_only() -> None:
    copies = [
        line.split()[1:-1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY") and "--from" not in line
    ]
    sources = {source for copy in copies for source in copy}
    # The pruning script runs in the build stage only; the final stage copies the virtualenv.
    assert sources == {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "LICENSE",
        "operator",
        "image/prune-venv.sh",
    }
