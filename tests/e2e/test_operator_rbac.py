"""What a compromised operator can do with its own identity, on the real API server: the
shipped ClusterRole lets it create ServiceAccount tokens in every namespace and patch its
MutatingWebhookConfiguration, and the ValidatingAdmissionPolicies shipped beside it
(manifests/rbac/token-request-policy.yaml, manifests/admission/webhook-policy.yaml, the chart's
templates/policies.yaml) keep both harmless: a token only for a cloud audience, which the API
server refuses, and a webhook entry that stays ServiceAccount CREATE, failurePolicy Ignore.
Every request here is made as the installed ServiceAccount itself (a TokenRequest token for it
in a kubeconfig), never by impersonation, and the operator installed by the chart still does
AWS web identity end to end with the policy in force."""

from __future__ import annotations

import ast
import base64
import contextlib
import copy
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg.admission.server import WEBHOOK_NAME, webhook_entry
from ocireg.api.credential import Credential
from ocireg.api.names import SEAL_KEY_SECRET
from ocireg.api.spec import Format, RegistrySpec, Targets
from ocireg.charts import publish
from ocireg.providers import seal
from ocireg.pullsecrets import plan
from ocireg.settings import SYSTEM_NAMESPACES
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import Tools
from ocireg_devenv.registries import LocalRegistries
from ocireg_devenv.standins import AwsStandIn

from .helpers import (
    HELM_KUBE_VERSION,
    apply,
    ca_config_map,
    registry_object,
    secret,
    wait_for,
    wait_for_reason,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"
MANIFESTS = ROOT / "manifests"
CLUSTER_SCOPED = (
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)
TOKEN_POLICY_REFUSAL = (
    "ocireg may request ServiceAccount tokens only for the audiences "
    "sts.amazonaws.com, api://AzureADTokenExchange"
)
MOTO_PASSWORD = "123456789012-auth-token"  # moto's ECR answer for its default account


@dataclass
class Install:
    namespace: str
    service_account: str
    objects: list[dict[str, Any]]
    kubeconfig: Path  # a token of the installed ServiceAccount: acting as the operator

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def named(self, kind: str) -> list[str]:
        return [o["metadata"]["name"] for o in self.objects if o["kind"] == kind]


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _helm_template(tools: Tools, release: str, namespace: str, *values: str) -> list[dict]:
    result = subprocess.run(
        [
            tools.path("helm"),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            *HELM_KUBE_VERSION,
            *values,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return _objects(result.stdout)


def _install(
    cluster: ControlPlane, objects: list[dict[str, Any]], namespace: str, path: Path
) -> Iterator[Install]:
    path.write_text(yaml.safe_dump_all(objects))
    cluster.kubectl("apply", "-f", str(path))
    (account,) = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"]
    try:
        yield Install(
            namespace,
            account,
            objects,
            cluster.kubeconfig_for_service_account(namespace, account),
        )
    finally:
        scoped = [
            f"{o['kind'].lower()}/{o['metadata']['name']}"
            for o in objects
            if o["kind"] in CLUSTER_SCOPED
        ]
        cluster.kubectl("delete", *scoped, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def chart(
    tools: Tools, cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Install]:
    """The chart with its defaults and the admission webhook on, applied for real in a fresh
    release namespace (the policies, the ClusterRoles, the empty webhook configuration)."""
    suffix = secrets.token_hex(3)
    namespace, release = f"rbac-rel-{suffix}", f"rbac-{suffix}"
    cluster.kubectl("create", "namespace", namespace)
    objects = _helm_template(tools, release, namespace, "--set", "admission.enabled=true")
    try:
        yield from _install(cluster, objects, namespace, tmp_path_factory.mktemp("chart") / "c")
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def kustomize(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    """`kubectl apply -k manifests/`'s identity and policies (ServiceAccount ocireg in
    ocireg-system, its ClusterRole and binding, the token policy), without the Deployment."""
    wanted = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    wanted |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    rendered = _objects(cluster.kubectl("kustomize", str(MANIFESTS)).stdout)
    objects = [o for o in rendered if o["kind"] in wanted]
    path = tmp_path_factory.mktemp("kustomize") / "k"
    try:
        yield from _install(cluster, objects, "ocireg-system", path)
    finally:
        cluster.kubectl(
            "delete", "serviceaccount", "ocireg", "-n", "ocireg-system", "--ignore-not-found"
        )


@pytest.fixture
def cluster_admin_account(cluster: ControlPlane, namespace: str) -> Iterator[str]:
    """A ServiceAccount bound to cluster-admin: what a stolen operator identity would want
    to become."""
    cluster.kubectl("create", "serviceaccount", "root", "-n", namespace)
    binding = f"{namespace}-root"
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:root",
    )
    yield "root"
    cluster.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _token_as(install: Install, cluster: ControlPlane, namespace: str, account: str, *flags: str):
    return cluster.kubectl(
        "create", "token", account, "-n", namespace, *flags, kubeconfig=install.kubeconfig,
        check=False,
    )  # fmt: skip


def _api_with(cluster: ControlPlane, token: str, where: Path, *args: str):
    """kubectl with nothing but this bearer token (no client certificate)."""
    kubeconfig = cluster.write_kubeconfig(where, "bearer", token=token)
    return cluster.kubectl(*args, kubeconfig=kubeconfig, check=False)


# -- TokenRequests --------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["chart", "kustomize"])
def test_the_operator_cannot_mint_a_token_the_api_server_accepts(
    cluster: ControlPlane,
    crds: None,
    request: pytest.FixtureRequest,
    source: str,
    namespace: str,
    cluster_admin_account: str,
    tmp_path: Path,
) -> None:
    install: Install = request.getfixturevalue(source)
    root = cluster_admin_account
    # RBAC alone would let it: the rule web identity needs covers every account.
    can = cluster.kubectl(
        "auth", "can-i", "create", "serviceaccounts", "--subresource=token", "-n", namespace,
        f"--as={install.user}",
    )  # fmt: skip
    assert can.stdout.strip() == "yes"

    # No audience (the API server's own, filled in by it): refused, saying why. The first
    # request waits for the API server to have loaded the policy just installed.
    def refused() -> str:
        attempt = _token_as(install, cluster, namespace, root, "--duration=10m")
        return attempt.stderr if attempt.returncode != 0 else ""

    denial = wait_for(refused, 30, f"a token for {namespace}/{root} to be refused")
    assert TOKEN_POLICY_REFUSAL in denial, denial
    assert "https://kubernetes.default.svc.cluster.local" in denial  # what it asked for
    policy = next(p for p in install.named("ValidatingAdmissionPolicy") if "token" in p)
    assert f"ValidatingAdmissionPolicy '{policy}'" in denial, denial
    # The API server's audience named outright, or beside a cloud one: refused too.
    issuer = "--audience=https://kubernetes.default.svc.cluster.local"
    for flags in ([issuer], ["--audience=sts.amazonaws.com", issuer]):
        attempt = _token_as(install, cluster, namespace, root, "--duration=10m", *flags)
        assert attempt.returncode != 0, flags
        assert TOKEN_POLICY_REFUSAL in attempt.stderr, attempt.stderr
    # A cloud audience for longer than the operator needs: refused.
    long = _token_as(install, cluster, namespace, root, "--audience=sts.amazonaws.com")
    assert long.returncode != 0
    assert "for at most 600 seconds, not 3600" in long.stderr, long.stderr

    # What web identity needs is allowed: a cloud audience, ten minutes...
    minted = _token_as(
        install, cluster, namespace, root, "--audience=sts.amazonaws.com", "--duration=10m"
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    claims = _claims(token)
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["sub"] == f"system:serviceaccount:{namespace}:{root}"
    assert claims["exp"] - claims["iat"] == 600
    # (Azure workload identity's audience too.)
    azure = _token_as(
        install, cluster, namespace, root, "--audience=api://AzureADTokenExchange",
        "--duration=10m",
    )  # fmt: skip
    assert azure.returncode == 0, azure.stderr
    assert _claims(azure.stdout.strip())["aud"] == ["api://AzureADTokenExchange"]
    # ...and useless against the API server, although the account is cluster-admin.
    used = _api_with(cluster, token, tmp_path / "cloud.kubeconfig", "get", "namespaces")
    assert used.returncode != 0
    assert "Unauthorized" in used.stderr, used.stderr
    # The same account's token for the API server (minted by an admin, whom the policy does
    # not concern) works: the 401 above is the audience, nothing else.
    admin_minted = cluster.kubectl("create", "token", root, "-n", namespace, "--duration=10m")
    works = _api_with(
        cluster, admin_minted.stdout.strip(), tmp_path / "api.kubeconfig", "get", "namespaces"
    )
    assert works.returncode == 0, works.stderr
    # The operator's own namespace is no exception.
    own = _token_as(install, cluster, install.namespace, install.service_account, "--duration=1h")
    assert own.returncode != 0
    assert TOKEN_POLICY_REFUSAL in own.stderr


def _literal(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its constant variables read as values: the chart writes its lists as
    JSON, the manifests in CEL's own quotes."""
    spec = copy.deepcopy(spec)
    for variable in spec.get("variables", []):
        with contextlib.suppress(ValueError, SyntaxError):
            variable["expression"] = ast.literal_eval(variable["expression"])
    return spec


def test_chart_and_kustomize_ship_the_same_policies(
    tools: Tools, cluster: ControlPlane, tmp_path: Path
) -> None:
    chart = _helm_template(tools, "ocireg", "ocireg-system", "--set", "admission.enabled=true")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, tmp_path)],
        "components": [os.path.relpath(MANIFESTS / "admission", tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    plain = _objects(cluster.kubectl("kustomize", str(tmp_path)).stdout)
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        ours = {o["metadata"]["name"]: _literal(o["spec"]) for o in plain if o["kind"] == kind}
        theirs = {o["metadata"]["name"]: _literal(o["spec"]) for o in chart if o["kind"] == kind}
        assert sorted(ours) == [
            "ocireg-own-objects",
            "ocireg-service-accounts",
            "ocireg-token-requests",
            "ocireg-webhook-configuration",
        ]
        assert ours == theirs, kind

    # docs/install.md's overlay for another namespace: every policy names the moved account.
    (example,) = [
        block
        for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs/install.md").read_text(), re.S)
        if block.startswith("# my-overlay/kustomization.yaml\n")
    ]
    overlay_dir = tmp_path / "my-overlay"
    overlay_dir.mkdir()
    (overlay_dir / "kustomization.yaml").write_text(
        example.replace("../manifests", os.path.relpath(MANIFESTS, overlay_dir))
    )
    moved = _objects(cluster.kubectl("kustomize", str(overlay_dir)).stdout)
    (binding,) = [o for o in moved if o["kind"] == "ClusterRoleBinding"]
    (subject,) = binding["subjects"]
    user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    assert subject["namespace"] == "platform-ocireg"
    conditions = [
        o["spec"]["matchConditions"][0]["expression"]
        for o in moved
        if o["kind"] == "ValidatingAdmissionPolicy"
    ]
    assert len(conditions) == 3, conditions
    assert conditions == [f"request.userInfo.username == '{user}'"] * 3

    # Other values reach the policies: a release elsewhere, another account, other audiences.
    other = _helm_template(
        tools, "corp", "platform",
        "--set", "serviceAccount.name=registry-operator",
        "--set", "rbac.policies.tokenAudiences={sts.amazonaws.com.cn}",
        "--set", "rbac.policies.tokenMaxExpirationSeconds=900",
        "--set", "admission.enabled=true",
        "--set", "admission.timeoutSeconds=5",
        "--set", "admission.excludeNamespaces={kube-system}",
    )  # fmt: skip
    policies = {o["metadata"]["name"]: o["spec"] for o in other if o["kind"].endswith("Policy")}
    tokens, hooks = (
        policies["corp-ocireg-token-requests"],
        policies["corp-ocireg-webhook-configuration"],
    )
    for spec in (tokens, hooks):
        assert spec["matchConditions"][0]["expression"] == (
            "request.userInfo.username == 'system:serviceaccount:platform:registry-operator'"
        )
    assert {v["name"]: v["expression"] for v in tokens["variables"]} == {
        "audiences": '["sts.amazonaws.com.cn"]',
        "maxExpirationSeconds": "900",
    }
    hook_variables = {v["name"]: v["expression"] for v in hooks["variables"]}
    assert hook_variables["maxTimeoutSeconds"] == "5"
    assert hook_variables["excludedNamespaces"] == '["kube-system"]'
    # Off, for a cluster without ValidatingAdmissionPolicy; nothing else changes.
    off = _helm_template(tools, "x", "y", "--set", "rbac.policies.enabled=false")
    assert not [o for o in off if o["kind"].startswith("ValidatingAdmissionPolicy")]


# -- Secrets and ConfigMaps ------------------------------------------------------------------


OURS = {"app.kubernetes.io/managed-by": "ocireg"}
# The labels the code writes on every object (ownership.RegistryRef.labels).
FULL = {**OURS, plan.LABEL_REGISTRY: "x", plan.LABEL_KIND: "ClusterOCIRegistry",
        plan.LABEL_UID: "00000000-0000-0000-0000-000000000001"}  # fmt: skip


class _Index:
    """What desired_config_map reads of a chart index."""

    content_digest = "d"

    def text(self, generated: str) -> str:
        return f"apiVersion: v1\ngenerated: {generated}\n"


@pytest.mark.parametrize("source", ["chart", "kustomize"])
def test_the_operator_writes_only_its_own_secrets_and_config_maps(
    cluster: ControlPlane,
    crds: None,
    request: pytest.FixtureRequest,
    source: str,
    namespace: str,
    cluster_admin_account: str,
) -> None:
    install: Install = request.getfixturevalue(source)

    def as_operator(*args: str, body: dict[str, Any] | None = None):
        text = None if body is None else json.dumps(body)
        return cluster.kubectl(*args, kubeconfig=install.kubeconfig, input=text, check=False)

    def obj(kind: str, name: str, labels: dict[str, str], **fields: Any) -> dict[str, Any]:
        meta = {"name": name, "namespace": namespace, "labels": labels}
        return {"apiVersion": "v1", "kind": kind, "metadata": meta, **fields}

    # A legacy token Secret: the token controller would fill in a token for the cluster-admin
    # account that the API server accepts, no TokenRequest needed. Refused, even labelled.
    legacy = obj("Secret", "root-token", {}, type="kubernetes.io/service-account-token")
    legacy["metadata"]["annotations"] = {
        "kubernetes.io/service-account.name": cluster_admin_account
    }

    def refused() -> str:
        attempt = as_operator("create", "-f", "-", body=legacy)
        if attempt.returncode == 0:  # the policy not loaded yet (or missing): try again
            cluster.kubectl("delete", "secret", "root-token", "-n", namespace)
            return ""
        return attempt.stderr

    denial = wait_for(refused, 30, "a service-account-token Secret to be refused")
    assert "may write only Secrets and ConfigMaps labelled" in denial, denial
    assert "ValidatingAdmissionPolicy" in denial
    legacy["metadata"]["labels"] = dict(FULL)
    typed = as_operator("create", "-f", "-", body=legacy)
    assert typed.returncode != 0
    assert "may not write Secrets of type kubernetes.io/service-account-token" in typed.stderr
    assert cluster.kubectl("get", "secret", "root-token", "-n", namespace, check=False).returncode

    # Someone else's objects (EKS's aws-auth maps IAM roles to groups such as system:masters):
    # not changed, not taken over by adding our label, not deleted.
    foreign = [
        obj("ConfigMap", "aws-auth", {}, data={"mapRoles": "[]"}),
        obj("Secret", "app-credentials", {}, stringData={"password": "app"}),
    ]
    apply(cluster, *foreign)
    for original in foreign:
        kind, name = original["kind"].lower(), original["metadata"]["name"]
        live = cluster.get_json(kind, name, "-n", namespace)
        changed = copy.deepcopy(live)
        if kind == "configmap":
            changed["data"] = {
                "mapRoles": "- rolearn: arn:aws:iam::1:role/x\n  groups: [system:masters]"
            }
        else:
            changed["data"] = {"password": base64.b64encode(b"replaced").decode()}
        taken = copy.deepcopy(changed)
        taken["metadata"]["labels"] = dict(FULL)
        for attempt, message in (
            (changed, "may write only Secrets and ConfigMaps labelled"),
            (taken, "may change or delete only the Secrets and ConfigMaps it wrote"),
        ):
            replaced = as_operator("replace", "-f", "-", body=attempt)
            assert replaced.returncode != 0, f"{kind} {name} replaced"
            assert message in replaced.stderr, replaced.stderr
        deleted = as_operator("delete", kind, name, "-n", namespace)
        assert deleted.returncode != 0, f"{kind} {name} deleted"
        assert "may change or delete only" in deleted.stderr, deleted.stderr
        after = cluster.get_json(kind, name, "-n", namespace)
        assert after["data"] == live["data"]
        assert after["metadata"].get("labels") == live["metadata"].get("labels")

    # Names that do not exist yet, labelled as ours: still not what the code writes. EKS's
    # aws-auth and AKS's coredns-custom are not chart indexes; an Argo CD Secret is only ever
    # Helm OCI repository credentials (no git repository, no cluster, no TLS or proxy
    # setting); a Secret without the registry's kind and uid labels is not one the operator
    # writes.
    full = dict(FULL)
    argo = {**full, "argocd.argoproj.io/secret-type": "repository"}
    invented = {
        "aws-auth": (
            obj("ConfigMap", "aws-auth-new", full, data={"mapRoles": "[]"}),
            "may write only chart index ConfigMaps",
        ),
        "coredns-custom": (
            obj("ConfigMap", "coredns-custom", {**full, publish.LABEL_CHARTS: "index"},
                data={"index.yaml": "x", "evil.server": "."}),
            "may write only chart index ConfigMaps",
        ),
        "a charts ConfigMap with a second key": (
            obj("ConfigMap", "x-charts", {**full, publish.LABEL_CHARTS: "index"},
                data={"index.yaml": "x", "other": "y"}),
            "may write only chart index ConfigMaps",
        ),
        "an Argo CD git repository Secret": (
            obj("Secret", "repo-evil", argo, type="Opaque",
                stringData={"url": "https://git.example", "password": "x"}),
            "may write only Argo CD repository credentials for Helm OCI repositories",
        ),
        "an Argo CD cluster Secret": (
            obj("Secret", "cluster-evil", {**full, "argocd.argoproj.io/secret-type": "cluster"},
                type="Opaque", stringData={"type": "helm", "enableOCI": "true",
                                           "url": "r.example", "password": "x"}),
            "may write only Argo CD repository credentials for Helm OCI repositories",
        ),
        "an Argo CD Helm OCI Secret skipping TLS verification": (
            obj("Secret", "insecure-evil", argo, type="Opaque",
                stringData={"type": "helm", "enableOCI": "true", "url": "r.example",
                            "password": "x", "insecure": "true"}),
            "may write only Argo CD repository credentials for Helm OCI repositories",
        ),
        "an Argo CD label on a pull secret": (
            obj("Secret", "pull-evil", argo, type="kubernetes.io/dockerconfigjson",
                stringData={".dockerconfigjson": '{"auths": {}}'}),
            "may write only Argo CD repository credentials for Helm OCI repositories",
        ),
        "a Secret without the uid label": (
            obj("Secret", "pull-nouid", {**OURS, plan.LABEL_KIND: "OCIRegistry"},
                type="kubernetes.io/dockerconfigjson",
                stringData={".dockerconfigjson": '{"auths": {}}'}),
            "with the registry's name, kind and uid",
        ),
    }  # fmt: skip
    for what, (body, message) in invented.items():
        attempt = as_operator("create", "-f", "-", body=body)
        assert attempt.returncode != 0, f"{what}: created"
        assert message in attempt.stderr, (what, attempt.stderr)

    # Its own key (providers/seal.py), exactly as seal.key_secret makes it: created; never
    # updated or deleted (it carries no registry labels); nothing shaped otherwise under that
    # name (another key, a label, not immutable) is allowed either.
    key = seal.key_secret(namespace)
    for what, change in {
        "a second data key": lambda b: b["data"].update(url="eA=="),
        "another label": lambda b: b["metadata"]["labels"].update(
            {"argocd.argoproj.io/secret-type": "repository"}
        ),
        "not immutable": lambda b: b.update(immutable=False),
        "another name": lambda b: b["metadata"].update(name="ocireg-seal-key-2"),
    }.items():
        shaped = copy.deepcopy(key)
        change(shaped)
        attempt = as_operator("create", "-f", "-", body=shaped)
        assert attempt.returncode != 0, f"a seal key with {what}: created"
    made = as_operator("create", "-f", "-", body=key)
    assert made.returncode == 0, made.stderr
    live = cluster.get_json("secret", SEAL_KEY_SECRET, "-n", namespace)
    live["metadata"]["annotations"] = {"x": "y"}
    assert as_operator("replace", "-f", "-", body=live).returncode != 0
    refused = as_operator("delete", "secret", SEAL_KEY_SECRET, "-n", namespace)
    assert refused.returncode != 0
    assert "may change or delete only" in refused.stderr, refused.stderr

    # Its own, exactly as the code writes them (plan.desired_secrets in every format,
    # publish.desired_config_map): created, updated, deleted.
    ref = plan.RegistryRef("OCIRegistry", "corp", namespace, "00000000-0000-0000-0000-000000000002")
    credential = Credential("basic", ("registry.example.com",), "robot", "s3cret")
    mine = [
        s.body()
        for s in plan.desired_secrets(ref, Targets(formats=list(Format)), credential, namespace)
    ]
    for secret_type in ("repo-creds", "repository"):  # and its Argo CD Secrets
        spec = RegistrySpec.model_validate(
            {"server": "registry.example.com", "auth": {"anonymous": {}},
             "targets": {"argoCD": {"secretType": secret_type}, "secretName": secret_type}}
        )  # fmt: skip
        mine += [s.body() for s in plan.argocd_secrets(ref, spec, credential, namespace)]
    mine.append(publish.desired_config_map(ref, namespace, _Index(), "now"))  # type: ignore[arg-type]
    for body in mine:
        body["metadata"].pop("ownerReferences", None)  # no such OCIRegistry object here
        kind, name = body["kind"].lower(), body["metadata"]["name"]
        created = as_operator("create", "-f", "-", body=body)
        assert created.returncode == 0, created.stderr
        live = cluster.get_json(kind, name, "-n", namespace)
        live["metadata"]["annotations"] = {"ocireg.dev/digest": "x"}
        updated = as_operator("replace", "-f", "-", body=live)
        assert updated.returncode == 0, updated.stderr
        deleted = as_operator("delete", kind, name, "-n", namespace)
        assert deleted.returncode == 0, deleted.stderr


@pytest.mark.parametrize("source", ["chart", "kustomize"])
def test_the_operator_changes_only_the_pull_secret_references_of_accounts(
    cluster: ControlPlane,
    crds: None,
    request: pytest.FixtureRequest,
    source: str,
    namespace: str,
) -> None:
    install: Install = request.getfixturevalue(source)
    cluster.kubectl("create", "serviceaccount", "app", "-n", namespace)
    cluster.kubectl(
        "annotate", "serviceaccount", "app", "-n", namespace,
        "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/app",
    )  # fmt: skip
    before = cluster.get_json("serviceaccount", "app", "-n", namespace)

    def patch(body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(
            "patch", "serviceaccount", "app", "-n", namespace, "--type=merge",
            "-p", json.dumps(body), kubeconfig=install.kubeconfig, check=False,
        )  # fmt: skip

    another_role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/admin"}
    attempts = {
        "another cloud role": (
            {"metadata": {"annotations": another_role}},
            "may change only the ocireg.dev/ annotations",
        ),
        "no cloud role": (
            {"metadata": {"annotations": {"eks.amazonaws.com/role-arn": None}}},
            "may change only the ocireg.dev/ annotations",
        ),
        "an owner to be garbage-collected with": (
            {"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x",
                 "uid": "00000000-0000-0000-0000-000000000000"}]}},
            "may not change a ServiceAccount's labels, ownerReferences or finalizers",
        ),
        "a finalizer": (
            {"metadata": {"finalizers": ["example.com/hold"]}},
            "may not change a ServiceAccount's labels, ownerReferences or finalizers",
        ),
        "a label": (
            {"metadata": {"labels": {"team": "x"}}},
            "may not change a ServiceAccount's labels, ownerReferences or finalizers",
        ),
        "automountServiceAccountToken": (
            {"automountServiceAccountToken": False},
            "may change only a ServiceAccount's imagePullSecrets",
        ),
    }  # fmt: skip

    def refused() -> str:
        body, _ = attempts["another cloud role"]
        attempt = patch(body)
        if attempt.returncode == 0:  # the policy not loaded yet (or missing): undo, try again
            cluster.kubectl(
                "annotate", "serviceaccount", "app", "-n", namespace, "--overwrite",
                "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/app",
            )  # fmt: skip
            return ""
        return attempt.stderr

    assert attempts["another cloud role"][1] in wait_for(refused, 30, "a role change refused")
    for what, (body, message) in attempts.items():
        attempt = patch(body)
        assert attempt.returncode != 0, f"{what}: allowed"
        assert message in attempt.stderr, (what, attempt.stderr)
    after = cluster.get_json("serviceaccount", "app", "-n", namespace)
    for field in ("annotations", "labels", "ownerReferences", "finalizers"):
        assert after["metadata"].get(field) == before["metadata"].get(field), field
    assert after.get("automountServiceAccountToken") == before.get("automountServiceAccountToken")
    # What the operator does (plan.service_account_patch): its reference and its annotation.
    ours = {
        "metadata": {"annotations": {"ocireg.dev/image-pull-secrets": "pull"}},
        "imagePullSecrets": [{"name": "pull"}],
    }
    added = patch(ours)
    assert added.returncode == 0, added.stderr
    written = cluster.get_json("serviceaccount", "app", "-n", namespace)
    assert written["imagePullSecrets"] == [{"name": "pull"}]
    removed = patch(
        {"metadata": {"annotations": {"ocireg.dev/image-pull-secrets": None}},
         "imagePullSecrets": None}
    )  # fmt: skip
    assert removed.returncode == 0, removed.stderr


# -- the webhook configuration ---------------------------------------------------------------


def _configuration(cluster: ControlPlane, install: Install) -> dict[str, Any]:
    (name,) = install.named("MutatingWebhookConfiguration")
    return cluster.get_json("mutatingwebhookconfiguration", name)


def _patch_as_operator(
    cluster: ControlPlane, install: Install, webhooks: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    (name,) = install.named("MutatingWebhookConfiguration")
    return cluster.kubectl(
        "patch", "mutatingwebhookconfiguration", name, "--type=merge",
        "-p", json.dumps({"webhooks": webhooks}), kubeconfig=install.kubeconfig, check=False,
    )  # fmt: skip


def _widened(entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
    widened = copy.deepcopy(entry)
    widened.update(changes)
    return widened


def test_the_operator_cannot_widen_its_webhook(cluster: ControlPlane, chart: Install) -> None:
    # What the operator writes (admission.webhook_entry), aimed at nothing: a closed port, and
    # an objectSelector no ServiceAccount carries, so no other test's requests are sent there.
    entry = webhook_entry("https://127.0.0.1:1/pull-secrets", None, 3, SYSTEM_NAMESPACES)
    assert entry["name"] == WEBHOOK_NAME
    entry["objectSelector"] = {"matchLabels": {"ocireg-test": "never"}}
    written = _patch_as_operator(cluster, chart, [entry])
    assert written.returncode == 0, written.stderr
    (stored,) = _configuration(cluster, chart)["webhooks"]
    try:
        rule = entry["rules"][0]
        attempts = {
            "secrets": (
                _widened(entry, rules=[{**rule, "resources": ["secrets"]}]),
                "may only see ServiceAccount CREATE requests",
            ),
            "pods, created and updated": (
                _widened(
                    entry,
                    rules=[{**rule, "resources": ["pods"], "operations": ["CREATE", "UPDATE"]}],
                ),
                "may only see ServiceAccount CREATE requests",
            ),
            "every resource": (
                _widened(entry, rules=[{**rule, "apiGroups": ["*"], "resources": ["*"]}]),
                "may only see ServiceAccount CREATE requests",
            ),
            "a second rule": (
                _widened(entry, rules=[rule, {**rule, "resources": ["secrets"]}]),
                "may only see ServiceAccount CREATE requests",
            ),
            "ServiceAccount updates": (
                _widened(entry, rules=[{**rule, "operations": ["CREATE", "UPDATE"]}]),
                "may only see ServiceAccount CREATE requests",
            ),
            "failurePolicy Fail": (
                _widened(entry, failurePolicy="Fail"),
                "must keep failurePolicy Ignore",
            ),
            "a 30 s timeout": (
                _widened(entry, timeoutSeconds=30),
                "may wait at most 3 seconds",
            ),
            "kube-system included": (
                _widened(entry, namespaceSelector={}),
                "must keep excluding the namespaces kube-system, kube-public, kube-node-lease",
            ),
            "another entry": (
                _widened(entry, name="secrets.attacker.example"),
                "may write only its own webhook entry",
            ),
        }
        for what, (webhook, message) in attempts.items():
            refused = _patch_as_operator(cluster, chart, [webhook])
            assert refused.returncode != 0, f"{what}: allowed"
            assert message in refused.stderr, (what, refused.stderr)
            assert "ValidatingAdmissionPolicy" in refused.stderr, (what, refused.stderr)
            # Nothing changed.
            assert _configuration(cluster, chart)["webhooks"] == [stored], what
        # Narrowing is the operator's business: a shorter timeout, and removing its entry (as
        # it does on a clean stop).
        shorter = _patch_as_operator(cluster, chart, [_widened(entry, timeoutSeconds=1)])
        assert shorter.returncode == 0, shorter.stderr
    finally:
        removed = _patch_as_operator(cluster, chart, [])
    assert removed.returncode == 0, removed.stderr
    assert not _configuration(cluster, chart).get("webhooks")


# -- the operator itself, with the policy in force -----------------------------------------


def test_the_chart_operator_still_does_aws_web_identity(
    cluster: ControlPlane,
    crds: None,
    chart: Install,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    """The operator as the chart's ServiceAccount, with the chart's arguments (the webhook
    aside): a ClusterOCIRegistry whose ECR identity is a ServiceAccount's web identity token
    becomes Ready, the token going to STS with audience sts.amazonaws.com. When the policy is
    narrowed so that audience is no longer allowed, the next object says Forbidden."""
    basic = registries.basic
    registries.set_user("basic", "AWS", MOTO_PASSWORD)
    cluster.kubectl("create", "serviceaccount", "puller", "-n", namespace)
    cluster.kubectl("create", "serviceaccount", "later", "-n", namespace)
    apply(cluster, ca_config_map(chart.namespace, registries.ca_file))
    (deployment,) = [o for o in chart.objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith(("--liveness", "--admission"))]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["OCIREG_CREDENTIALS_NAMESPACE"] == chart.namespace
    aws = AwsStandIn().start()
    names = [f"wi-{secrets.token_hex(3)}", f"wi-{secrets.token_hex(3)}"]
    policy = next(p for p in chart.named("ValidatingAdmissionPolicy") if "token" in p)
    try:
        env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "eu-west-1"}
        operator = run_operator(
            *args, "--aws-endpoint-url", aws.url, kubeconfig=chart.kubeconfig, env=env
        )

        def web_identity(name: str, account: str) -> dict[str, Any]:
            auth = {
                "ecr": {
                    "regions": ["eu-west-1"],
                    "roleArn": "arn:aws:iam::123456789012:role/puller",
                    "credentials": {"serviceAccountRef": {"name": account, "namespace": namespace}},
                }
            }
            spec = {
                "server": basic.host,
                "auth": auth,
                "tls": {"caBundleRef": {"configMap": "registry-ca"}},
                "targets": {"namespaces": [namespace], "secretName": name},
            }
            return registry_object("ClusterOCIRegistry", name, spec)

        apply(cluster, web_identity(names[0], "puller"))
        wait_for_reason(cluster, "ClusterOCIRegistry", names[0], "Ready", timeout=60)
        assert aws.calls["AssumeRoleWithWebIdentity"] == 1
        claims = _claims(aws.web_identity_tokens[-1])  # minted by the API server, as the operator
        assert claims["aud"] == ["sts.amazonaws.com"]
        assert claims["sub"] == f"system:serviceaccount:{namespace}:puller"
        assert claims["exp"] - claims["iat"] == 600
        written = secret(cluster, namespace, names[0])
        assert written is not None
        config = json.loads(base64.b64decode(written["data"][".dockerconfigjson"]))
        assert config["auths"][basic.host]["username"] == "AWS"

        # The platform team narrows the policy to Azure only: AWS web identity is refused by
        # the API server, and the object says so (no crash, no retry storm).
        cluster.kubectl(
            "patch", "validatingadmissionpolicy", policy, "--type=json", "-p",
            json.dumps([{"op": "replace", "path": "/spec/variables/0/expression",
                         "value": "['api://AzureADTokenExchange']"}]),
        )  # fmt: skip
        refused = wait_for(
            lambda: _token_as(
                chart, cluster, namespace, "later", "--audience=sts.amazonaws.com",
                "--duration=10m",
            ).returncode != 0,
            30,
            "the narrowed policy to be in force",
        )  # fmt: skip
        assert refused
        apply(cluster, web_identity(names[1], "later"))
        failed = wait_for_reason(cluster, "ClusterOCIRegistry", names[1], "Forbidden", timeout=60)
        assert failed["status"] == "False"
        assert f"may not request tokens for {namespace}/later" in failed["message"]
        assert aws.calls["AssumeRoleWithWebIdentity"] == 1
        # The first object's Secret is untouched.
        assert secret(cluster, namespace, names[0])["data"] == written["data"]
        assert "Traceback" not in operator.logs()
    finally:
        cluster.kubectl(
            "patch", "validatingadmissionpolicy", policy, "--type=json", "-p",
            json.dumps([{"op": "replace", "path": "/spec/variables/0/expression",
                         "value": "['sts.amazonaws.com', 'api://AzureADTokenExchange']"}]),
            check=False,
        )  # fmt: skip
        for name in names:
            cluster.kubectl(
                "delete", "clusterociregistry", name, "--ignore-not-found", "--timeout=60s",
                check=False,
            )  # fmt: skip
        aws.stop()


def test_without_watch_rights_the_operator_refuses_to_start(
    cluster: ControlPlane, crds: None, namespace: str, tmp_path: Path
) -> None:
    """The watch-fed index is the only way targets are written, so an identity that may not
    watch Secrets (an old ClusterRole, a hand-trimmed one) would run and never write a thing.
    The operator asks the API server (SelfSubjectAccessReview) at start and exits saying what
    is missing instead."""
    role = yaml.safe_load((MANIFESTS / "rbac" / "clusterrole.yaml").read_text())
    for rule in role["rules"]:
        if "secrets" in rule["resources"] and rule["apiGroups"] == [""]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "watch"]
    name = f"{namespace}-narrow"
    role["metadata"] = {"name": name}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": namespace}],
    }
    cluster.kubectl("create", "serviceaccount", "narrow", "-n", namespace)
    apply(cluster, role, binding)
    operator = OperatorProcess(
        cluster.kubeconfig_for_service_account(namespace, "narrow"),
        tmp_path,
        ["--credentials-namespace", namespace],
        name="narrow",
    )
    try:
        operator.process.start()
        assert operator.process.popen is not None
        code = wait_for(lambda: operator.process.popen.poll(), 60, "the operator to exit")  # type: ignore[union-attr]
        assert code == 1
        assert "ocireg may not watch secrets cluster-wide" in operator.logs()
    finally:
        operator.stop()
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", name, check=False)
