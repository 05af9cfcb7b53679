"""Admission-time injection without a cluster: which references a new ServiceAccount gets,
the webhook entry ocireg writes, its certificate, and the CLI settings.
tests/e2e/test_admission.py has the real API server call the webhook."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
import ssl
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import kopf
import pytest
import yaml
from cryptography import x509
from kubernetes.client.exceptions import ApiException

from ocireg.admission import server as admission
from ocireg.admission.server import Candidate, account_fields, secret_is_ours, wanted
from ocireg.api.spec import Format, LabelSelector, Targets
from ocireg.cli import build_parser, config_from_args
from ocireg.pullsecrets.plan import ANNOTATION_SA_REFS, RegistryRef
from ocireg.settings import SYSTEM_NAMESPACES, AdmissionConfig, OperatorConfig

SHARED = RegistryRef("ClusterOCIRegistry", "shared", uid="u1")
OTHER = RegistryRef("ClusterOCIRegistry", "other", uid="u2")
TENANT = RegistryRef("OCIRegistry", "mine", namespace="team-a", uid="u3")
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - a certificate name, nothing listens here
BY_LABEL = Targets(namespace_selector=LabelSelector(match_labels={"pull": "yes"}))


def _names(found: list[tuple[Candidate, str]]) -> list[str]:
    return [name for _, name in found]


# -- which references -------------------------------------------------------------------------


def test_a_registry_selecting_the_namespace_by_label_adds_its_secret() -> None:
    candidates = [Candidate(SHARED, BY_LABEL, placed=False)]
    assert _names(wanted(candidates, "new", {"pull": "yes"}, "default")) == ["shared"]
    assert wanted(candidates, "new", {"pull": "no"}, "default") == []
    assert wanted(candidates, "new", {}, "default") == []


def test_only_the_selected_service_accounts() -> None:
    default_only = [Candidate(SHARED, BY_LABEL, placed=True)]
    assert wanted(default_only, "ns", {"pull": "yes"}, "builder") == []
    every = Targets(namespaces=["ns"], service_accounts=["*"], secret_name="pull")
    found = wanted([Candidate(SHARED, every, True)], "ns", {}, "builder")
    assert _names(found) == ["pull"]
    none = Targets(namespaces=["ns"], service_accounts=[])
    assert wanted([Candidate(SHARED, none, True)], "ns", {}, "default") == []
    # No dockerconfigjson Secret, nothing to refer to.
    env_only = Targets(namespaces=["ns"], formats=[Format.env])
    assert wanted([Candidate(SHARED, env_only, True)], "ns", {}, "x") == []


def test_excluded_or_terminating_namespaces_get_nothing() -> None:
    targets = Targets(namespaces=["team-*"], exclude_namespaces=["team-secret"])
    candidates = [Candidate(SHARED, targets, placed=False)]
    assert _names(wanted(candidates, "team-b", {}, "default")) == ["shared"]
    assert wanted(candidates, "team-secret", {}, "default") == []
    assert wanted(candidates, "team-b", {}, "default", phase="Terminating") == []


def test_a_tenant_registry_serves_its_own_namespace_only() -> None:
    # Its targets cannot name other namespaces; even {} as a selector stays at home.
    candidates = [Candidate(TENANT, Targets(), placed=False)]
    assert _names(wanted(candidates, "team-a", {}, "default")) == ["mine"]
    assert wanted(candidates, "team-b", {"pull": "yes"}, "default") == []


def test_several_registries_in_a_stable_order_each_with_its_name() -> None:
    candidates = [
        Candidate(SHARED, BY_LABEL, True),
        Candidate(TENANT, Targets(), True),
        Candidate(OTHER, Targets(namespaces=["team-a"], secret_name="shared"), True),
    ]
    found = wanted(candidates, "team-a", {"pull": "yes"}, "default")
    # ClusterOCIRegistry before OCIRegistry, by name; "shared" is wanted by two registries,
    # and only the one whose Secret it is may add it (decide).
    assert [(c.ref.name, name) for c, name in found] == [
        ("other", "shared"),
        ("shared", "shared"),
        ("mine", "mine"),
    ]


def test_a_secret_is_ours_when_absent_or_written_by_this_registry() -> None:
    assert secret_is_ours(SHARED, "ns", None)  # the registry writes it in a moment
    ours = {"metadata": {"labels": SHARED.labels(), "annotations": SHARED.annotations()}}
    assert secret_is_ours(SHARED, "ns", ours)
    assert not secret_is_ours(OTHER, "ns", ours)  # another registry's Secret of the same name
    assert not secret_is_ours(SHARED, "ns", {"metadata": {"labels": {"team": "a"}}})
    assert not secret_is_ours(SHARED, "ns", {"metadata": {}})


def test_a_tenant_registry_of_the_same_name_elsewhere_is_not_ours() -> None:
    # Two tenants' OCIRegistry "mine": the same kind and name, another namespace and uid.
    theirs = RegistryRef("OCIRegistry", "mine", namespace="team-b", uid="u9")
    body = {"metadata": {"labels": theirs.labels(), "annotations": theirs.annotations()}}
    assert secret_is_ours(theirs, "team-b", body)
    assert not secret_is_ours(TENANT, "team-b", body)
    assert not secret_is_ours(TENANT, "team-a", body)  # copied into team-a by hand


def test_only_the_registry_whose_secret_it_is_adds_a_shared_name() -> None:
    # A ClusterOCIRegistry "mine" and team-a's OCIRegistry "mine" both want Secret "mine" in
    # team-a; it is the tenant's (the cluster object reports SecretConflict there), so the
    # new account refers to it on the tenant's behalf, once.
    cluster = RegistryRef("ClusterOCIRegistry", "mine", uid="u7")
    api = _API({}, secrets={"mine": {"labels": TENANT.labels(), "annotations": {}}})
    found = [
        Candidate(cluster, Targets(namespaces=["team-a"]), False),
        Candidate(TENANT, Targets(), False),
    ]
    account = {"metadata": {"name": "default", "namespace": "team-a"}}
    fields, added = admission.decide(api, found, account, "team-a", deadline=1e12)  # type: ignore[arg-type]
    assert added == ["mine"]
    assert fields is not None
    assert fields["imagePullSecrets"] == [{"name": "mine"}]
    assert api.secret_reads == 1  # one read per name


# -- the change to the ServiceAccount ---------------------------------------------------------


def test_references_are_added_after_the_teams_own() -> None:
    account = {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "teams-own"}]}
    patch = account_fields(account, ["shared", "other"])
    assert patch == {
        "imagePullSecrets": [{"name": "teams-own"}, {"name": "shared"}, {"name": "other"}],
        "metadata": {"annotations": {ANNOTATION_SA_REFS: "other,shared"}},
    }


def test_a_reference_already_listed_is_neither_duplicated_nor_claimed() -> None:
    account = {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "shared"}]}
    assert account_fields(account, ["shared"]) is None
    patch = account_fields(account, ["shared", "other", "other"])
    assert patch is not None
    assert patch["imagePullSecrets"] == [{"name": "shared"}, {"name": "other"}]
    # "shared" was put there by the team: theirs to keep, never ours to remove later.
    assert patch["metadata"]["annotations"][ANNOTATION_SA_REFS] == "other"


def test_an_account_copied_with_our_annotation_keeps_it_merged() -> None:
    account = {
        "metadata": {"name": "default", "annotations": {ANNOTATION_SA_REFS: "old"}},
        "imagePullSecrets": [{"name": "old"}],
    }
    patch = account_fields(account, ["new"])
    assert patch is not None
    assert patch["metadata"]["annotations"][ANNOTATION_SA_REFS] == "new,old"
    assert account_fields({"metadata": {"name": "x"}}, []) is None


# -- the MutatingWebhookConfiguration ---------------------------------------------------------


def test_the_webhook_entry_never_fails_a_request() -> None:
    entry = admission.webhook_entry("https://10.1.2.3:9443/pull-secrets", "Q0E=", 3, ["kube-x"])
    assert entry["failurePolicy"] == "Ignore"
    assert entry["timeoutSeconds"] == 3
    assert entry["sideEffects"] == "None"
    assert entry["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["serviceaccounts"],
            "scope": "Namespaced",
        }
    ]
    assert entry["clientConfig"] == {
        "url": "https://10.1.2.3:9443/pull-secrets",
        "caBundle": "Q0E=",
    }
    assert entry["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-x"]}
    ]
    assert admission.webhook_entry("https://h/pull-secrets", None, 3, [])["namespaceSelector"] == {}
    assert admission.webhook_url("https://127.0.0.1:9443") == "https://127.0.0.1:9443/pull-secrets"


def _as_served(entry: dict) -> dict:
    """What the API server returns: our fields plus its defaults."""
    served = {**entry, "objectSelector": {}}
    served["clientConfig"] = {**entry["clientConfig"]}
    return served


def test_the_configuration_is_written_only_when_our_entry_differs() -> None:
    entry = admission.webhook_entry("https://10.0.0.1:9443/pull-secrets", "Q0E=", 3, ["kube-x"])
    foreign = {"name": "other.example.com", "clientConfig": {"url": "https://x"}}
    observed = {
        "metadata": {"name": "ocireg", "resourceVersion": "7"},
        "webhooks": [foreign, _as_served(entry)],
    }
    assert admission.configuration_patch(observed, entry) is None

    moved = admission.webhook_entry("https://10.0.0.2:9443/pull-secrets", "Q0I=", 3, ["kube-x"])
    patch = admission.configuration_patch(observed, moved)
    assert patch == {"metadata": {"resourceVersion": "7"}, "webhooks": [foreign, moved]}

    empty = {"metadata": {"name": "ocireg", "resourceVersion": "1"}}
    assert admission.configuration_patch(empty, entry) == {
        "metadata": {"resourceVersion": "1"},
        "webhooks": [entry],
    }


def test_a_clean_stop_removes_only_an_entry_still_pointing_at_us() -> None:
    mine = admission.webhook_entry("https://10.0.0.1:9443/pull-secrets", "Q0E=", 3, [])
    observed = {"metadata": {"resourceVersion": "9"}, "webhooks": [_as_served(mine)]}
    assert admission.removal_patch(observed, "https://10.0.0.1:9443/pull-secrets") == {
        "metadata": {"resourceVersion": "9"},
        "webhooks": [],
    }
    # Another replica took over and wrote its own address: leave it.
    assert admission.removal_patch(observed, "https://10.0.0.2:9443/pull-secrets") is None
    assert admission.removal_patch({"metadata": {}}, "https://x/pull-secrets") is None


# -- the certificate --------------------------------------------------------------------------


def test_the_self_signed_certificate_names_every_address_and_serves_tls(tmp_path: Path) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert_pem, key_pem = admission.self_signed_certificate(
        ["10.1.2.3", ANY_ADDRESS, "ocireg.ocireg-system.svc", "::1", "10.1.2.3"], now=now
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]  # 0.0.0.0 is where it listens, never an address to call
    assert sans.get_values_for_type(x509.DNSName) == ["ocireg.ocireg-system.svc"]
    assert cert.not_valid_after_utc - now >= dt.timedelta(days=3000)
    assert cert.not_valid_before_utc < now
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in usage] == ["1.3.6.1.5.5.7.3.1"]  # serverAuth
    # It loads as a TLS server certificate.
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(ValueError, match="no usable"):
        admission.self_signed_certificate([ANY_ADDRESS])


def test_each_start_has_its_own_key() -> None:
    first = admission.self_signed_certificate(["127.0.0.1"])
    second = admission.self_signed_certificate(["127.0.0.1"])
    assert first[1] != second[1]


# -- settings ---------------------------------------------------------------------------------


def _config(*args: str):
    return config_from_args(build_parser().parse_args(["run", *args]))


def test_the_webhook_is_off_unless_asked_for() -> None:
    config = _config().admission
    assert not config.enabled
    assert config.timeout_seconds == 3
    assert config.configuration == "ocireg"
    assert config.exclude_namespaces == SYSTEM_NAMESPACES


def test_webhook_flags() -> None:
    config = _config(
        "--admission-webhook",
        "--admission-address=10.0.0.5",
        "--admission-port=8443",
        "--admission-host=10.0.0.5",
        "--admission-timeout=2",
        "--admission-exclude-namespace=kube-system",
        "--admission-exclude-namespace=ocireg-system",
    ).admission
    assert config.enabled
    assert (config.address, config.port, config.host) == ("10.0.0.5", 8443, "10.0.0.5")
    assert config.timeout_seconds == 2
    assert config.exclude_namespaces == ("kube-system", "ocireg-system")
    assert config.cert_file is None  # self-signed


def test_no_namespace_excluded_on_request() -> None:
    config = _config("--admission-webhook", "--admission-exclude-namespace=").admission
    assert config.exclude_namespaces == ()


def test_webhook_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIREG_ADMISSION_WEBHOOK", "true")
    assert _config().admission.enabled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admission-cert-file=c.pem"], "go together"),
        (["--admission-configuration="], "known to nobody"),
        (["--admission-timeout=31"], "1-30"),
        (["--admission-timeout=0"], "1-30"),
        (["--admission-port=70000"], "1-65535"),
    ],
)
def test_impossible_webhook_settings_stop_the_start(args: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _config("--admission-webhook", *args)
    _config(*args)  # without the webhook they do not matter


def test_an_installed_configuration_with_our_own_certificate_is_fine() -> None:
    config = _config(
        "--admission-webhook",
        "--admission-configuration=",
        "--admission-cert-file=tls.crt",
        "--admission-key-file=tls.key",
        "--admission-ca-file=ca.crt",
    ).admission
    assert config.configuration is None
    assert (config.cert_file, config.key_file, config.ca_file) == ("tls.crt", "tls.key", "ca.crt")


# -- what the webhook may do on the API ---------------------------------------------------


def test_the_admission_role_allows_exactly_the_configuration_calls() -> None:
    """Every admissionregistration call of the product (kube.Kube.registration) is allowed by
    manifests/admission/clusterrole.yaml, for the one configuration, and nothing else is.
    (Its reads of namespaces and Secrets are core calls that tests/unit/test_install_rbac.py
    checks against the main ClusterRole.)"""
    root = Path(__file__).resolve().parents[2]
    code = "".join(p.read_text() for p in (root / "operator/ocireg").rglob("*.py"))
    verbs = {"read": "get", "patch": "patch", "create": "create", "delete": "delete"}
    calls = {
        verbs[method.split("_")[0]]
        for method in re.findall(r"\bself\.registration\.(\w+)\b", code)
        if method.endswith("mutating_webhook_configuration")
    }
    # create only happens when the configuration is missing and the role allows it (a
    # development run as admin); installs create the configuration themselves.
    assert calls == {"get", "patch", "create"}
    text = (root / "manifests/admission/clusterrole.yaml").read_text()
    (rule,) = yaml.safe_load(text)["rules"]
    assert rule == {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": ["ocireg"],
        "verbs": ["get", "patch"],
    }
    body = text.split("rules:\n", 1)[1].splitlines()
    assert body[0].startswith("#"), "the rule is explained"


# -- the handler: a decision, or the request let through unchanged ------------------------


class _Registries:
    def __init__(self, *entries: tuple[RegistryRef, Targets]) -> None:
        self.entries = entries

    def ready(self, namespace: str | None = None) -> list[tuple[RegistryRef, SimpleNamespace]]:
        return [
            (ref, SimpleNamespace(spec=SimpleNamespace(effective_targets=t)))
            for ref, t in self.entries
        ]


class _API:
    """Stands in for the two reads; `fail` makes them raise like a broken API would."""

    def __init__(
        self,
        labels: dict[str, str],
        fail: Exception | None = None,
        secrets: dict[str, dict] | None = None,
    ) -> None:
        self.labels, self.fail, self.reads = labels, fail, 0
        self.secrets, self.secret_reads = secrets or {}, 0

    def namespace(self, name: str, timeout: float) -> tuple[dict[str, str], str] | None:
        self.reads += 1
        if self.fail:
            raise self.fail
        return self.labels, "Active"

    def secret_metadata(self, namespace: str, name: str, timeout: float) -> dict | None:
        self.secret_reads += 1
        found = self.secrets.get(name)
        return None if found is None else {"metadata": found}


def _admit(api: _API, account: dict) -> kopf.Patch:
    memo = kopf.Memo(
        config=OperatorConfig(admission=AdmissionConfig(enabled=True)),
        runtime=SimpleNamespace(registries=_Registries((SHARED, BY_LABEL)), fanout=None),
        admission_api=api,
    )
    body = kopf.Body(account)
    patch = kopf.Patch(body=body)
    asyncio.run(admission.mutate_service_account(body=body, patch=patch, memo=memo))
    return patch


def test_the_handler_sets_the_references_as_a_json_patch() -> None:
    account = {"metadata": {"name": "default", "namespace": "new"}}
    patch = _admit(_API({"pull": "yes"}), account)
    assert sorted(patch.as_json_patch(), key=lambda op: op["path"]) == [
        {"op": "add", "path": "/imagePullSecrets", "value": [{"name": "shared"}]},
        {"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION_SA_REFS: "shared"}},
    ]
    assert not _admit(_API({"pull": "no"}), account)


@pytest.mark.parametrize(
    "failure",
    [ApiException(status=500), TimeoutError("slow"), RuntimeError("a bug"), KeyError("x")],
)
def test_any_error_lets_the_account_through_unchanged(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    api = _API({"pull": "yes"}, fail=failure)
    patch = _admit(api, {"metadata": {"name": "default", "namespace": "new"}})
    assert api.reads == 1
    assert not patch  # no patch, no exception: kopf answers allowed
    assert "admitted unchanged" in caplog.text


def test_nothing_is_read_when_no_registry_could_want_the_account() -> None:
    api = _API({"pull": "yes"})
    assert not _admit(api, {"metadata": {"name": "builder", "namespace": "new"}})
    assert api.reads == 0


# -- the chart's values -------------------------------------------------------------------


def _chart_values() -> tuple[dict, dict]:
    chart = Path(__file__).resolve().parents[2] / "helm" / "ocireg"
    schema = json.loads((chart / "values.schema.json").read_text())
    return yaml.safe_load((chart / "values.yaml").read_text()), schema


def test_the_chart_leaves_the_webhook_off_with_the_operators_defaults() -> None:
    values, schema = _chart_values()
    assert values["admission"] == {
        "enabled": False,
        "port": 9443,
        "timeoutSeconds": AdmissionConfig().timeout_seconds,
        "excludeNamespaces": list(SYSTEM_NAMESPACES),
    }
    jsonschema.validate({**values, "admission": {**values["admission"], "enabled": True}}, schema)


@pytest.mark.parametrize(
    "admission_values",
    [
        {"enabled": "yes"},
        {"timeoutSeconds": 0},
        {"timeoutSeconds": 31},  # the API server's limit is 30
        {"port": 8080},  # the health port
        {"excludeNamespaces": ["Kube_System"]},
        {"excludeNamespace": ["kube-system"]},  # a typo
        {"failurePolicy": "Fail"},  # not a choice: never blocking is the point
    ],
)
def test_the_chart_refuses_bad_webhook_values(admission_values: dict) -> None:
    values, schema = _chart_values()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "admission": admission_values}, schema)
