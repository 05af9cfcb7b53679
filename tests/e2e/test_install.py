"""Installing ocireg on the real control plane: the chart lints and renders, its manifests and
the kustomize ones apply (server dry run, then for real), the operator runs as the chart's
ServiceAccount through the core scenarios (so the RBAC is enough), that identity can do
nothing the design does not need (so it is not too much), and every product sample applies."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.processes import Tools
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    HELM_KUBE_VERSION,
    apply,
    condition,
    events_for,
    pull_secret_refs,
    registry_object,
    secret,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"
MANIFESTS = ROOT / "manifests"
SAMPLES = MANIFESTS / "samples"
PRODUCTS = ("cycle", "spectro-cloud", "chainloop", "devtron", "boring-registry")
# Every value the chart takes, set to something other than its default.
FULL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.corp.example/ocireg", "tag": "9.9.9"},
    "imagePullSecrets": ["corp-pull"],
    "watchNamespaces": ["team-a", "team-b"],
    "credentialsNamespace": "platform-creds",
    "allowTenantAmbientIdentity": True,
    "webhook": {"allowedCIDRs": ["10.20.0.0/16", "192.168.1.0/24"]},
    "metrics": {"enabled": True, "port": 9102},
    "logFormat": "plain",
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
    "serviceAccount": {
        "create": True,
        "name": "registry-operator",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ocireg"},
    },
    "podLabels": {"azure.workload.identity/use": "true"},
    "podAnnotations": {"team": "platform"},
    "resources": {
        "requests": {"cpu": "100m", "memory": "200Mi"},
        "limits": {"cpu": "2", "memory": "400Mi"},
    },
    "priorityClassName": "system-cluster-critical",
    "replicas": 3,
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
}


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def _helm(tools: Tools, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([tools.path("helm"), *args])


def _render(
    tools: Tools, release: str, namespace: str, values: Path | None = None, *extra: str
) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace, *HELM_KUBE_VERSION, *extra]
    if values is not None:
        args += ["--values", str(values)]
    result = _helm(tools, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _kustomize(cluster: ControlPlane) -> list[dict[str, Any]]:
    rendered = cluster.kubectl("kustomize", str(MANIFESTS)).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _manifest_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((MANIFESTS / "rbac" / "clusterrole.yaml").read_text())["rules"]


# -- the chart, without a cluster ---------------------------------------------------------


def test_chart_lints_clean_and_renders_every_value(tools: Tools, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(FULL_VALUES))
    for extra in ([], ["--values", str(values)]):
        result = _helm(tools, "lint", "--strict", str(CHART), *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout
        assert "[WARNING]" not in result.stdout
        assert "[ERROR]" not in result.stdout

    defaults = _render(tools, "ocireg", "ocireg-system")
    assert sorted(o["kind"] for o in defaults) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        *["ValidatingAdmissionPolicy"] * 3,
        *["ValidatingAdmissionPolicyBinding"] * 3,
    ]
    assert _one(defaults, "ClusterRole")["rules"] == _manifest_rules()
    env = {e["name"]: e.get("value") for e in _container(defaults)["env"]}
    assert env == {
        "OCIREG_LOG_FORMAT": "json",
        "OCIREG_CREDENTIALS_NAMESPACE": "ocireg-system",
        "OCIREG_LEADER_ELECTION_NAMESPACE": "ocireg-system",
        "OCIREG_LEADER_ELECTION_ID": "ocireg-leader",
        "OCIREG_ALLOW_TENANT_AMBIENT_IDENTITY": "false",
    }
    # One process without the election, and never two unelected ones.
    single = _render(
        tools,
        "ocireg",
        "ocireg-system",
        None,
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicas=1",
    )
    assert "--leader-elect" not in _container(single)["args"]
    assert _one(single, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not [o for o in single if o["kind"] in ("Role", "RoleBinding")]
    unelected = _helm(
        tools,
        "template",
        "x",
        str(CHART),
        *HELM_KUBE_VERSION,
        "--set",
        "leaderElection.enabled=false",
    )
    assert unelected.returncode != 0
    assert "replicas > 1 needs leaderElection.enabled" in unelected.stderr

    full = _render(tools, "corp", "platform", values)
    pod = _one(full, "Deployment")["spec"]["template"]
    container = _container(full)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {
        "OCIREG_LOG_FORMAT": "plain",
        "OCIREG_CREDENTIALS_NAMESPACE": "platform-creds",
        "OCIREG_LEADER_ELECTION_NAMESPACE": "platform",
        "OCIREG_LEADER_ELECTION_ID": "corp-ocireg-leader",
        "OCIREG_NAMESPACES": "team-a,team-b",
        "OCIREG_ALLOW_TENANT_AMBIENT_IDENTITY": "true",
        "OCIREG_WEBHOOK_ALLOWED_CIDRS": "10.20.0.0/16,192.168.1.0/24",
        "OCIREG_METRICS_PORT": "9102",
        "OCIREG_METRICS_ADDRESS": None,  # the pod's IP (test_install_network.py)
        "HTTPS_PROXY": "http://proxy.corp:3128",
    }
    assert container["image"] == "registry.corp.example/ocireg:9.9.9"
    assert _one(full, "Deployment")["spec"]["replicas"] == 3
    assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in container["ports"]
    assert container["resources"] == FULL_VALUES["resources"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9102"
    assert pod["spec"]["serviceAccountName"] == "registry-operator"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "corp-pull"}]
    account = _one(full, "ServiceAccount")
    assert account["metadata"]["annotations"] == FULL_VALUES["serviceAccount"]["annotations"]
    binding = _one(full, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "registry-operator", "namespace": "platform"}
    ]

    # A mistake in the values stops the install before anything reaches a cluster.
    bad = _helm(
        tools, "template", "x", str(CHART), *HELM_KUBE_VERSION, "--set", "watchNamespace[0]=team-a"
    )
    assert bad.returncode != 0
    assert "watchNamespace" in bad.stderr
    # The CRDs ship in the chart's crds/ (installed first, kept on uninstall).
    with_crds = _render(tools, "ocireg", "ocireg-system", None, "--include-crds")
    crds = sorted(
        o["metadata"]["name"] for o in with_crds if o["kind"] == "CustomResourceDefinition"
    )
    assert crds == ["clusterociregistries.ocireg.dev", "ociregistries.ocireg.dev"]


def test_chart_and_plain_manifests_install_the_same_operator(
    tools: Tools, cluster: ControlPlane
) -> None:
    chart = _render(tools, "ocireg", "ocireg-system")
    plain = _kustomize(cluster)
    assert _one(plain, "ClusterRole")["rules"] == _one(chart, "ClusterRole")["rules"]
    assert _one(plain, "Role")["rules"] == _one(chart, "Role")["rules"]
    ours, theirs = _container(plain), _container(chart)
    for key in ("args", "ports", "livenessProbe", "readinessProbe", "resources", "securityContext"):
        assert ours[key] == theirs[key], key
    assert ours["image"] == theirs["image"]
    assert _one(plain, "PodDisruptionBudget")["spec"] | {"selector": None} == _one(
        chart, "PodDisruptionBudget"
    )["spec"] | {"selector": None}
    for objects in (plain, chart):
        spec = _one(objects, "Deployment")["spec"]
        assert spec["replicas"] == 2
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
        assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


# -- applying to the real API server -------------------------------------------------------


def test_kubectl_apply_k_manifests(cluster: ControlPlane, crds: None) -> None:
    # A server-side dry run of namespaced objects needs their namespace to exist (as
    # docs/install.md says), so that goes first.
    cluster.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"))
    dry = cluster.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server", check=False)
    assert dry.returncode == 0, dry.stderr
    assert "deployment.apps/ocireg created (server dry run)" in dry.stdout
    try:
        cluster.kubectl("apply", "-k", str(MANIFESTS))
        deployment = cluster.get_json("deployment", "ocireg", "-n", "ocireg-system")
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ocireg"
        binding = cluster.get_json("clusterrolebinding", "ocireg")
        assert binding["subjects"][0]["namespace"] == "ocireg-system"
        can = cluster.kubectl(
            "auth",
            "can-i",
            "patch",
            "serviceaccounts",
            "-n",
            "kube-system",
            "--as=system:serviceaccount:ocireg-system:ocireg",
            check=False,
        )
        assert can.stdout.strip() == "yes"
        # Applying again changes nothing: what a GitOps controller does every few minutes.
        # kubectl says `configured` for the PodDisruptionBudget all the same: its selector's
        # patch strategy is `replace`, so kubectl always sends it; the API server writes
        # nothing (server-side applies and diffs: test_install_gitops.py).
        budget = ("poddisruptionbudget", "ocireg", "-n", "ocireg-system")
        version = cluster.get_json(*budget)["metadata"]["resourceVersion"]
        again = cluster.kubectl("apply", "-k", str(MANIFESTS)).stdout.splitlines()
        changed = [line for line in again if not line.endswith(" unchanged")]
        assert len(again) == 16, again
        assert changed == ["poddisruptionbudget.policy/ocireg configured"], again
        assert cluster.get_json(*budget)["metadata"]["resourceVersion"] == version
    finally:
        # Not `delete -k`: that would delete the CRDs, and with them every test's objects.
        cluster.kubectl(
            "delete",
            "deployment/ocireg",
            "serviceaccount/ocireg",
            "role/ocireg-leader-election",
            "rolebinding/ocireg-leader-election",
            "poddisruptionbudget/ocireg",
            "-n",
            "ocireg-system",
            "--ignore-not-found",
            check=False,
        )
        cluster.kubectl(
            "delete",
            "clusterrolebinding/ocireg",
            "clusterrole/ocireg",
            "validatingadmissionpolicybinding/ocireg-token-requests",
            "validatingadmissionpolicy/ocireg-token-requests",
            "validatingadmissionpolicybinding/ocireg-own-objects",
            "validatingadmissionpolicy/ocireg-own-objects",
            "validatingadmissionpolicybinding/ocireg-service-accounts",
            "validatingadmissionpolicy/ocireg-service-accounts",
            "--ignore-not-found",
        )


@dataclass
class ChartInstall:
    namespace: str
    service_account: str
    objects: list[dict[str, Any]]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture(scope="module")
def chart_install(
    tools: Tools, cluster: ControlPlane, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartInstall]:
    """The chart's rendered manifests (CRDs included), applied with kubectl into a fresh
    release namespace: server dry run first, then for real."""
    suffix = secrets.token_hex(3)
    namespace, release = f"ocireg-rel-{suffix}", f"rel-{suffix}"
    cluster.kubectl("create", "namespace", namespace)
    objects = _render(tools, release, namespace, None, "--include-crds")
    rendered = tmp_path_factory.mktemp("chart") / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", str(rendered), check=False)
    assert dry.returncode == 0, dry.stderr
    cluster.kubectl("apply", "-f", str(rendered))
    cluster_scoped = [
        f"{o['kind'].lower()}/{o['metadata']['name']}"
        for o in objects
        if o["kind"]
        in (
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        )
    ]
    try:
        yield ChartInstall(namespace, _one(objects, "ServiceAccount")["metadata"]["name"], objects)
    finally:
        cluster.kubectl("delete", *cluster_scoped, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _operator_args_and_env(install: ChartInstall) -> tuple[list[str], dict[str, str]]:
    """`ocireg run` as the chart's Deployment runs it (the health endpoint aside, which the
    test harness puts on a free loopback port)."""
    container = _container(install.objects)
    args = [a for a in container["args"] if not a.startswith("--liveness")]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return args, env


def _can(cluster: ControlPlane, install: ChartInstall, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", *args, f"--as={install.user}", check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_operator_as_the_chart_service_account_runs_the_core_scenarios(
    cluster: ControlPlane,
    chart_install: ChartInstall,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    install = chart_install
    registry = registries.basic
    creds_ns = install.namespace
    target, tenant = f"{namespace}-target", f"{namespace}-tenant"
    for extra in (target, tenant):
        cluster.kubectl("create", "namespace", extra)
    cluster.kubectl("label", "namespace", target, "pull=chart")
    ca = registries.ca_file.read_text()
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "login", "namespace": creds_ns},
            "stringData": {"username": registry.username, "password": registry.password},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "registry-ca", "namespace": creds_ns},
            "data": {"ca.crt": ca},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "login", "namespace": tenant},
            "stringData": {"username": registry.username, "password": registry.password},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "registry-ca", "namespace": tenant},
            "data": {"ca.crt": ca},
        },
    )
    args, env = _operator_args_and_env(install)
    assert env["OCIREG_CREDENTIALS_NAMESPACE"] == creds_ns
    kubeconfig = cluster.kubeconfig_for_service_account(install.namespace, install.service_account)
    # The identity really is the ServiceAccount, with only its rights.
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == install.user
    denied = cluster.kubectl("get", "pods", "-A", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    operator = run_operator(*args, *ALLOW_LOCAL_REGISTRIES, kubeconfig=kubeconfig, env=env)

    name = f"chart-{secrets.token_hex(3)}"
    spec = {
        "server": registry.host,
        "auth": {"basic": {"secretRef": {"name": "login"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
    }
    cluster_spec = {
        **spec,
        "targets": {"namespaceSelector": {"matchLabels": {"pull": "chart"}}, "secretName": "pull"},
    }
    tenant_spec = {
        **spec,
        "targets": {"serviceAccounts": ["*"], "formats": ["dockerconfigjson", "env"]},
    }
    try:
        apply(
            cluster,
            registry_object("ClusterOCIRegistry", name, cluster_spec),
            registry_object("OCIRegistry", name, tenant_spec, tenant),
        )
        # ClusterOCIRegistry: pull secret in the selected namespace, its ServiceAccount patched.
        wait_for(lambda: secret(cluster, target, "pull"), 30, "the pull secret")
        wait_for(lambda: pull_secret_refs(cluster, target) == ["pull"], 20, "the reference")
        wait_for(
            lambda: condition(cluster, "ClusterOCIRegistry", name, "Ready").get("status") == "True",
            30,
            "ClusterOCIRegistry Ready=True (status subresource written)",
        )
        # A namespace labelled later (namespaces are watched).
        late = f"{namespace}-late"
        apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": late, "labels": {"pull": "chart"}},
            },
        )
        wait_for(lambda: secret(cluster, late, "pull"), 20, "the pull secret in a new namespace")

        # OCIRegistry: both formats in its own namespace, every ServiceAccount, later ones too.
        wait_for(lambda: secret(cluster, tenant, name), 30, "the tenant's pull secret")
        assert secret(cluster, tenant, f"{name}-env") is not None
        cluster.kubectl("create", "serviceaccount", "builder", "-n", tenant)
        wait_for(
            lambda: pull_secret_refs(cluster, tenant, "builder") == [name],
            20,
            "a ServiceAccount created later (ServiceAccounts are watched)",
        )
        wait_for(
            lambda: (
                condition(cluster, "OCIRegistry", name, "Ready", tenant).get("status") == "True"
            ),
            30,
            "OCIRegistry Ready=True",
        )
        # Events were posted about both: in the tenant's namespace, and for the cluster object
        # in `default` (kube.events: where Kubernetes keeps Events about cluster-scoped objects).
        wait_for(
            lambda: len({e["metadata"]["namespace"] for e in events_for(cluster, name)}) == 2,
            20,
            "Events about both objects",
        )
        assert {e["metadata"]["namespace"] for e in events_for(cluster, name)} == {
            tenant,
            "default",
        }

        # A password change is followed into every copy (Secrets read, updated).
        new_password = secrets.token_urlsafe(18)
        registries.set_password("basic", new_password)
        for where in (creds_ns, tenant):
            cluster.kubectl(
                "patch",
                "secret",
                "login",
                "-n",
                where,
                "--type=merge",
                "-p",
                json.dumps({"stringData": {"password": new_password}}),
            )

        def carries_new_password(where: str, secret_name: str) -> bool:
            found = secret(cluster, where, secret_name) or {}
            data = (found.get("data") or {}).get(".dockerconfigjson", "")
            return new_password in base64.b64decode(data).decode()

        for where, secret_name in ((target, "pull"), (late, "pull"), (tenant, name)):
            wait_for(
                lambda w=where, s=secret_name: carries_new_password(w, s),
                45,
                f"{where}/{secret_name} to carry the new password",
            )
    finally:
        # Deletion: finalizers removed (patch), copies deleted, references removed.
        for args_ in (["clusterociregistry", name], ["ociregistry", name, "-n", tenant]):
            cluster.kubectl("delete", *args_, "--ignore-not-found", "--timeout=60s", check=False)
    for where, secret_name in ((target, "pull"), (tenant, name), (tenant, f"{name}-env")):
        assert secret(cluster, where, secret_name) is None, f"{where}/{secret_name} left behind"
    assert pull_secret_refs(cluster, target) == []
    assert pull_secret_refs(cluster, tenant, "builder") == []
    for kind, args_ in (("clusterociregistry", [name]), ("ociregistry", [name, "-n", tenant])):
        gone = cluster.kubectl("get", kind, *args_, check=False)
        assert gone.returncode != 0, f"{kind} {name} still exists (finalizer not removed?)"

    # Nothing the operator (or kopf for it) tried was refused.
    log = operator.logs()
    for refusal in ("Forbidden", "forbidden", "Not enough permissions", "(403)", "HTTP 403"):
        assert refusal not in log, f"{refusal!r} in the operator log"
    for extra in (target, tenant, late):
        cluster.kubectl("delete", "namespace", extra, "--wait=false", check=False)


@pytest.mark.parametrize(
    ("allowed", "args"),
    [
        # What the design needs.
        (True, ("get", "secrets", "-n", "any-team")),
        (True, ("list", "secrets", "--all-namespaces")),
        (True, ("watch", "secrets", "--all-namespaces")),  # ours only, by label selector
        (True, ("create", "secrets", "-n", "any-team")),
        (True, ("update", "secrets", "-n", "any-team")),
        (True, ("delete", "secrets", "-n", "any-team")),
        (True, ("patch", "serviceaccounts", "-n", "any-team")),
        (True, ("watch", "serviceaccounts", "--all-namespaces")),
        (True, ("create", "serviceaccounts", "--subresource=token", "-n", "any-team")),
        (True, ("watch", "namespaces")),
        (True, ("create", "events", "-n", "any-team")),
        (True, ("patch", "events", "-n", "any-team")),  # a repeated Event is counted
        (True, ("patch", "clusterociregistries.ocireg.dev", "--subresource=status")),
        (True, ("watch", "ociregistries.ocireg.dev", "--all-namespaces")),
        (True, ("get", "configmaps", "-n", "any-team")),
        (True, ("watch", "configmaps", "--all-namespaces")),  # metadata only: CA bundles
        # What it must not be able to do.
        (False, ("patch", "secrets", "-n", "any-team")),
        (False, ("create", "serviceaccounts", "-n", "any-team")),
        (False, ("update", "serviceaccounts", "-n", "any-team")),
        (False, ("delete", "serviceaccounts", "-n", "any-team")),
        (False, ("delete", "namespaces")),
        (False, ("patch", "namespaces")),
        (False, ("create", "pods", "-n", "any-team")),
        (False, ("create", "pods", "--subresource=exec", "-n", "any-team")),
        (False, ("create", "deployments.apps", "-n", "any-team")),
        (False, ("create", "ociregistries.ocireg.dev", "-n", "any-team")),
        (False, ("delete", "clusterociregistries.ocireg.dev")),
        (False, ("update", "ociregistries.ocireg.dev", "-n", "any-team")),
        (False, ("patch", "customresourcedefinitions.apiextensions.k8s.io")),
        (False, ("delete", "customresourcedefinitions.apiextensions.k8s.io")),
        (False, ("create", "clusterroles.rbac.authorization.k8s.io")),
        (False, ("create", "clusterrolebindings.rbac.authorization.k8s.io")),
        (False, ("escalate", "clusterroles.rbac.authorization.k8s.io")),
        (False, ("bind", "clusterroles.rbac.authorization.k8s.io")),
        (False, ("impersonate", "users")),
        (False, ("impersonate", "serviceaccounts", "-n", "any-team")),
        (False, ("approve", "certificatesigningrequests.certificates.k8s.io")),
        (False, ("get", "nodes")),
        (False, ("*", "*")),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value),
)
def test_the_chart_identity_can_do_what_it_needs_and_nothing_else(
    cluster: ControlPlane, chart_install: ChartInstall, allowed: bool, args: tuple[str, ...]
) -> None:
    assert _can(cluster, chart_install, *args) is allowed


def test_the_chart_identity_holds_only_its_own_lease(
    cluster: ControlPlane, chart_install: ChartInstall
) -> None:
    env = {e["name"]: e.get("value") for e in _container(chart_install.objects)["env"]}
    lease, home = env["OCIREG_LEADER_ELECTION_ID"], chart_install.namespace
    assert home == env["OCIREG_LEADER_ELECTION_NAMESPACE"]
    for verb in ("get", "update"):
        assert _can(cluster, chart_install, verb, f"leases.coordination.k8s.io/{lease}", "-n", home)
        assert not _can(
            cluster, chart_install, verb, "leases.coordination.k8s.io/other", "-n", home
        )
    assert _can(cluster, chart_install, "create", "leases.coordination.k8s.io", "-n", home)
    assert not _can(
        cluster, chart_install, "create", "leases.coordination.k8s.io", "-n", "any-team"
    )
    assert not _can(
        cluster, chart_install, "delete", f"leases.coordination.k8s.io/{lease}", "-n", home
    )


def test_the_chart_identity_holds_no_wildcards(
    cluster: ControlPlane, chart_install: ChartInstall
) -> None:
    listing = cluster.kubectl(
        "auth", "can-i", "--list", "-n", "any-team", f"--as={chart_install.user}"
    ).stdout
    ours = [line for line in listing.splitlines() if "ocireg.dev" in line or "secrets" in line]
    assert ours, listing
    for line in listing.splitlines()[1:]:
        resource, verbs = line.split()[0], line[line.rfind("[") :]
        assert resource not in ("*", "*.*"), line
        assert "*" not in verbs, line


# -- the product samples ------------------------------------------------------------------


def test_there_is_a_sample_for_every_product() -> None:
    assert sorted(p.stem for p in SAMPLES.glob("*.yaml")) == sorted(PRODUCTS)


@pytest.mark.parametrize("product", PRODUCTS)
def test_sample_applies(cluster: ControlPlane, crds: None, namespace: str, product: str) -> None:
    path = SAMPLES / f"{product}.yaml"
    objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    registries_ = [o for o in objects if o["apiVersion"].startswith("ocireg.dev/")]
    assert registries_, f"{path.name} has no registry object"
    # Cluster-wide samples keep Secrets in ocireg-system; tenant samples go in a namespace.
    tenant = any(o["kind"] == "OCIRegistry" for o in registries_)
    where = ["-n", namespace] if tenant else []
    if not tenant:
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ocireg-system"}}
            ),
        )
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), *where, check=False)
    assert dry.returncode == 0, dry.stderr
    try:
        cluster.kubectl("apply", "-f", str(path), *where)
        for obj in registries_:
            kind, name = obj["kind"].lower(), obj["metadata"]["name"]
            stored = cluster.get_json(kind, name, *(where if kind == "ociregistry" else []))
            assert stored["spec"] == _with_defaults(stored["spec"], obj["spec"]), name
    finally:
        cluster.kubectl("delete", "-f", str(path), *where, "--ignore-not-found", check=False)


def _with_defaults(stored: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """What was written, with whatever the API server defaulted on top (so the comparison
    fails only on a field that was dropped or changed)."""
    merged = dict(stored)
    for key, value in written.items():
        if isinstance(value, dict) and isinstance(stored.get(key), dict):
            merged[key] = _with_defaults(stored[key], value)
        else:
            merged[key] = value
    return merged


# -- uninstalling (docs/install.md) --------------------------------------------------------


def test_uninstalling_the_operator_keeps_pull_secrets_and_a_reinstall_finishes_deletion(
    cluster: ControlPlane,
    chart_install: ChartInstall,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
) -> None:
    registry = registries.basic
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "login", "namespace": namespace},
            "stringData": {"username": registry.username, "password": registry.password},
        },
    )
    target = f"{namespace}-target"
    cluster.kubectl("create", "namespace", target)
    args, env = _operator_args_and_env(chart_install)
    env["OCIREG_CREDENTIALS_NAMESPACE"] = namespace
    kubeconfig = cluster.kubeconfig_for_service_account(
        chart_install.namespace, chart_install.service_account
    )
    name = f"uninstall-{secrets.token_hex(3)}"
    spec = {
        "server": registry.host,
        "auth": {"basic": {"secretRef": {"name": "login"}}},
        "tls": {"insecureSkipVerify": True},
        "targets": {"namespaces": [target], "secretName": "pull"},
    }
    first = run_operator(*args, kubeconfig=kubeconfig, env=env)
    apply(cluster, registry_object("ClusterOCIRegistry", name, spec))
    written = wait_for(lambda: secret(cluster, target, "pull"), 30, "the pull secret")
    wait_for(lambda: pull_secret_refs(cluster, target) == ["pull"], 20, "the reference")

    # The operator goes (helm uninstall): its pull secrets and references stay as they were.
    assert first.stop() == 0
    assert secret(cluster, target, "pull")["data"] == written["data"]
    assert pull_secret_refs(cluster, target) == ["pull"]

    # The registry object is deleted without an operator: the finalizer holds it.
    cluster.kubectl("delete", "clusterociregistry", name, "--wait=false")
    held = cluster.get_json("clusterociregistry", name)
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["ocireg.dev/cleanup"]
    assert secret(cluster, target, "pull") is not None

    # Reinstalled, the operator finishes the deletion.
    run_operator(*args, kubeconfig=kubeconfig, env=env)
    wait_for(
        lambda: cluster.kubectl("get", "clusterociregistry", name, check=False).returncode != 0,
        30,
        "the registry object to go",
    )
    assert secret(cluster, target, "pull") is None
    assert pull_secret_refs(cluster, target) == []
    cluster.kubectl("delete", "namespace", target, "--wait=false", check=False)
