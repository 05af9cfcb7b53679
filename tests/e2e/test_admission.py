"""Admission-time injection on the real control plane: kube-apiserver calls ocireg's mutating
webhook over TLS on 127.0.0.1 (a self-signed certificate ocireg made and published in the
MutatingWebhookConfiguration it keeps), and ServiceAccounts are stored with the pull secret
references in their first version; pods created right after their namespace get them from
the ServiceAccount admission plugin. A stopped, hung or killed operator never fails or holds
up a ServiceAccount creation beyond the webhook's timeout."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from ocireg.admission.server import WEBHOOK_NAME
from ocireg.pullsecrets.plan import ANNOTATION_SA_REFS
from ocireg.settings import SYSTEM_NAMESPACES
from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import LOOPBACK, Tools, free_port
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    HELM_KUBE_VERSION,
    apply,
    ca_config_map,
    registry_object,
    secret,
    secret_object,
    wait_for,
)

TIMEOUT = 2  # the webhook's timeoutSeconds in these tests


@dataclass
class Setup:
    cluster: ControlPlane
    core: Any  # kubernetes.client.CoreV1Api as the admin
    credentials: str  # the operator's credentials namespace
    label: str  # namespaces labelled <label>=yes are targets
    pull: str  # the pull secret's name
    registry: str  # the ClusterOCIRegistry's name
    configuration: str  # the MutatingWebhookConfiguration's name
    operator_args: tuple[str, ...]
    made: list[str]  # namespaces to delete at the end

    def namespace(self, selected: bool) -> str:
        """Create a namespace, labelled as a target from its first moment (or not)."""
        name = f"adm-{secrets.token_hex(4)}"
        labels = {self.label: "yes"} if selected else {}
        self.core.create_namespace({"metadata": {"name": name, "labels": labels}})
        self.made.append(name)
        return name

    def create_account(self, namespace: str, name: str, **fields: Any) -> dict[str, Any]:
        """Create a ServiceAccount; the API's answer is its first stored version."""
        body = {"metadata": {"name": name}, **fields}
        created = self.core.create_namespaced_service_account(
            namespace, body, _request_timeout=40, _preload_content=False
        )
        return json.loads(created.data)

    def webhook(self) -> dict[str, Any] | None:
        found = self.cluster.kubectl(
            "get", "mutatingwebhookconfiguration", self.configuration, "-o", "json", check=False
        )
        if found.returncode != 0:
            return None
        hooks = json.loads(found.stdout).get("webhooks") or []
        return next((h for h in hooks if h["name"] == WEBHOOK_NAME), None)


def _refs(account: dict[str, Any]) -> list[str]:
    return [r["name"] for r in account.get("imagePullSecrets") or []]


def _ours(account: dict[str, Any]) -> str | None:
    return ((account.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SA_REFS)


@pytest.fixture
def setup(
    cluster: ControlPlane, crds: None, registries: LocalRegistries, namespace: str
) -> Iterator[Setup]:
    """A ClusterOCIRegistry for namespaces labelled <label>=yes (ServiceAccounts default,
    builder and team-bot), its credentials in `namespace`, and the arguments that run the
    operator with the webhook on 127.0.0.1. Everything is removed at the end."""
    token = secrets.token_hex(3)
    basic = registries.basic
    apply(
        cluster,
        secret_object("creds", namespace, username=basic.username, password=basic.password),
        ca_config_map(namespace, registries.ca_file),
    )
    api = kubernetes.config.new_client_from_config(str(cluster.admin_kubeconfig))
    port = free_port()
    configuration = f"ocireg-e2e-{token}"
    done = Setup(
        cluster=cluster,
        core=kubernetes.client.CoreV1Api(api),
        credentials=namespace,
        label=f"pull-{token}",
        pull=f"pull-{token}",
        registry=f"adm-{token}",
        configuration=configuration,
        operator_args=(
            *ALLOW_LOCAL_REGISTRIES,
            "--credentials-namespace",
            namespace,
            "--admission-webhook",
            f"--admission-address={LOOPBACK}",
            f"--admission-port={port}",
            f"--admission-configuration={configuration}",
            f"--admission-timeout={TIMEOUT}",
        ),
        made=[],
    )
    spec = {
        "server": basic.host,
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {
            "namespaceSelector": {"matchLabels": {done.label: "yes"}},
            "secretName": done.pull,
            "serviceAccounts": ["default", "builder", "team-bot"],
        },
    }
    try:
        apply(cluster, registry_object("ClusterOCIRegistry", done.registry, spec))
        yield done
    finally:
        cluster.kubectl("delete", "clusterociregistry", done.registry, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", configuration, "--ignore-not-found"
        )
        for name in done.made:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        api.close()


def _start(setup: Setup, run_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    """Run the operator with the webhook; return once the registry is verified (the pull
    secret is written into a probe namespace) and the webhook entry points at it."""
    operator = run_operator(*setup.operator_args)
    probe = setup.namespace(selected=True)
    wait_for(lambda: secret(setup.cluster, probe, setup.pull), 60, "the pull secret")
    entry = wait_for(setup.webhook, 30, "the webhook entry in the configuration")
    assert entry["clientConfig"]["url"].startswith(f"https://{LOOPBACK}:")
    return operator


def test_service_accounts_are_created_with_the_pull_secret(setup: Setup, run_operator) -> None:
    operator = _start(setup, run_operator)
    entry = setup.webhook()
    assert entry is not None
    assert entry["failurePolicy"] == "Ignore"
    assert entry["timeoutSeconds"] == TIMEOUT
    assert entry["clientConfig"]["caBundle"]  # ocireg's own self-signed certificate

    # A brand-new namespace: its `default` ServiceAccount, made by the controller-manager,
    # is stored with the reference. The watch starts from a resourceVersion taken before the
    # namespace exists, so its first event is the account as created, not as patched later.
    fresh = f"adm-{secrets.token_hex(4)}"
    since = setup.core.list_namespaced_service_account(fresh).metadata.resource_version
    setup.core.create_namespace({"metadata": {"name": fresh, "labels": {setup.label: "yes"}}})
    setup.made.append(fresh)
    watch = kubernetes.watch.Watch()
    first: dict[str, Any] | None = None
    for event in watch.stream(
        setup.core.list_namespaced_service_account,
        fresh,
        resource_version=since,
        timeout_seconds=60,
    ):
        first = setup.core.api_client.sanitize_for_serialization(event["object"])
        assert event["type"] == "ADDED", event["type"]
        watch.stop()
    assert first is not None, "no ServiceAccount appeared in the new namespace"
    assert first["metadata"]["name"] == "default"
    assert _refs(first) == [setup.pull]
    assert _ours(first) == setup.pull

    # A pod created the moment its namespace allows it (a ReplicaSet controller retries
    # the same way until `default` exists) gets the reference from the ServiceAccount
    # admission plugin, which copies the account's imagePullSecrets into the pod.
    rushed = setup.namespace(selected=True)
    pod = {
        "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }
    deadline, attempts = time.monotonic() + 30, 0
    while True:
        attempts += 1
        try:
            created = setup.core.create_namespaced_pod(rushed, pod)
            break
        except ApiException as error:  # "serviceaccount default not found" until it exists
            if error.status not in (403, 404) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    print(f"pod admitted after {attempts} attempt(s)")
    assert [s.name for s in created.spec.image_pull_secrets or []] == [setup.pull]

    # `kubectl create serviceaccount` and friends: the created object carries the reference.
    team = setup.namespace(selected=True)
    builder = setup.create_account(team, "builder")
    assert _refs(builder) == [setup.pull]
    # The team's own entries stay first and untouched.
    bot = setup.create_account(team, "team-bot", imagePullSecrets=[{"name": "teams-own"}])
    assert _refs(bot) == ["teams-own", setup.pull]
    assert _ours(bot) == setup.pull
    # A team that already lists the pull secret keeps one entry, and it stays theirs.
    listed = setup.create_account(
        setup.namespace(selected=True), "builder", imagePullSecrets=[{"name": setup.pull}]
    )
    assert _refs(listed) == [setup.pull]
    assert _ours(listed) is None
    # A ServiceAccount the registry does not target is left alone.
    assert _refs(setup.create_account(team, "unlisted")) == []

    # A namespace the registry does not select: untouched, the default account included.
    other = setup.namespace(selected=False)
    assert _refs(setup.create_account(other, "builder")) == []
    default = wait_for(
        lambda: _get_account(setup, other, "default"), 30, "the default ServiceAccount"
    )
    assert _refs(default) == []
    assert _ours(default) is None

    # The ServiceAccount watch finds nothing left to do: no second write to what the
    # webhook admitted, and the Secret the references name is there.
    time.sleep(3)
    for namespace, account in ((team, builder), (team, bot)):
        now = _get_account(setup, namespace, account["metadata"]["name"])
        assert now is not None
        assert now["metadata"]["resourceVersion"] == account["metadata"]["resourceVersion"]
    wait_for(lambda: secret(setup.cluster, team, setup.pull), 30, "the pull secret in team")
    # Every answer above was a decision, not an error let through.
    assert "admitted unchanged" not in operator.logs()


def test_tenant_registries_and_secrets_owned_by_others(
    setup: Setup, run_operator, registries: LocalRegistries
) -> None:
    operator = _start(setup, run_operator)
    cluster, basic = setup.cluster, registries.basic

    # A namespace holding someone else's Secret under the pull secret's name: the registry
    # leaves it alone (SecretConflict), and the webhook does not point accounts at it.
    taken = setup.namespace(selected=False)
    apply(cluster, secret_object(setup.pull, taken, token="not ours"))
    cluster.kubectl("label", "namespace", taken, f"{setup.label}=yes")
    time.sleep(2)  # the operator has seen the label and tried
    assert _refs(setup.create_account(taken, "builder")) == []
    foreign = secret(cluster, taken, setup.pull)
    assert foreign is not None
    assert foreign["type"] == "Opaque"

    # A tenant's OCIRegistry serves its own namespace only, every account there.
    tenant = setup.namespace(selected=False)
    name = f"tenant-{secrets.token_hex(3)}"
    spec = {
        "server": basic.host,
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": {"configMap": "registry-ca"}},
        "targets": {"serviceAccounts": ["*"]},
    }
    apply(
        cluster,
        secret_object("creds", tenant, username=basic.username, password=basic.password),
        ca_config_map(tenant, registries.ca_file),
        registry_object("OCIRegistry", name, spec, tenant),
    )
    try:
        wait_for(lambda: secret(cluster, tenant, name), 60, "the tenant's pull secret")
        assert _refs(setup.create_account(tenant, "robot")) == [name]
        # Elsewhere only the ClusterOCIRegistry's reference, where it selects the namespace.
        assert _refs(setup.create_account(setup.namespace(selected=False), "robot")) == []
        selected = setup.namespace(selected=True)
        assert _refs(setup.create_account(selected, "builder")) == [setup.pull]
        assert "admitted unchanged" not in operator.logs()
    finally:
        cluster.kubectl("delete", "ociregistry", name, "-n", tenant, "--timeout=30s", check=False)


def _get_account(setup: Setup, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = setup.core.read_namespaced_service_account(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return json.loads(found.data)


def _timed(create: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    created = create()
    return time.monotonic() - started, created


def test_a_hung_killed_or_stopped_operator_never_blocks_service_accounts(
    setup: Setup, run_operator
) -> None:
    operator = _start(setup, run_operator)
    target = setup.namespace(selected=True)
    pid = operator.process.popen.pid  # type: ignore[union-attr]

    # Hung (SIGSTOP): the API server waits out the timeout, then admits the account as it is.
    os.kill(pid, signal.SIGSTOP)
    try:
        took, hung = _timed(lambda: setup.create_account(target, "builder"))
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"created with the webhook hung in {took:.2f}s")
    assert _refs(hung) == []  # unchanged: nobody answered
    assert TIMEOUT - 0.5 <= took < TIMEOUT + 3, took

    # Killed (SIGKILL, no chance to clean up): the entry still points at a closed port;
    # the connection is refused and the account is admitted at once.
    operator.process.popen.kill()  # type: ignore[union-attr]
    operator.process.popen.wait(10)  # type: ignore[union-attr]
    assert setup.webhook() is not None
    took, killed = _timed(lambda: setup.create_account(target, "team-bot"))
    print(f"created with the webhook gone in {took:.2f}s")
    assert _refs(killed) == []
    assert took < 1.5, took

    # A new operator takes over the entry (a new address, a new certificate)...
    second = _start(setup, run_operator)
    served = setup.create_account(setup.namespace(selected=True), "builder")
    assert _refs(served) == [setup.pull]
    # ...and on a clean stop (SIGTERM) takes its entry out again.
    second.stop()
    assert setup.webhook() is None
    took, _ = _timed(lambda: setup.create_account(target, "after-stop"))
    assert took < 1.5, took


# -- installing it ----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"
COMPONENT = ROOT / "manifests" / "admission"


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


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


def test_chart_and_kustomize_component_turn_the_webhook_on(
    tools: Tools, cluster: ControlPlane, tmp_path: Path
) -> None:
    off = _helm_template(tools, "ocireg", "ocireg-system")
    assert not [o for o in off if o["kind"] == "MutatingWebhookConfiguration"]
    assert not [a for a in _container(off)["args"] if a.startswith("--admission")]

    chart = _helm_template(tools, "ocireg", "ocireg-system", "--set", "admission.enabled=true")
    # The same objects and the same operator settings as the kustomize component.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / "manifests", overlay)],
                "components": [os.path.relpath(COMPONENT, overlay)],
            }
        )
    )
    plain = _objects(cluster.kubectl("kustomize", str(overlay)).stdout)
    for objects in (chart, plain):
        configuration = _kind(objects, "MutatingWebhookConfiguration", "ocireg")
        assert "webhooks" not in configuration  # the operator writes its entry
        role = _kind(objects, "ClusterRole", "ocireg-admission")
        assert (
            role["rules"]
            == yaml.safe_load(COMPONENT.joinpath("clusterrole.yaml").read_text())["rules"]
        )
        binding = _kind(objects, "ClusterRoleBinding", "ocireg-admission")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "ocireg", "namespace": "ocireg-system"}
        ]
        container = _container(objects)
        args = [a for a in container["args"] if a.startswith("--admission")]
        assert args[:4] == [
            "--admission-webhook",
            "--admission-port=9443",
            "--admission-host=$(POD_IP)",
            "--admission-configuration=ocireg",
        ]
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_IP"]["valueFrom"] == {
            "fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}
        }
        assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    # The chart passes its timeout and exclusions; the component relies on the same defaults.
    assert [a for a in _container(chart)["args"] if a.startswith("--admission")][4:] == [
        "--admission-timeout=3",
        *(f"--admission-exclude-namespace={n}" for n in SYSTEM_NAMESPACES),
    ]
    # Values are checked before anything is rendered.
    bad = subprocess.run(
        [
            tools.path("helm"),
            "template",
            "x",
            str(CHART),
            *HELM_KUBE_VERSION,
            "--set",
            "admission.timeoutSeconds=60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode != 0
    assert "timeoutSeconds" in bad.stderr


def test_operator_as_the_chart_service_account_keeps_its_webhook(
    tools: Tools,
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    tmp_path: Path,
) -> None:
    """The chart's objects applied for real; the operator runs as the chart's ServiceAccount
    with the chart's arguments (its address moved to loopback): its rights are enough to fill
    in, serve and remove the webhook entry, and no more than that."""
    suffix = secrets.token_hex(3)
    namespace, release = f"adm-rel-{suffix}", f"adm-{suffix}"
    name = f"{release}-ocireg"
    cluster.kubectl("create", "namespace", namespace)
    objects = _helm_template(tools, release, namespace, "--set", "admission.enabled=true")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    cluster.kubectl("apply", "-f", str(rendered))
    cluster_scoped = [
        f"{o['kind'].lower()}/{o['metadata']['name']}"
        for o in objects
        if o["kind"]
        in (
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        )
    ]
    basic = registries.basic
    label, registry = f"pull-{suffix}", f"chart-adm-{suffix}"
    try:
        account = _kind(objects, "ServiceAccount", name)["metadata"]["name"]
        user = f"system:serviceaccount:{namespace}:{account}"

        def can(*args: str) -> bool:
            found = cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
            return found.stdout.strip() == "yes"

        assert can("patch", f"mutatingwebhookconfigurations/{name}")
        assert not can("create", "mutatingwebhookconfigurations")
        assert not can("patch", "mutatingwebhookconfigurations/another")
        assert not can("delete", f"mutatingwebhookconfigurations/{name}")
        assert not can("patch", "validatingwebhookconfigurations")

        apply(
            cluster,
            secret_object("creds", namespace, username=basic.username, password=basic.password),
            ca_config_map(namespace, registries.ca_file),
        )
        container = _container(objects)
        port = free_port()
        args = [
            f"--admission-port={port}" if a.startswith("--admission-port") else a
            for a in container["args"]
            if not a.startswith("--liveness")
        ]
        args = [a.replace("$(POD_IP)", LOOPBACK) for a in args]
        args.append(f"--admission-address={LOOPBACK}")
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        kubeconfig = cluster.kubeconfig_for_service_account(namespace, account)
        operator = run_operator(*args, kubeconfig=kubeconfig, env=env)

        def entry() -> dict[str, Any] | None:
            found = cluster.get_json("mutatingwebhookconfiguration", name)
            return next((w for w in found.get("webhooks") or [] if w["name"] == WEBHOOK_NAME), None)

        written = wait_for(entry, 60, "the operator's webhook entry")
        assert written["clientConfig"]["url"] == f"https://{LOOPBACK}:{port}/pull-secrets"
        assert written["failurePolicy"] == "Ignore"
        assert written["timeoutSeconds"] == 3
        assert written["namespaceSelector"]["matchExpressions"][0]["values"] == sorted(
            SYSTEM_NAMESPACES
        )

        spec = {
            "server": basic.host,
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "tls": {"caBundleRef": {"configMap": "registry-ca"}},
            "targets": {
                "namespaceSelector": {"matchLabels": {label: "yes"}},
                "serviceAccounts": ["*"],
            },
        }
        apply(cluster, registry_object("ClusterOCIRegistry", registry, spec))
        probe = f"{namespace}-probe"
        cluster.kubectl("create", "namespace", probe)
        cluster.kubectl("label", "namespace", probe, f"{label}=yes")
        wait_for(lambda: secret(cluster, probe, registry), 60, "the pull secret")
        target = f"{namespace}-target"
        apply(
            cluster,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": target, "labels": {label: "yes"}},
            },
        )
        # The create call's answer is the first stored version: the webhook's work.
        created = json.loads(
            cluster.kubectl(
                "create", "serviceaccount", "builder", "-n", target, "-o", "json"
            ).stdout
        )
        assert _refs(created) == [registry]
        assert _ours(created) == registry

        operator.stop()
        assert entry() is None  # removed with nothing but `patch`
        assert "HTTP 403" not in operator.logs()
    finally:
        cluster.kubectl("delete", "clusterociregistry", registry, "--wait=false", check=False)
        cluster.kubectl("delete", *cluster_scoped, "--ignore-not-found", check=False)
        for gone in (namespace, f"{namespace}-probe", f"{namespace}-target"):
            cluster.kubectl("delete", "namespace", gone, "--wait=false", check=False)
