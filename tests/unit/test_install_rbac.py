"""The ClusterRole in manifests/rbac/clusterrole.yaml: least privilege, and enough for every
Kubernetes API call the operator's code makes (found by reading the code, so a new call without
a rule fails here before it fails in a cluster)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CODE = ROOT / "operator" / "ocireg"
OURS = ("ociregistries", "clusterociregistries")

# kubernetes-client method prefix -> RBAC verb
VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
    "get": "get",
}
# Calls every authenticated identity may make (the system:basic-user ClusterRole): asking the
# API server what the operator itself may do.
NEEDS_NO_RULE = {"create_self_subject_access_review"}
# kubernetes-client resource part of a CoreV1Api method name -> RBAC resource
RESOURCES = {
    "secret": "secrets",
    "service_account": "serviceaccounts",
    "service_account_token": "serviceaccounts/token",
    "config_map": "configmaps",
    "namespace": "namespaces",
    "secret_metadata": "secrets",
    "event": "events",
}


def _rules() -> list[dict]:
    return yaml.safe_load((ROOT / "manifests/rbac/clusterrole.yaml").read_text())["rules"]


def _allowed(group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in _rules()
    )


def _operator_sources() -> list[Path]:
    # The product package only: the local environment (devenv/) acts as cluster admin.
    return sorted(CODE.rglob("*.py"))


def _api_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) for every call on kube.Kube's core or custom client (a method
    called, or passed to a helper that calls it)."""
    calls: set[tuple[str, str, str]] = set()
    for path in _operator_sources():
        text = path.read_text()
        # Called, or passed to a helper that calls it (kube.client._unless_absent).
        for method in re.findall(r"\bself\.core\.(\w+)\b", text):
            if method in NEEDS_NO_RULE:
                continue
            prefix, _, rest = method.partition("_")
            rest = rest.removeprefix("namespaced_").removesuffix("_for_all_namespaces")
            new = f"{path.name}: CoreV1Api.{method} is new to this test: map it in VERBS / "
            new += "RESOURCES and add its rule to manifests/rbac/clusterrole.yaml"
            assert prefix in VERBS, new
            assert rest in RESOURCES, new
            calls.add(("", RESOURCES[rest], VERBS[prefix]))
        # The watches list and watch through these (kube.WatchSource, and the tables of
        # listers handed to it: `"kind": self.core.list_...`).
        watched = r"WatchSource\(\s*self\.core\.(list_\w+)|\"\w+\": self\.core\.(list_\w+)"
        for method in (a or b for a, b in re.findall(watched, text)):
            rest = method.removeprefix("list_").removeprefix("namespaced_")
            rest = rest.removesuffix("_for_all_namespaces")
            calls.update(("", RESOURCES[rest], verb) for verb in ("list", "watch"))
        for method in re.findall(r"\bself\.custom\.(\w+)\b", text):
            prefix = method.split("_")[0]
            assert prefix in VERBS, f"{path.name}: CustomObjectsApi.{method} is new to this test"
            suffix = "/status" if method.endswith("_status") else ""
            calls.update(("ocireg.dev", plural + suffix, VERBS[prefix]) for plural in OURS)
    return calls


def _kopf_needs() -> set[tuple[str, str, str]]:
    """What kopf does on the operator's behalf for the handlers registered in the code."""
    needs: set[tuple[str, str, str]] = set()
    for path in _operator_sources():
        text = path.read_text()
        for resource in re.findall(r"@kopf\.on\.event\(\"(\w+)\"", text):
            needs.update(("", resource, verb) for verb in ("list", "watch"))
        if re.search(r"@kopf\.(on\.(create|update|resume|delete)|timer)\(GROUP", text):
            for plural in OURS:
                needs.update(("ocireg.dev", plural, verb) for verb in ("list", "watch", "patch"))
                needs.add(("ocireg.dev", f"{plural}/status", "patch"))
        if "kopf.event(" in text:
            needs.add(("", "events", "create"))
    return needs


def test_the_code_calls_what_the_test_expects() -> None:
    # Guards the scanners above: if they found nothing, the next test would pass vacuously.
    calls = _api_calls()
    assert ("", "secrets", "create") in calls
    assert ("", "serviceaccounts", "patch") in calls
    assert ("ocireg.dev", "ociregistries", "get") in calls
    assert ("", "namespaces", "watch") in calls
    assert ("", "secrets", "watch") in calls
    assert ("", "configmaps", "watch") in calls
    assert {("", "events", "create"), ("", "events", "patch")} <= calls  # kube.events


def test_every_api_call_of_the_operator_is_allowed() -> None:
    missing = sorted(need for need in _api_calls() | _kopf_needs() if not _allowed(*need))
    assert not missing, f"add rules to manifests/rbac/clusterrole.yaml for {missing}"


def test_no_wildcards_and_nothing_that_grants_more_rights() -> None:
    for rule in _rules():
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
            assert all("*" not in item for item in rule[field]), rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert "resourceNames" not in rule


@pytest.mark.parametrize(
    ("group", "resource", "verb"),
    [
        ("", "secrets", "patch"),
        ("", "serviceaccounts", "create"),
        ("", "serviceaccounts", "update"),
        ("", "serviceaccounts", "delete"),
        ("", "namespaces", "get"),
        ("", "namespaces", "patch"),
        ("", "namespaces", "delete"),
        ("", "pods", "create"),
        ("", "configmaps", "patch"),
        ("ocireg.dev", "ociregistries", "create"),
        ("ocireg.dev", "clusterociregistries", "delete"),
        ("ocireg.dev", "ociregistries", "update"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "patch"),
        ("rbac.authorization.k8s.io", "clusterroles", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ],
)
def test_what_the_operator_may_not_do(group: str, resource: str, verb: str) -> None:
    assert not _allowed(group, resource, verb)


def test_every_rule_is_explained() -> None:
    # Each rule is preceded by a comment saying which feature needs it.
    text = (ROOT / "manifests/rbac/clusterrole.yaml").read_text()
    body = text.split("rules:\n", 1)[1].splitlines()
    for index, line in enumerate(body):
        if line.startswith("- apiGroups:"):
            assert body[index - 1].startswith("#"), f"rule without a comment: {line}"
