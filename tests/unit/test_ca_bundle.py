"""tls.caBundleRef through one reconcile (issue 14, point 9 a-c): bytes that are not text, a
missing ConfigMap and a tenant's reference to another namespace are each a Stalled condition
with a named reason, the pull secrets already written are kept, and no exception escapes to
kopf (which would retry every 10 s with no condition at all)."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.pullsecrets import reconcile, schedule
from ocireg.pullsecrets.plan import RegistryRef
from ocireg.settings import OperatorConfig

from .test_reconcile import FakeKube

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
DER = bytes.fromhex("308201a23082014aa003020102021400ff") + b"\xff\xfe\x80"
CLUSTER = RegistryRef("ClusterOCIRegistry", "corp", None, "uid-1")
TENANT = RegistryRef("OCIRegistry", "corp", "team-a", "uid-2")


class CAKube(FakeKube):
    """FakeKube with ConfigMaps, raw Secret bytes, and a record of what was read."""

    def __init__(self) -> None:
        super().__init__()
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.reads: list[tuple[str, str]] = []

    def put_raw_secret(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        self.put_secret(namespace, name, {})
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        self.secrets[(namespace, name)]["data"] = encoded

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        self.reads.append((namespace, name))
        return super().read_secret(namespace, name)

    def read_config_map(self, namespace: str, name: str) -> Any:
        self.reads.append((namespace, name))
        data = self.config_maps.get((namespace, name))
        return None if data is None else {k: v.encode() for k, v in data.items()}


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[CAKube]:
    monkeypatch.setattr(reconcile, "verify", lambda *args, **kwargs: None)
    kube = CAKube()
    for namespace in ("ocireg-system", "team-a", "other"):
        kube.add_namespace(namespace, pull="yes")
        kube.put_secret(namespace, "creds", {"username": "robot", "password": "pw"})
    yield kube
    kube.close()


def body(ca: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "server": "registry.example.com",
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "tls": {"caBundleRef": ca},
    }
    if namespace is None:
        spec["targets"] = {"namespaces": ["team-a"]}
    metadata = {"name": "corp", "generation": 1, **({"namespace": namespace} if namespace else {})}
    return {"metadata": metadata, "spec": spec}


def run(kube: CAKube, ref: RegistryRef, obj: dict[str, Any], now: float = 0) -> Any:
    config = OperatorConfig(credentials_namespace="ocireg-system")
    outcome = reconcile.reconcile(kube, ref, obj, config, schedule.Memory(), now, kube.sync)  # type: ignore[arg-type]
    if outcome.status is not None:
        obj["status"] = outcome.status
    return outcome


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def test_a_ca_bundle_that_is_not_text_is_stalled_and_the_secret_is_kept(kube: CAKube) -> None:
    kube.put_raw_secret("ocireg-system", "corp-ca", {"ca.crt": PEM.encode()})
    obj = body({"secret": "corp-ca"})
    run(kube, CLUSTER, obj)
    assert conditions(obj)["Ready"]["status"] == "True"
    written = dict(kube.secrets[("team-a", "corp")]["data"])

    kube.put_raw_secret("ocireg-system", "corp-ca", {"ca.crt": DER})  # DER, not PEM
    outcome = run(kube, CLUSTER, obj, now=10)
    cond = conditions(obj)
    assert cond["Ready"]["status"] == "False"
    assert cond["Ready"]["reason"] == "InvalidCABundle"
    assert cond["Ready"]["message"] == (
        "Secret ocireg-system/corp-ca key 'ca.crt' is not text: a CA bundle is PEM "
        "certificates (-----BEGIN CERTIFICATE-----), not DER or other binary data"
    )
    assert (cond["Stalled"]["status"], cond["Stalled"]["reason"]) == ("True", "InvalidCABundle")
    assert "Reconciling" not in cond  # present only while True
    assert kube.secrets[("team-a", "corp")]["data"] == written
    assert outcome.events == [("Warning", "InvalidCABundle", cond["Ready"]["message"])]


@pytest.mark.parametrize(
    ("ca", "reason", "message"),
    [
        ({"secret": "nope"}, "SecretNotFound", "Secret ocireg-system/nope does not exist"),
        ({"configMap": "nope"}, "ConfigMapNotFound", "ConfigMap ocireg-system/nope does not exist"),
    ],
)
def test_a_missing_ca_secret_and_a_missing_ca_config_map_both_stall(
    kube: CAKube, ca: dict[str, str], reason: str, message: str
) -> None:
    obj = body(ca)
    run(kube, CLUSTER, obj)
    cond = conditions(obj)
    assert (cond["Ready"]["reason"], cond["Ready"]["message"]) == (reason, message)
    assert (cond["Stalled"]["status"], cond["Stalled"]["reason"]) == ("True", reason)
    assert "Reconciling" not in cond  # present only while True


def test_a_ca_config_map_appearing_later_is_picked_up(kube: CAKube) -> None:
    obj = body({"configMap": "corp-ca"})
    first = run(kube, CLUSTER, obj)
    assert conditions(obj)["Stalled"]["status"] == "True"
    kube.config_maps[("ocireg-system", "corp-ca")] = {"ca.crt": PEM}
    config = OperatorConfig(credentials_namespace="ocireg-system")
    retry_at = first.memory.retry_at
    outcome = reconcile.reconcile(kube, CLUSTER, obj, config, first.memory, retry_at + 1, kube.sync)  # type: ignore[arg-type]
    obj["status"] = outcome.status
    assert conditions(obj)["Ready"]["status"] == "True"


@pytest.mark.parametrize("kind", ["secret", "configMap"])
def test_a_tenant_ca_bundle_in_another_namespace_is_refused_at_runtime(
    kube: CAKube, kind: str
) -> None:
    # What the CRD rule refuses at apply time, built here without the CRD (an object stored
    # before the rule, or a client that skips validation): the operator reads nothing there.
    kube.put_raw_secret("other", "corp-ca", {"ca.crt": PEM.encode()})
    kube.config_maps[("other", "corp-ca")] = {"ca.crt": PEM}
    obj = body({kind: "corp-ca", "namespace": "other"}, namespace="team-a")
    run(kube, TENANT, obj)
    cond = conditions(obj)
    assert cond["Ready"]["reason"] == "CrossNamespaceReference"
    assert "tls.caBundleRef" in cond["Ready"]["message"]
    assert (cond["Stalled"]["status"], cond["Stalled"]["reason"]) == (
        "True",
        "CrossNamespaceReference",
    )
    assert [r for r in kube.reads if r[0] == "other"] == []
    assert ("team-a", "corp") not in kube.secrets


def test_a_tenant_ca_bundle_in_its_own_namespace_is_read(kube: CAKube) -> None:
    kube.config_maps[("team-a", "corp-ca")] = {"ca.crt": PEM}
    obj = body({"configMap": "corp-ca", "namespace": "team-a"}, namespace="team-a")
    outcome = run(kube, TENANT, obj)
    assert conditions(obj)["Ready"]["status"] == "True"
    assert outcome.tls.ca_bundle == PEM


def test_the_reason_says_whether_an_error_stalls_and_transient_never_does() -> None:
    """The stall rule is the reason's (api.reasons), chosen where the error is raised: a
    missing CA ConfigMap stalls exactly as a missing Secret does."""

    def shown(error: ReconcileError) -> dict[str, str]:
        """Stalled and Reconciling as written (present only while True)."""
        status = reconcile._failure_status(error, 1, {}, 10)
        return {
            c["type"]: c["status"]
            for c in status["conditions"]
            if c["type"] in ("Stalled", "Reconciling")
        }

    assert shown(ReconcileError(Reason.CONFIG_MAP_NOT_FOUND, "m")) == {"Stalled": "True"}
    assert shown(ReconcileError(Reason.SECRET_NOT_FOUND, "m")) == {"Stalled": "True"}
    transient = ReconcileError(Reason.SECRET_NOT_FOUND, "m", transient=True)
    assert shown(transient) == {"Reconciling": "True"}
    assert shown(ReconcileError(Reason.UNREACHABLE, "m")) == {"Reconciling": "True"}
    with pytest.raises(ValueError, match="Whatever"):
        ReconcileError("Whatever", "m")  # type: ignore[arg-type]  # undeclared: refused


@pytest.mark.parametrize("kind", ["secret", "configMap"])
def test_an_oversized_ca_bundle_is_stalled_and_the_secret_is_kept(kube: CAKube, kind: str) -> None:
    kube.put_raw_secret("team-a", "corp-ca", {"ca.crt": PEM.encode()})
    kube.config_maps[("team-a", "corp-ca")] = {"ca.crt": PEM}
    obj = body({kind: "corp-ca"}, namespace="team-a")
    obj["spec"].pop("targets", None)
    run(kube, TENANT, obj)
    assert conditions(obj)["Ready"]["status"] == "True"
    written = dict(kube.secrets[("team-a", "corp")]["data"])

    huge = PEM * (300 * 1024 // len(PEM) + 1)  # 300 KiB of certificates
    kube.put_raw_secret("team-a", "corp-ca", {"ca.crt": huge.encode()})
    kube.config_maps[("team-a", "corp-ca")] = {"ca.crt": huge}
    run(kube, TENANT, obj, now=10)
    cond = conditions(obj)
    assert cond["Ready"]["reason"] == "InvalidCABundle"
    assert "over the 256 KiB a CA bundle may hold" in cond["Ready"]["message"]
    assert (cond["Stalled"]["status"], cond["Stalled"]["reason"]) == ("True", "InvalidCABundle")
    assert kube.secrets[("team-a", "corp")]["data"] == written
