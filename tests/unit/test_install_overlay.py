"""A kustomize overlay that moves the install to another namespace (or renames it) moves the
user every ValidatingAdmissionPolicy names with it: each policy's matchConditions must name
exactly the ServiceAccount every binding grants the operator's rights to. A policy that still
names system:serviceaccount:ocireg-system:ocireg while the operator runs elsewhere matches
none of its requests and protects nothing (nothing fails: the operator just works unchecked).
Rendered by the real kustomize (kubectl kustomize, from the tools `make tools` builds)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg_devenv.processes import Tools, ToolsMissing

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
USER = re.compile(
    r"^request\.userInfo\.username == '(system:serviceaccount:[a-z0-9.-]+:[a-z0-9.-]+)'$"
)


def _kubectl() -> str:
    try:
        return Tools.locate().path("kubectl")
    except ToolsMissing as missing:  # `make unit` without `make tools`; `make test` has them
        pytest.skip(str(missing))


def _render(tmp_path: Path, **overlay: Any) -> list[dict[str, Any]]:
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, tmp_path)],
        "components": [os.path.relpath(MANIFESTS / "admission", tmp_path)],
        **overlay,
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        [_kubectl(), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _users(objects: list[dict[str, Any]]) -> dict[str, str]:
    users = {}
    for policy in (o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"):
        (condition,) = policy["spec"]["matchConditions"]
        found = USER.match(condition["expression"])
        assert found, condition  # an unresolved $(VAR) is not a user
        users[policy["metadata"]["name"]] = found.group(1)
    return users


def _subjects(objects: list[dict[str, Any]]) -> dict[str, str]:
    subjects = {}
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
        user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
        subjects[f"{binding['kind']}/{binding['metadata']['name']}"] = user
    return subjects


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({}, "system:serviceaccount:ocireg-system:ocireg"),
        ({"namespace": "platform-ocireg"}, "system:serviceaccount:platform-ocireg:ocireg"),
        (
            {"namespace": "platform-ocireg", "namePrefix": "corp-"},
            "system:serviceaccount:platform-ocireg:corp-ocireg",
        ),
    ],
    ids=["base", "another-namespace", "another-namespace-and-prefix"],
)
def test_every_policy_names_the_account_every_binding_grants(
    tmp_path: Path, overlay: dict[str, Any], expected: str
) -> None:
    objects = _render(tmp_path, **overlay)
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    meta = account["metadata"]
    assert f"system:serviceaccount:{meta['namespace']}:{meta['name']}" == expected
    users = _users(objects)
    # The four policies: tokens, own objects, ServiceAccounts, the webhook configuration.
    assert len(users) == 4, sorted(users)
    assert set(users.values()) == {expected}, users
    subjects = _subjects(objects)
    # The operator's ClusterRoleBinding, the admission one and the leader-election RoleBinding.
    assert len(subjects) == 3, sorted(subjects)
    assert set(subjects.values()) == {expected}, subjects
