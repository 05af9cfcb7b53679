"""The ValidatingAdmissionPolicies shipped with the manifests and the chart
(manifests/rbac/token-request-policy.yaml, manifests/admission/webhook-policy.yaml), read as
files: they allow exactly what the operator's code asks for, name the identity the manifests
install, and the chart's values default to the same. Whether the API server enforces them is
tests/e2e/test_operator_rbac.py's job."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ocireg.admission import server as admission
from ocireg.api.credential import Credential
from ocireg.api.names import (
    ARGOCD_SECRET_TYPE,
    ARGOCD_SECRET_TYPES,
    SEAL_KEY_FIELD,
    SEAL_KEY_SECRET,
)
from ocireg.api.spec import Format, RegistrySpec, Targets
from ocireg.charts import publish
from ocireg.providers import acr, ecr, seal
from ocireg.pullsecrets import plan
from ocireg.settings import SYSTEM_NAMESPACES, AdmissionConfig

ROOT = Path(__file__).resolve().parents[2]
CODE = ROOT / "operator" / "ocireg"
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "helm" / "ocireg"
TOKEN_POLICY = MANIFESTS / "rbac" / "token-request-policy.yaml"
OWN_OBJECTS_POLICY = MANIFESTS / "rbac" / "own-objects-policy.yaml"
SERVICE_ACCOUNT_POLICY = MANIFESTS / "rbac" / "service-account-policy.yaml"
WEBHOOK_POLICY = MANIFESTS / "admission" / "webhook-policy.yaml"


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _variables(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy's constant variables as Python values (CEL list, string and int literals
    are Python literals too); expressions that read the request stay strings."""
    found: dict[str, Any] = {}
    for variable in policy["spec"]["variables"]:
        try:
            found[variable["name"]] = ast.literal_eval(variable["expression"])
        except (ValueError, SyntaxError):
            found[variable["name"]] = variable["expression"]
    return found


def _values() -> dict[str, Any]:
    return _load(CHART / "values.yaml")


def _requested_audiences() -> set[str]:
    """Every audience the operator's code passes to service_account_token, resolved from the
    module constant it names (a literal or an unknown name fails the test)."""
    found: set[str] = set()
    for path in sorted((CODE / "providers").glob("*.py")):
        text = path.read_text()
        for argument in re.findall(r"service_account_token\([^,()]+,\s*([^)\s]+)\s*\)", text):
            assert re.fullmatch(r"[A-Z_]+", argument), f"{path.name}: audience {argument!r}"
            constant = re.search(rf'^{argument}\b.*=\s*"([^"]+)"', text, re.M)
            assert constant, f"{path.name}: {argument} is not a module-level string"
            found.add(constant.group(1))
    return found


def test_the_scanner_finds_both_cloud_audiences() -> None:
    # Guards the scan below: an empty result would make the next test pass vacuously.
    assert _requested_audiences() == {ecr.WEB_IDENTITY_AUDIENCE, acr.WORKLOAD_AUDIENCE}


def test_the_token_policy_allows_every_audience_the_code_requests_and_no_more() -> None:
    manifest = _variables(_load(TOKEN_POLICY))["audiences"]
    assert sorted(manifest) == sorted(_requested_audiences())
    assert sorted(_values()["rbac"]["policies"]["tokenAudiences"]) == sorted(manifest)
    # Never an audience the API server accepts (its issuer, the in-cluster names).
    for audience in manifest:
        assert "kubernetes" not in audience, audience


def test_the_token_policy_allows_the_lifetime_the_code_requests() -> None:
    source = (CODE / "kube" / "client.py").read_text()
    requested = {int(n) for n in re.findall(r'"expirationSeconds":\s*(\d+)', source)}
    assert requested == {600}, requested
    limit = _variables(_load(TOKEN_POLICY))["maxExpirationSeconds"]
    assert limit == _values()["rbac"]["policies"]["tokenMaxExpirationSeconds"]
    # At most what the code asks for: no token the operator does not need can be minted.
    assert max(requested) == limit


@pytest.mark.parametrize(
    "path",
    [TOKEN_POLICY, OWN_OBJECTS_POLICY, SERVICE_ACCOUNT_POLICY, WEBHOOK_POLICY],
    ids=lambda p: p.stem,
)
def test_policies_hold_the_installed_identity_and_fail_closed(path: Path) -> None:
    policy = _load(path)
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (condition,) = spec["matchConditions"]
    assert condition["name"] == "requested-by-the-operator"
    # kustomize fills in the account as an overlay leaves it (test_install_overlay.py renders
    # it); the chart puts in its release's.
    assert condition["expression"] == (
        "request.userInfo.username == "
        "'system:serviceaccount:$(OCIREG_NAMESPACE):$(OCIREG_SERVICE_ACCOUNT)'"
    )
    # Every validation refuses with a message of its own (a bare "failed expression" tells
    # the operator's user nothing).
    for validation in spec["validations"]:
        assert validation.get("message") or validation.get("messageExpression"), validation
        assert validation["reason"] == "Forbidden"
    binding_path = path.with_name(f"{path.stem}-binding.yaml")
    binding = _load(binding_path)
    assert binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_the_token_policy_matches_token_requests_only() -> None:
    (rule,) = _load(TOKEN_POLICY)["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["serviceaccounts/token"]
    assert rule["operations"] == ["CREATE"]
    assert rule["apiGroups"] == [""]


def test_the_webhook_policy_allows_what_the_operator_writes() -> None:
    policy = _load(WEBHOOK_POLICY)
    variables = _variables(policy)
    entry = admission.webhook_entry(
        "https://10.0.0.1:9443/pull-secrets", "Q0E=", 3, SYSTEM_NAMESPACES
    )
    text = "\n".join(v["expression"] for v in policy["spec"]["validations"])
    assert f"w.name == '{entry['name']}'" in text
    (rule,) = entry["rules"]
    for field in ("operations", "apiGroups", "apiVersions", "resources"):
        literal = "[" + ", ".join(f"'{v}'" for v in rule[field]) + "]"
        assert f"r.{field} == {literal}" in text, field
    assert f"w.failurePolicy == '{entry['failurePolicy']}'" in text
    assert variables["maxTimeoutSeconds"] == AdmissionConfig().timeout_seconds
    assert entry["timeoutSeconds"] <= variables["maxTimeoutSeconds"]
    (excluded,) = entry["namespaceSelector"]["matchExpressions"]
    assert f"e.key == '{excluded['key']}'" in text
    assert f"e.operator == '{excluded['operator']}'" in text
    assert sorted(variables["excludedNamespaces"]) == sorted(excluded["values"])
    # The chart's defaults are the operator's defaults, which the policy allows.
    values = _values()["admission"]
    assert values["timeoutSeconds"] == variables["maxTimeoutSeconds"]
    assert sorted(values["excludeNamespaces"]) == sorted(variables["excludedNamespaces"])


class _Index:
    """What desired_config_map reads of a chart index."""

    content_digest = "d"

    def text(self, generated: str) -> str:
        return f"generated: {generated}\n"


def test_the_own_objects_policy_allows_every_object_the_operator_writes() -> None:
    """The policy's constants are what the code writes, no more: every Secret type and its
    data keys, the owner labels, the chart index ConfigMap's name, label and one key."""
    policy = _load(OWN_OBJECTS_POLICY)
    variables = _variables(policy)
    text = "\n".join(
        [v["expression"] for v in policy["spec"]["variables"]]
        + [v["expression"] for v in policy["spec"]["validations"]]
    )
    credential = Credential("basic", ("registry.example.com",), "robot", "s3cret")
    targets = Targets(formats=list(Format))
    keys: dict[str, set[str]] = {}
    config_maps: list[dict[str, Any]] = []
    for ref in (
        plan.RegistryRef("ClusterOCIRegistry", "shared", uid="u1"),
        plan.RegistryRef("OCIRegistry", "mine", namespace="team-a", uid="u2"),
    ):
        for secret in plan.desired_secrets(ref, targets, credential, "team-a"):
            body = secret.body()
            keys.setdefault(body["type"], set()).update(body["data"])
            labels = body["metadata"]["labels"]
            assert set(labels) == set(plan.OWNER_LABELS), labels  # managed-by, name, kind, uid
            assert labels[plan.LABEL_KIND] in variables["registryKinds"]
        config_maps.append(publish.desired_config_map(ref, "team-a", _Index(), "now"))  # type: ignore[arg-type]
    # Every type the code writes, each with exactly the keys it writes.
    assert keys == {k: set(v) for k, v in variables["secretKeys"].items()}
    assert sorted(variables["secretTypes"]) == sorted(keys)
    assert "kubernetes.io/service-account-token" not in keys
    assert sorted(variables["registryKinds"]) == sorted(["ClusterOCIRegistry", "OCIRegistry"])
    for label in plan.OWNER_LABELS:
        assert f"'{label}'" in variables["newIsOurs"], label
    assert f"== optional.of('{plan.MANAGER}')" in variables["newIsOurs"]
    for body in config_maps:
        meta = body["metadata"]
        assert meta["name"].endswith(variables["chartsSuffix"])
        assert meta["name"] == publish.config_map_name(meta["labels"][plan.LABEL_REGISTRY])
        assert list(body["data"]) == [variables["chartsKey"]] == [publish.INDEX_KEY]
        assert "binaryData" not in body
        assert meta["labels"][publish.LABEL_CHARTS] == "index"
        assert f"[?'{publish.LABEL_CHARTS}'] == optional.of('index')" in text
        assert {k for k in meta["labels"] if k != publish.LABEL_CHARTS} == set(plan.OWNER_LABELS)
    # A long registry name is hashed but keeps the suffix the policy requires.
    assert publish.config_map_name("x" * 300).endswith(variables["chartsSuffix"])


def test_the_own_objects_policy_allows_the_seal_key_exactly_as_the_operator_makes_it() -> None:
    """One more Secret than the pull secrets: the operator's key (providers/seal.py), as
    seal.key_secret makes it: the policy's name, type, one data key, labels, no annotations,
    immutable; created only (no registry labels: never updated or deleted)."""
    policy = _load(OWN_OBJECTS_POLICY)
    variables = _variables(policy)
    body = seal.key_secret("ocireg-system")
    meta = body["metadata"]
    assert meta["name"] == variables["sealKeyName"] == SEAL_KEY_SECRET
    assert list(body["data"]) == [variables["sealKeyField"]] == [SEAL_KEY_FIELD]
    assert meta["labels"] == variables["sealKeyLabels"]
    assert body["type"] == "Opaque"
    assert body["immutable"] is True
    assert "annotations" not in meta
    assert plan.MANAGED_BY not in meta["labels"]  # not ours to update or delete, not indexed
    rule = variables["isSealKey"]
    for term in (
        "request.operation == 'CREATE'",
        "object.immutable",
        "object.data.size() == 1",
        "variables.newLabels == variables.sealKeyLabels",
        "!has(object.metadata.annotations)",
    ):
        assert term in rule, term


def test_the_operator_changes_what_the_service_account_policy_allows() -> None:
    policy = _load(SERVICE_ACCOUNT_POLICY)
    (annotations, *_) = (v["expression"] for v in policy["spec"]["validations"])
    assert "k.startsWith('ocireg.dev/')" in annotations
    account = {
        "metadata": {
            "name": "default",
            "resourceVersion": "7",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/app"},
        },
        "imagePullSecrets": [{"name": "theirs"}],
    }
    added = plan.service_account_patch(account, "ours", want=True)
    assert added is not None
    # A merge patch of imagePullSecrets and ocireg.dev/ annotations, nothing else.
    assert set(added) == {"metadata", "imagePullSecrets"}
    assert set(added["metadata"]) == {"resourceVersion", "annotations"}
    assert all(key.startswith("ocireg.dev/") for key in added["metadata"]["annotations"])
    account["imagePullSecrets"] = added["imagePullSecrets"]
    account["metadata"]["annotations"].update(added["metadata"]["annotations"])
    removed = plan.service_account_patch(account, "ours", want=False)
    assert removed is not None
    assert set(removed) == {"metadata", "imagePullSecrets"}
    assert all(key.startswith("ocireg.dev/") for key in removed["metadata"]["annotations"])


def test_the_policies_are_installed_by_the_manifests() -> None:
    base = _load(MANIFESTS / "kustomization.yaml")["resources"]
    for name in ("token-request-policy", "own-objects-policy", "service-account-policy"):
        assert f"rbac/{name}.yaml" in base
        assert f"rbac/{name}-binding.yaml" in base
    component = _load(MANIFESTS / "admission" / "kustomization.yaml")["resources"]
    assert "webhook-policy.yaml" in component
    assert "webhook-policy-binding.yaml" in component
    assert _values()["rbac"]["policies"]["enabled"] is True


def _schema() -> dict[str, Any]:
    import json

    return json.loads((CHART / "values.schema.json").read_text())


@pytest.mark.parametrize(
    "policies",
    [
        {"tokenAudiences": []},
        {"tokenAudiences": ["sts.amazonaws.com", "sts.amazonaws.com"]},
        {"tokenAudiences": ["x', 'https://kubernetes.default.svc"]},  # into the CEL list
        {"tokenAudiences": ['a"b']},
        {"tokenMaxExpirationSeconds": 599},  # below the API server's minimum
        {"tokenMaxExpirationSeconds": 864000},
        {"tokenMaxExpirationSeconds": "600"},
        {"enable": False},
    ],
)
def test_schema_rejects_policy_mistakes(policies: dict[str, Any]) -> None:
    values = copy.deepcopy(_values())
    values["rbac"]["policies"].update(policies)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def test_schema_accepts_other_cloud_audiences() -> None:
    values = copy.deepcopy(_values())
    values["rbac"]["policies"].update(
        {"tokenAudiences": ["sts.amazonaws.com", "sts.amazonaws.com.cn"]},
        tokenMaxExpirationSeconds=3600,
    )
    jsonschema.validate(values, _schema())


def test_the_own_objects_policy_allows_the_argocd_secrets_exactly_as_the_operator_writes_them() -> (
    None
):
    """plan.argocd_secrets writes the Argo CD secret types and data keys the policy lists, of
    type Opaque, with type helm and enableOCI true (what its validation requires), and the
    policy's validation names the label Argo CD lists them by."""
    policy = _load(OWN_OBJECTS_POLICY)
    variables = _variables(policy)
    validations = "\n".join(v["expression"] for v in policy["spec"]["validations"])
    credential = Credential("basic", ("registry.example.com",), "robot", "s3cret")
    seen_types: set[str] = set()
    for secret_type in variables["argoCDTypes"]:
        spec = RegistrySpec.model_validate(
            {
                "server": "registry.example.com",
                "auth": {"anonymous": {}},
                "targets": {"argoCD": {"secretType": secret_type}},
            }
        )
        ref = plan.RegistryRef("ClusterOCIRegistry", "shared", uid="u1")
        (secret,) = plan.argocd_secrets(ref, spec, credential, "argocd")
        body = secret.body()
        assert body["type"] == "Opaque"
        assert sorted(body["data"]) == sorted(variables["argoCDKeys"])
        assert body["data"]["type"] == variables["argoCDHelm"] == "aGVsbQ=="  # helm
        assert body["data"]["enableOCI"] == variables["argoCDTrue"] == "dHJ1ZQ=="  # true
        labels = body["metadata"]["labels"]
        seen_types.add(labels[ARGOCD_SECRET_TYPE])
        assert set(labels) == {*plan.OWNER_LABELS, ARGOCD_SECRET_TYPE}
    assert seen_types == set(variables["argoCDTypes"]) == set(ARGOCD_SECRET_TYPES)
    assert "cluster" not in seen_types
    assert f"'{ARGOCD_SECRET_TYPE}' in variables.newLabels" in variables["isArgoCD"]
    # Secret data reaches a policy base64-encoded (b'helm' would never match).
    assert "object.data[?'type'] == optional.of(variables.argoCDHelm)" in validations
    assert "object.data[?'enableOCI'] == optional.of(variables.argoCDTrue)" in validations
