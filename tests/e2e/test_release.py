"""The release workflow (.github/workflows/release.yml), checked by actionlint (built by
tests/cluster/build.sh; it runs shellcheck on every `run:` script) and read for what a release
must be: on version tags only, least privilege, actions pinned to commits, every step one of
image/release.sh's (which tests/e2e/test_image.py runs against a local registry)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ocireg_devenv.processes import Tools

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"


def _actionlint(tools: Tools, *files: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [tools.path("actionlint"), "-no-color", "-format", "{{json .}}", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout or "[]")


def test_actionlint_finds_nothing_in_the_workflows(tools: Tools) -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert RELEASE in files
    findings = _actionlint(tools, *files)
    assert findings == [], "\n".join(f"{f['line']}: {f['kind']}: {f['message']}" for f in findings)


def test_actionlint_does_flag_a_careless_workflow(tools: Tools, tmp_path: Path) -> None:
    # The checker is live, reads what we think it reads, and runs shellcheck on scripts.
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    careless = workflows / "careless.yml"
    careless.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n        with:\n          no-such-input: x\n"
        '      - run: echo "${{ github.event.head_commit.message }}"\n'
        "      - run: cd $HOME; ls $DIR\n"
        "      - run: echo ${{ secrets.TOKEN.value }}\n"
    )
    kinds = {finding["kind"] for finding in _actionlint(tools, careless)}
    assert {"action", "expression", "shellcheck"} <= kinds, kinds


def _workflow() -> dict[Any, Any]:
    return yaml.safe_load(RELEASE.read_text())


def test_the_release_runs_on_version_tags_only_with_least_privilege() -> None:
    workflow = _workflow()
    # PyYAML reads the `on` key as True (YAML 1.1).
    assert workflow[True] == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        assert job["permissions"] == {"contents": "read", "packages": "write"}, name
        assert job["timeout-minutes"] <= 30, name
        for step in job["steps"]:
            if "uses" in step:
                # A commit, not a tag that can be moved; the checkout keeps no credentials.
                assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step
                assert step["with"]["persist-credentials"] is False, step
            else:
                run = step["run"]
                assert "${{" not in run, f"an expression in a script: {run}"
                assert run.startswith(("bash image/release.sh ", "echo ")), run


def test_the_release_publishes_the_image_and_then_the_chart() -> None:
    jobs = _workflow()["jobs"]
    runs = {name: [s.get("run", "") for s in job["steps"]] for name, job in jobs.items()}
    assert "bash image/release.sh build-image" in runs["image"]
    assert "bash image/release.sh push-image" in runs["image"]
    assert "bash image/release.sh push-chart" in runs["chart"]
    assert jobs["chart"]["needs"] == "image"
    env = _workflow()["env"]
    assert env["IMAGE"] == "ghcr.io/${{ github.repository_owner }}/ocireg"
    assert env["CHARTS"] == "ghcr.io/${{ github.repository_owner }}/charts"
    # The token is handed only to the steps that push.
    for job in jobs.values():
        for step in job["steps"]:
            token = "${{ secrets.GITHUB_TOKEN }}" in json.dumps(step)
            assert token == ("push-" in step.get("run", "")), step
