"""The monitoring bundle against its real consumers (docs/install.md#prometheus): the /metrics
text a real `ocireg run` serves passes `promtool check metrics`; the alerting rules, as the
chart renders them and as the kustomize Component has them, pass `promtool check rules`, and
`promtool test rules` fires them on input series made from the series that real run exposed
(a renamed metric or label leaves a rule with nothing to fire on, and the test fails); the
ServiceMonitor and PrometheusRule are accepted by the real kube-apiserver with the
prometheus-operator's own CRDs installed; the dashboard asks only for metrics that exist; and
a real Prometheus scraping two elected replicas finds both up and evaluates every rule.

promtool and Prometheus are Debian's `prometheus` package (tests/cluster/build.sh installs
it); the CRDs come from the prometheus-operator Go module (`go mod download`, cached by Go)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ocireg_devenv.controlplane import ControlPlane
from ocireg_devenv.operator import OperatorProcess
from ocireg_devenv.processes import Process, Tools, free_port, wait_until
from ocireg_devenv.registries import LocalRegistries

from .helpers import (
    ALLOW_LOCAL_REGISTRIES,
    HELM_KUBE_VERSION,
    apply,
    ca_config_map,
    minting_webhook,
    registry_object,
    secret_object,
    wait_for_reason,
    webhook_auth,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ocireg"
MANIFESTS = ROOT / "manifests"
MONITORING = MANIFESTS / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboard.json"
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
CLUSTER, TENANT = "ClusterOCIRegistry", "OCIRegistry"
# What a ServiceMonitor's scrape adds to every series (honorLabels: the series' own win).
TARGET = {"job": "ocireg-metrics", "namespace": "ocireg-system", "service": "ocireg-metrics"}
ALL_ON = {
    "metrics": {
        "enabled": True,
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}

Series = tuple[dict[str, str], float]
Sample = tuple[dict[str, str], float, str]  # labels, value, the sample's own name


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, **kwargs)


def _helm_template(tools: Tools, values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    result = _run(
        [
            tools.path("helm"),
            "template",
            "ocireg",
            str(CHART),
            *HELM_KUBE_VERSION,
            "-n",
            "ocireg-system",
            "-f",
            str(file),
        ]
    )
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def _kustomize(cluster: ControlPlane, tmp_path: Path) -> list[dict[str, Any]]:
    """The base with the three monitoring Components, as a user's overlay builds it."""
    overlay = tmp_path / "overlay"
    overlay.mkdir(exist_ok=True)
    components = [MONITORING, MONITORING / "prometheus-operator", MONITORING / "grafana"]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, overlay)],
        "components": [os.path.relpath(c, overlay) for c in components],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    rendered = cluster.kubectl("kustomize", str(overlay)).stdout
    return [o for o in yaml.safe_load_all(rendered) if o]


def _kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _rule_file(rule: dict[str, Any], path: Path) -> Path:
    """A PrometheusRule's groups as a Prometheus rule file (what the operator hands over)."""
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def promtool(tools: Tools) -> str:
    # No skip: tests/cluster/build.sh installs it, and without it this must fail loudly.
    return tools.path("promtool")


# -- a real run's /metrics --------------------------------------------------------------


@dataclass
class Exposed:
    """What one real `ocireg run` served, with the objects behind it."""

    text: str
    families: dict[str, list[Sample]]  # family name -> its samples
    ready: str  # a ClusterOCIRegistry with expiring (webhook) credentials, Ready
    failing: str  # a ClusterOCIRegistry whose webhook is down: mint errors, not Ready
    conflict: tuple[str, str]  # an OCIRegistry (namespace, name) whose Secret name is taken

    def samples(self, name: str) -> list[Series]:
        return [
            (labels, value)
            for family in self.families.values()
            for labels, value, sample in family
            if sample == name
        ]

    def names(self) -> set[str]:
        return {sample for family in self.families.values() for _, _, sample in family}


@pytest.fixture(scope="module")
def exposed(
    cluster: ControlPlane, crds: None, registries: LocalRegistries, tmp_path_factory
) -> Exposed:
    """Runs the scenario, keeps what was served, and removes everything before any test runs
    (a cluster-wide operator started later would otherwise serve these objects too)."""
    basic = registries.basic
    suffix = secrets.token_hex(3)
    creds, tenant = f"mon-{suffix}", f"mon-{suffix}-t"
    ready, failing = f"mon-{suffix}-hook", f"mon-{suffix}-down"
    for namespace in (creds, tenant):
        cluster.kubectl("create", "namespace", namespace)
    hook = minting_webhook(registries, "monitoring", 3600)
    tls = {"caBundleRef": {"configMap": "registry-ca"}}
    targets = {"namespaces": [tenant]}
    port = free_port()
    operator = OperatorProcess(
        cluster.admin_kubeconfig,
        tmp_path_factory.mktemp("monitoring"),
        [
            "--credentials-namespace", creds, "--metrics-port", str(port),
            *ALLOW_LOCAL_REGISTRIES,
        ],
        name="ocireg-monitoring",
    )  # fmt: skip
    try:
        apply(
            cluster,
            ca_config_map(creds, registries.ca_file),
            ca_config_map(tenant, registries.ca_file),
            secret_object("hook-headers", creds, **{"X-Api-Key": "monitoring"}),
            secret_object("login", tenant, username=basic.username, password=basic.password),
            secret_object("conflict", tenant, mine="not ocireg's"),
        )
        operator.start()
        apply(
            cluster,
            registry_object(
                CLUSTER,
                ready,
                {
                    "server": basic.host,
                    "auth": webhook_auth(hook),
                    "tls": tls,
                    "targets": {**targets, "secretName": "mon-hook"},
                },
            ),
            registry_object(
                CLUSTER,
                failing,
                {
                    "server": basic.host,
                    "auth": webhook_auth(hook, url=f"http://127.0.0.1:{free_port()}/x"),
                    "tls": tls,
                    "targets": {**targets, "secretName": "mon-down"},
                },
            ),
            registry_object(
                TENANT,
                "conflict",
                {
                    "server": basic.host,
                    "auth": {"basic": {"secretRef": {"name": "login"}}},
                    "tls": tls,
                },
                tenant,
            ),
        )
        wait_for_reason(cluster, CLUSTER, ready, "Ready")
        wait_for_reason(cluster, TENANT, "conflict", "SecretConflict", tenant)
        down = wait_for_reason(
            cluster, CLUSTER, failing, "WebhookUnreachable", type_="CredentialsReady", timeout=60
        )
        assert down["status"] == "False"

        # The gauges were set before those statuses were written (pullsecrets/runtime.py).
        answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        answer.raise_for_status()
        text = answer.text
        families = {
            family.name: [(s.labels, s.value, s.name) for s in family.samples]
            for family in text_string_to_metric_families(text)
        }
        result = Exposed(text, families, ready, failing, (tenant, "conflict"))
    finally:
        for kind, name, args in (
            ("clusterociregistry", ready, []),
            ("clusterociregistry", failing, []),
            ("ociregistry", "conflict", ["-n", tenant]),
        ):
            cluster.kubectl("delete", kind, name, *args, "--ignore-not-found", check=False)
        operator.stop()
        hook.stop()
        for namespace in (creds, tenant):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return result


def test_a_real_run_exposes_one_series_per_object_and_passes_promtool(
    exposed: Exposed, promtool: str
) -> None:
    """`promtool check metrics` lints what Prometheus would ingest: names, units, types,
    help texts. Then what the per-object series say, one per object."""
    checked = _run([promtool, "check", "metrics"], input=exposed.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (checked.stdout + checked.stderr).strip() == ""  # no lint problem

    assert "_created" not in exposed.text
    assert exposed.samples("process_resident_memory_bytes")
    assert exposed.samples("ocireg_leader") == [({}, 1.0)]  # no election: it works

    tenant, conflict = exposed.conflict
    ready = (CLUSTER, "", exposed.ready)
    failing = (CLUSTER, "", exposed.failing)
    mine = (TENANT, tenant, conflict)

    def of(name: str) -> dict[tuple[str, str, str], float]:
        """This test's objects' series (the operator also serves what earlier tests of the
        session left in their namespaces while those are being deleted)."""
        found = {}
        for labels, value in exposed.samples(name):
            key = (labels["kind"], labels["namespace"], labels["name"])
            assert key not in found, f"two {name} series for {key}"
            if key in (ready, failing, mine):
                found[key] = value
        return found

    assert of("ocireg_registry_ready") == {ready: 1.0, failing: 0.0, mine: 0.0}
    assert of("ocireg_registry_failed_namespaces") == {ready: 0.0, failing: 0.0, mine: 1.0}
    assert of("ocireg_managed_secrets")[ready] == 1.0
    # An absolute time, about the webhook's 3600 s lifetime from now; only what expires.
    expiration = of("ocireg_credential_expiration_timestamp_seconds")
    assert set(expiration) == {ready}
    assert abs(expiration[ready] - (time.time() + 3600)) < 300
    errors = exposed.samples("ocireg_credential_mint_errors_total")
    assert any(labels["provider"] == "webhook" and value >= 1 for labels, value in errors), errors


# -- the rules -----------------------------------------------------------------------------


def _chart_rules(tools: Tools, tmp_path: Path, values: dict[str, Any] = ALL_ON) -> dict[str, Any]:
    (rule,) = _kind(_helm_template(tools, values, tmp_path), "PrometheusRule")
    return rule


def test_the_rules_pass_promtool_check_rules_as_chart_and_component(
    tools: Tools, cluster: ControlPlane, promtool: str, tmp_path: Path
) -> None:
    chart = _chart_rules(tools, tmp_path)
    (component,) = _kind(_kustomize(cluster, tmp_path), "PrometheusRule")
    assert chart["spec"] == component["spec"]  # one set of rules, whichever way installed
    for name, rule in (("chart", chart), ("component", component)):
        checked = _run([promtool, "check", "rules", str(_rule_file(rule, tmp_path / name))])
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS: 5 rules found" in checked.stdout, checked.stdout

    # The chart's values change what they say they change, and nothing else.
    values = json.loads(json.dumps(ALL_ON))
    values["metrics"]["prometheusRule"].update(
        credentialExpiresWithinSeconds=1800,
        alerts={
            "OciregRegistryNotReady": {"for": "30m", "severity": "critical"},
            "OciregNoLeader": {"enabled": False},
        },
        additionalRuleLabels={"team": "platform"},
        labels={"release": "kube-prometheus-stack"},
    )
    tuned = _chart_rules(tools, tmp_path, values)
    assert tuned["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for r in tuned["spec"]["groups"][0]["rules"]}
    defaults = {r["alert"]: r for r in chart["spec"]["groups"][0]["rules"]}
    assert "OciregNoLeader" not in rules
    assert rules["OciregRegistryNotReady"]["for"] == "30m"
    assert rules["OciregRegistryNotReady"]["labels"] == {"severity": "critical", "team": "platform"}
    assert rules["OciregCredentialExpiresSoon"]["expr"].rstrip().endswith("< 1800")
    assert defaults["OciregCredentialExpiresSoon"]["expr"].rstrip().endswith("< 600")
    for name in ("OciregCredentialMintFailing", "OciregPullSecretWritesFailing"):
        assert rules[name]["expr"] == defaults[name]["expr"]
        assert rules[name]["labels"] == {**defaults[name]["labels"], "team": "platform"}
    checked = _run([promtool, "check", "rules", str(_rule_file(tuned, tmp_path / "tuned"))])
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _series(labels: dict[str, str], name: str) -> str:
    """A promtool input series name: the target's labels under the sample's own (as
    honorLabels: true scrapes it); an empty value is no label, as in Prometheus."""
    merged = {**TARGET, **labels}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(merged.items()) if v)
    return f"{name}{{{inner}}}"


def _alert_labels(labels: dict[str, str], *keep: str, **extra: str) -> dict[str, str]:
    merged = {**TARGET, **labels}
    return {k: merged[k] for k in keep if merged.get(k)} | extra


def _strip_annotations(rule: dict[str, Any]) -> dict[str, Any]:
    stripped = json.loads(json.dumps(rule))
    for group in stripped["spec"]["groups"]:
        for r in group["rules"]:
            r.pop("annotations", None)
    return stripped


def test_the_alerts_fire_on_the_series_a_real_run_exposes(
    tools: Tools, exposed: Exposed, promtool: str, tmp_path: Path
) -> None:
    """`promtool test rules` on the chart's rules: each alert, fed the series (names and
    labels) the real run above exposed, fires for exactly the objects that are in trouble,
    after its `for`, with the labels routing needs."""
    rules = _chart_rules(tools, tmp_path)
    tenant, conflict = exposed.conflict
    object_keys = ("kind", "namespace", "name")

    def by_name(name: str, metric: str) -> dict[str, str]:
        found = [labels for labels, _ in exposed.samples(metric) if labels["name"] == name]
        assert len(found) == 1, f"{metric} for {name}: {found}"
        return found[0]

    ready = by_name(exposed.ready, "ocireg_registry_ready")
    failing = by_name(exposed.failing, "ocireg_registry_ready")
    mine = by_name(conflict, "ocireg_registry_ready")
    input_series = []
    # Ready and failed namespaces: each series held at the value the run exposed, 40 min.
    for metric in ("ocireg_registry_ready", "ocireg_registry_failed_namespaces"):
        for labels, value in exposed.samples(metric):
            input_series.append({"series": _series(labels, metric), "values": f"{value:g}x40"})
    # Expiry: the real series' labels, a time 25 min after the test's clock starts at 0.
    (expiring,) = exposed.samples("ocireg_credential_expiration_timestamp_seconds")
    input_series.append(
        {
            "series": _series(expiring[0], "ocireg_credential_expiration_timestamp_seconds"),
            "values": "1500x40",
        }
    )
    # Mint errors: the real series' labels, one more error a minute.
    (errors, _) = exposed.samples("ocireg_credential_mint_errors_total")[0]
    input_series.append(
        {"series": _series(errors, "ocireg_credential_mint_errors_total"), "values": "1+1x40"}
    )
    # Two replicas: the leader's series ends at 10 min (it died), the standby stays at 0.
    ((leader_labels, _),) = exposed.samples("ocireg_leader")
    for pod, values in (("ocireg-a", "1x10 stale"), ("ocireg-b", "0x40")):
        series = _series({**leader_labels, "pod": pod, "instance": f"{pod}:9090"}, "ocireg_leader")
        input_series.append({"series": series, "values": values})

    warning, critical = {"severity": "warning"}, {"severity": "critical"}
    cases = [
        # Not Ready for 15 min: the two failing objects, never the Ready one.
        ("OciregRegistryNotReady", "10m", []),
        (
            "OciregRegistryNotReady",
            "20m",
            [
                _alert_labels(failing, *object_keys, **warning),
                _alert_labels(mine, *object_keys, **warning),
            ],
        ),
        ("OciregPullSecretWritesFailing", "10m", []),
        ("OciregPullSecretWritesFailing", "20m", [_alert_labels(mine, *object_keys, **warning)]),
        # 1500 - time() < 600 from 15 min on; 1 min pending.
        ("OciregCredentialExpiresSoon", "14m", []),
        ("OciregCredentialExpiresSoon", "20m", [_alert_labels(ready, *object_keys, **critical)]),
        ("OciregCredentialMintFailing", "5m", []),
        (
            "OciregCredentialMintFailing",
            "20m",
            [_alert_labels(errors, "provider", "reason", **warning)],
        ),
        # One replica leads until 10 min (its series then goes stale); none for 5 min after.
        ("OciregNoLeader", "5m", []),
        ("OciregNoLeader", "13m", []),
        ("OciregNoLeader", "20m", [{"namespace": TARGET["namespace"], **critical}]),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": input_series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in exp]}
                for name, at, exp in cases
            ],
        },
        {  # nothing scraped at all: no replica leads
            "interval": "1m",
            "input_series": [{"series": 'up{job="ocireg-metrics"}', "values": "0x20"}],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "OciregNoLeader",
                    "exp_alerts": [{"exp_labels": critical}],
                }
            ],
        },
    ]
    rule_file = _rule_file(_strip_annotations(rules), tmp_path / "rules.yaml")
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": tests}
        )
    )
    result = _run([promtool, "test", "rules", str(test_file)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

    # The annotations as Alertmanager shows them: promtool prints what fired (compared
    # against no annotations, so this run "fails"); every template expands to a text that
    # names the object and what to run.
    rule_file = _rule_file(rules, tmp_path / "rules.yaml")
    result = _run([promtool, "test", "rules", str(test_file)], cwd=tmp_path)
    annotations = _fired_annotations(result.stdout + result.stderr)
    assert len(annotations) == 7, result.stdout  # every alert expected above, once
    for fired in annotations:
        assert set(fired) == {"summary", "description"}, fired
        text = fired["summary"] + fired["description"]
        assert "<no value>" not in text, text
        assert "error expanding" not in text, text  # how Prometheus shows a template error
    shown = "\n".join(a["summary"] + "\n" + a["description"] for a in annotations)
    assert f"{CLUSTER} {exposed.failing}" in shown
    assert f"kubectl describe ociregistry {conflict} -n {tenant}`" in shown
    assert f"kubectl describe clusterociregistry {exposed.failing}" in shown
    assert "its credentials expire in 5m 0s" in shown  # 1500 s - time() at 20 min
    assert "reason" in shown
    assert errors["reason"] in shown


def _fired_annotations(output: str) -> list[dict[str, str]]:
    """The annotations of the alerts promtool says it got, from its failure report."""
    fired = []
    for got in re.findall(r"got:\[\n(.*?)\n\s*\]", output, flags=re.S):
        for block in re.findall(r"^\s*Annotations:\{(.*)\},?$", got, flags=re.M):
            pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', block)
            fired.append({k: json.loads(f'"{v}"') for k, v in pairs})
    return fired


# -- the objects and the dashboard ---------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_operator_crds(cluster: ControlPlane) -> Iterator[None]:
    """The prometheus-operator's ServiceMonitor and PrometheusRule CRDs, from its Go module,
    installed in the test cluster for the duration of this module."""
    found = _run(
        ["go", "mod", "download", "-json", f"{PROMETHEUS_OPERATOR}@{PROMETHEUS_OPERATOR_VERSION}"],
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        cwd=ROOT,
    )
    assert found.returncode == 0, found.stdout + found.stderr
    crds = Path(json.loads(found.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    files = [
        crds / f"monitoring.coreos.com_{k}.yaml" for k in ("servicemonitors", "prometheusrules")
    ]
    for file in files:
        cluster.kubectl("apply", "--server-side", "-f", str(file))
    for name in ("servicemonitors", "prometheusrules"):
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{name}.monitoring.coreos.com",
            "--timeout=60s",
        )
    yield
    for file in files:
        cluster.kubectl(
            "delete", "-f", str(file), "--ignore-not-found", "--wait=false", check=False
        )


def test_the_bundle_is_accepted_by_the_api_server_with_the_operators_crds(
    tools: Tools, cluster: ControlPlane, crds: None, prometheus_operator_crds: None, tmp_path: Path
) -> None:
    """Applied server-side with strict field validation (a field the CRD schema does not know
    is an error, not silently pruned), as a GitOps tool applies them; a second apply changes
    nothing (`kubectl diff` is empty)."""
    chart = _helm_template(tools, ALL_ON, tmp_path)
    plain = _kustomize(cluster, tmp_path)
    namespaces = [f"mon-{secrets.token_hex(3)}" for _ in (chart, plain)]
    try:
        for objects, namespace in zip((chart, plain), namespaces, strict=True):
            cluster.kubectl("create", "namespace", namespace)
            bundle = [
                {**o, "metadata": {**o["metadata"], "namespace": namespace}}
                for o in objects
                if o["kind"] in ("Service", "ServiceMonitor", "PrometheusRule", "ConfigMap")
            ]
            assert sorted(o["kind"] for o in bundle) == [
                "ConfigMap", "PrometheusRule", "Service", "ServiceMonitor",
            ]  # fmt: skip
            document = yaml.safe_dump_all(bundle)
            for _ in range(2):
                applied = cluster.kubectl(
                    "apply", "--server-side", "--field-manager=gitops", "--validate=strict",
                    "-f", "-", input=document, check=False,
                )  # fmt: skip
                assert applied.returncode == 0, applied.stderr
            diff = cluster.kubectl(
                "diff", "--server-side", "--field-manager=gitops", "-f", "-",
                input=document, check=False,
            )  # fmt: skip
            assert diff.returncode == 0, diff.stdout + diff.stderr
            # The Deployment with the metrics port and address patched in (a dry run: no
            # pods for a scheduler-less control plane to leave pending).
            (deployment,) = _kind(objects, "Deployment")
            deployment = {
                **deployment,
                "metadata": {**deployment["metadata"], "namespace": namespace},
            }
            checked = cluster.kubectl(
                "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
                input=yaml.safe_dump(deployment), check=False,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stderr
        namespace = namespaces[0]
        # The check is real: a misspelt field is refused by the CRD's schema.
        (monitor,) = _kind(chart, "ServiceMonitor")
        monitor = json.loads(json.dumps(monitor))
        monitor["metadata"]["namespace"] = namespace
        monitor["spec"]["endpoints"][0]["honourLabels"] = True
        refused = cluster.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-",
            input=yaml.safe_dump(monitor), check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "honourLabels" in refused.stderr
    finally:
        for namespace in namespaces:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_service_and_monitor_select_every_replica_on_its_metrics_port(
    tools: Tools, cluster: ControlPlane, tmp_path: Path
) -> None:
    for objects in (_helm_template(tools, ALL_ON, tmp_path), _kustomize(cluster, tmp_path)):
        (deployment,) = _kind(objects, "Deployment")
        (service,) = _kind(objects, "Service")
        (monitor,) = _kind(objects, "ServiceMonitor")
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        (port,) = service["spec"]["ports"]
        assert port["name"] == "metrics"
        assert port["targetPort"] == "metrics"
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
        env = {e["name"]: e for e in container["env"]}
        assert env["OCIREG_METRICS_PORT"]["value"] == "9090"
        assert env["OCIREG_METRICS_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "metrics"
        assert endpoint["honorLabels"] is True
        (dashboard,) = _kind(objects, "ConfigMap")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["ocireg.json"]) == json.loads(DASHBOARD.read_text())


def test_the_chart_lints_clean_with_every_monitoring_value(tools: Tools, tmp_path: Path) -> None:
    values = {
        "metrics": {
            "enabled": True,
            "port": 9102,
            "serviceMonitor": {
                "enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                "labels": {"release": "kps"},
            },
            "prometheusRule": {
                "enabled": True, "labels": {"release": "kps"},
                "credentialExpiresWithinSeconds": 900,
                "alerts": {"OciregRegistryNotReady": {"for": "30m", "severity": "critical"}},
                "additionalRuleLabels": {"team": "platform"},
            },
            "dashboard": {
                "enabled": True, "namespace": "monitoring",
                "labels": {"grafana_dashboard": "yes"},
                "annotations": {"grafana_folder": "Platform"},
            },
        }
    }  # fmt: skip
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    linted = _run(
        [tools.path("helm"), "lint", "--strict", str(CHART), *HELM_KUBE_VERSION, "-f", str(file)]
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "[WARNING]" not in linted.stdout
    objects = _helm_template(tools, values, tmp_path)
    (monitor,) = _kind(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (service,) = _kind(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 9102
    (dashboard,) = _kind(objects, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Platform"}


def test_the_chart_refuses_a_bundle_without_metrics_and_typos(tools: Tools, tmp_path: Path) -> None:
    for values, says in (
        (
            {"metrics": {"serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor.enabled needs",
        ),
        (
            {"metrics": {"enabled": True, "prometheusRule": {"alerts": {"OciregTypo": {}}}}},
            "OciregTypo",
        ),
        ({"metrics": {"enabled": True, "serviceMonitor": {"intervall": "1m"}}}, "intervall"),
        (
            {
                "metrics": {
                    "enabled": True,
                    "prometheusRule": {"alerts": {"OciregNoLeader": {"for": "5 min"}}},
                }
            },
            "for",
        ),
    ):
        file = tmp_path / "values.yaml"
        file.write_text(yaml.safe_dump(values))
        result = _run(
            [tools.path("helm"), "template", "x", str(CHART), *HELM_KUBE_VERSION, "-f", str(file)]
        )
        assert result.returncode != 0, values
        assert says in result.stderr, result.stderr


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "le", "inf", "nan",
}  # fmt: skip


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return queries


def test_the_dashboard_asks_only_for_metrics_a_real_run_exposes(
    exposed: Exposed, promtool: str, tmp_path: Path
) -> None:
    queries = _dashboard_queries()
    assert len(queries) > 15
    exposed_names = exposed.names()
    asked = set()
    for query in queries:
        # Grafana's variables, as Grafana substitutes them, so promtool can parse the rest.
        query = query.replace("$__rate_interval", "5m").replace("$job", ".+")
        if query.startswith("label_values("):
            asked.add(query.split("(")[1].split(",")[0])
            continue
        without_strings = re.sub(r'"[^"]*"', '""', query)
        without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
        without_groups = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
        for word in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", without_groups):
            if word.lower() not in _PROMQL_WORDS:
                asked.add(word)
    assert asked, queries
    missing = sorted(asked - exposed_names)
    assert not missing, f"the dashboard asks for metrics a real run does not expose: {missing}"

    # Every query parses as PromQL (promtool checks a rule file made of them).
    rules = [
        {
            "record": f"ocireg:dashboard:{i}",
            "expr": q.replace("$__rate_interval", "5m").replace("$job", ".+"),
        }
        for i, q in enumerate(queries)
        if not q.startswith("label_values(")
    ]
    file = tmp_path / "dashboard-rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _run([promtool, "check", "rules", str(file)])
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- a real Prometheus ---------------------------------------------------------------------


def test_a_real_prometheus_scrapes_both_replicas_and_evaluates_the_rules(
    tools: Tools,
    cluster: ControlPlane,
    crds: None,
    registries: LocalRegistries,
    run_operator,
    namespace: str,
    promtool: str,
    tmp_path: Path,
) -> None:
    """Debian's Prometheus (the package promtool comes in) scrapes two `--leader-elect`
    replicas as the ServiceMonitor has it (honor_labels, the target's namespace): both
    targets are up, exactly one says it leads, the per-object series keep the object's own
    namespace (none for a ClusterOCIRegistry), and every rule evaluates without error."""
    basic = registries.basic
    tls = {"caBundleRef": {"configMap": "registry-ca"}}
    apply(
        cluster,
        ca_config_map(namespace, registries.ca_file),
        secret_object("login", namespace, username=basic.username, password=basic.password),
    )
    lease = f"ocireg-leader-{secrets.token_hex(3)}"
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        run_operator(
            "--leader-elect", "--leader-election-id", lease, "--credentials-namespace", namespace,
            "--metrics-port", str(port), *ALLOW_LOCAL_REGISTRIES,
            env={"HOSTNAME": f"replica-{index}"},
        )  # fmt: skip
    cluster_name = f"prom-{namespace[-6:]}"
    auth = {"basic": {"secretRef": {"name": "login"}}}
    apply(
        cluster,
        registry_object(
            CLUSTER,
            cluster_name,
            {
                "server": basic.host,
                "auth": auth,
                "tls": tls,
                "targets": {"namespaces": [namespace]},
            },
        ),
        registry_object(
            TENANT, "tenant", {"server": basic.host, "auth": auth, "tls": tls}, namespace
        ),
    )
    try:
        wait_for_reason(cluster, CLUSTER, cluster_name, "Ready", timeout=60)
        wait_for_reason(cluster, TENANT, "tenant", "Ready", namespace)

        rules = _rule_file(_chart_rules(tools, tmp_path), tmp_path / "rules.yaml")
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "ocireg-metrics",
                    "honor_labels": True,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{p}" for p in ports],
                            "labels": {"namespace": "ocireg-system"},
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        web = free_port()
        prometheus = Process(
            "prometheus",
            [
                tools.path("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            tmp_path / "prometheus.log",
        ).start()
        try:

            def query(expr: str) -> list[dict[str, Any]]:
                answer = requests.get(
                    f"http://127.0.0.1:{web}/api/v1/query", params={"query": expr}, timeout=5
                )
                answer.raise_for_status()
                result: list[dict[str, Any]] = answer.json()["data"]["result"]
                return result

            def values(expr: str) -> dict[str, float]:
                return {
                    json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                    for r in query(expr)
                }

            wait_until(
                lambda: len(values('up{job="ocireg-metrics"} == 1')) == 2,
                60,
                "Prometheus to scrape both replicas",
                prometheus,
            )
            assert sorted(values("ocireg_leader").values()) == [0.0, 1.0]
            ready = {
                (r["metric"].get("kind"), r["metric"].get("namespace"), r["metric"]["name"]): r
                for r in query("ocireg_registry_ready")
            }
            assert (CLUSTER, None, cluster_name) in ready  # no namespace label at all
            assert (TENANT, namespace, "tenant") in ready  # the object's, not the target's
            assert all(r["value"][1] == "1" for r in ready.values())

            def evaluated() -> list[dict[str, Any]]:
                answer = requests.get(f"http://127.0.0.1:{web}/api/v1/rules", timeout=5)
                answer.raise_for_status()
                return [r for g in answer.json()["data"]["groups"] for r in g["rules"]]

            # Inactive once both replicas are scraped (OciregNoLeader is pending until the
            # first scrape: no ocireg_leader yet), and never an evaluation error.
            wait_until(
                lambda: (
                    [(r["health"], r["state"]) for r in evaluated()] == [("ok", "inactive")] * 5
                ),
                30,
                "every rule to evaluate, finding nothing wrong",
                prometheus,
            )
            assert all(not r.get("lastError") for r in evaluated())
        finally:
            prometheus.stop()
    finally:
        cluster.kubectl("delete", "clusterociregistry", cluster_name, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "ociregistry", "tenant", "-n", namespace, "--wait=false", check=False
        )


def test_the_install_notes_say_where_metrics_are_served(
    tools: Tools, cluster: ControlPlane, prometheus_operator_crds: None, tmp_path: Path
) -> None:
    """NOTES.txt said "the operator does not serve metrics yet"; it now says where they are."""
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(ALL_ON))
    installed = _run(
        [
            tools.path("helm"), "install", "ocireg", str(CHART), "-n", "ocireg-system",
            "--dry-run=client", "-f", str(file), "--kubeconfig", str(cluster.admin_kubeconfig),
        ]
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    notes = installed.stdout.split("NOTES:", 1)[1]
    assert "does not serve metrics" not in notes
    assert "every replica serves /metrics on port 9090" in notes
    # A command that works although the endpoint listens on the pod IP only (a
    # port-forward reaches the pod's loopback, where nothing listens).
    (command,) = [line.strip() for line in notes.splitlines() if "kubectl get --raw" in line]
    assert command.endswith("/services/ocireg-metrics:metrics/proxy/metrics")
    assert (
        "Installed for your monitoring stack: a ServiceMonitor, a PrometheusRule (ocireg's "
        "alerts), a Grafana dashboard ConfigMap in namespace ocireg-system." in notes
    )
