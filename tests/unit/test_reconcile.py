"""The reconcile loop against an in-memory stand-in for the Kubernetes API (e2e tests cover
the real one): steady state writes nothing, failures keep the last good Secret and back off,
extends merges and reports loops, and status carries no credential."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.kube.client import Conflict
from ocireg.pullsecrets import plan, reconcile, schedule
from ocireg.pullsecrets.fanout import Fanout, Registries
from ocireg.pullsecrets.index import ClusterIndex
from ocireg.pullsecrets.plan import RegistryRef
from ocireg.settings import OperatorConfig

PASSWORD = "s3cret-pa55"


class FakeKube:
    """Just enough of ocireg.kube.client.Kube, with the same semantics, counting writes."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces_: dict[str, dict[str, str]] = {}
        self.accounts: dict[tuple[str, str], dict[str, Any]] = {}
        self.registries: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self._uid = 0
        # The only writer of targets: namespace jobs fed by the watch-fed index.
        self.registries_ = Registries()
        self.fanout = Fanout(self, ClusterIndex(), self.registries_, workers=4)  # type: ignore[arg-type]

    def sync(self, *args: Any) -> Any:
        """reconcile's sync: the namespace jobs, once the watches have caught up."""
        self.fanout.index = index_of(self)
        return self.fanout.resync(*args)

    def close(self) -> None:
        self.fanout.queue.stop()

    # test set-up helpers
    def add_namespace(self, name: str, **labels: str) -> None:
        self.namespaces_[name] = labels
        self.accounts[(name, "default")] = {"metadata": {"name": "default", "namespace": name}}

    def put_secret(self, namespace: str, name: str, data: Mapping[str, str], **meta: Any) -> None:
        self._uid += 1
        self.secrets[(namespace, name)] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.UUID(int=self._uid)),  # as the API writes uids
                "resourceVersion": str(self._uid),
                **meta,
            },
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    # the Kube interface
    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        if (namespace, name) not in self.secrets:
            raise ReconcileError("SecretNotFound", f"Secret {namespace}/{name} does not exist")
        data = self.secrets[(namespace, name)]["data"]
        return {k: base64.b64decode(v) for k, v in data.items()}

    def request_token(self, namespace: str, name: str, audience: str) -> str:
        return f"token-for-{namespace}/{name}@{audience}"

    def read_config_map(self, namespace: str, name: str) -> None:
        return None

    def read_registry(self, kind: str, name: str, namespace: str | None) -> dict | None:
        return self.registries.get(name)

    def read_secret_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.secrets.get((namespace, name))
        return None if found is None else copy.deepcopy(found)

    def write_secret(
        self, body: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any] | None:
        meta = body["metadata"]
        if meta["namespace"] not in self.namespaces_:
            return None  # as the API answers for a namespace that is gone
        current = self.secrets.get((meta["namespace"], meta["name"]))
        if (current is None) != (resource_version is None) or (
            current is not None and current["metadata"].get("resourceVersion") != resource_version
        ):
            raise Conflict("exists already, or changed since")  # the API's 409
        self.writes += 1
        self._uid += 1
        body = copy.deepcopy(body)
        body["metadata"]["uid"] = str(uuid.UUID(int=self._uid))
        body["metadata"]["resourceVersion"] = str(self._uid)
        self.secrets[(meta["namespace"], meta["name"])] = body
        return copy.deepcopy(body)

    def managed_secrets(self, ref: RegistryRef, namespace: str | None = None) -> list[dict]:
        # The API's answer to ref.selector() (equality terms only).
        wanted = dict(term.split("=", 1) for term in ref.selector().split(","))
        return [
            s
            for (ns, _), s in self.secrets.items()
            if (namespace is None or ns == namespace)
            and all((s["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        self.writes += 1
        current = self.secrets.get((namespace, name))
        if current is not None and uid not in (None, current["metadata"].get("uid")):
            return  # the API's 409 for a failed uid precondition, which Kube ignores
        self.secrets.pop((namespace, name), None)

    def service_accounts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [sa for (ns, _), sa in self.accounts.items() if namespace in (None, ns)]

    def update_service_account(
        self, namespace: str, sa: dict, change: Any, written: Any = None
    ) -> bool:
        current = self.accounts[(namespace, sa["metadata"]["name"])]
        patch = change(current)
        if patch is None:
            return False
        assert patch["metadata"]["resourceVersion"] == current["metadata"].get("resourceVersion")
        self.writes += 1
        annotations = current["metadata"].setdefault("annotations", {})
        for key, value in patch["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        current["metadata"]["resourceVersion"] = str(self.writes)
        current["imagePullSecrets"] = patch["imagePullSecrets"] or []
        if written is not None:
            written(copy.deepcopy(current))
        return True


def index_of(kube: FakeKube) -> ClusterIndex:
    """The index as complete watches of the fake cluster would have it."""
    index = ClusterIndex()
    index.namespaces.replace(
        {"metadata": {"name": n, "labels": labels}} for n, labels in kube.namespaces_.items()
    )
    index.accounts.replace(copy.deepcopy(list(kube.accounts.values())))
    managed = [
        s
        for s in kube.secrets.values()
        if (s["metadata"].get("labels") or {}).get(plan.MANAGED_BY) == plan.MANAGER
    ]
    index.secrets.replace(copy.deepcopy(managed))
    return index


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    kube = FakeKube()
    yield from _setup(kube)
    kube.close()


def _setup(kube: FakeKube) -> Iterator[FakeKube]:
    kube.add_namespace("ocireg-system")
    kube.add_namespace("team-a", pull="yes")
    kube.add_namespace("team-b", pull="yes")
    kube.add_namespace("other")
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": PASSWORD})
    yield kube


class Calls(list):
    """Verification calls (passwords tried); ``accepted`` is what the registry takes."""

    accepted = frozenset({PASSWORD})


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Registry verification stands in here; calls are recorded and can be made to fail."""
    calls = Calls()

    def fake_verify(spec: Any, credential: Any, tls: Any, egress_policy: Any = None) -> None:
        calls.append(credential.password)
        if credential.password not in calls.accepted:
            raise ReconcileError("AuthenticationFailed", f"{spec.server} refused the credentials")

    monkeypatch.setattr(reconcile, "verify", fake_verify)
    return calls


REF = RegistryRef("ClusterOCIRegistry", "corp", None, "uid-1")


def body(**spec: Any) -> dict[str, Any]:
    base = {
        "server": "registry.example.com",
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
        "targets": {"namespaceSelector": {"matchLabels": {"pull": "yes"}}},
    }
    return {"metadata": {"name": "corp", "generation": 1}, "spec": {**base, **spec}}


def run(kube: FakeKube, obj: dict, memory: schedule.Memory, now: float) -> reconcile.Outcome:
    config = OperatorConfig(credentials_namespace="ocireg-system")
    outcome = reconcile.reconcile(kube, REF, obj, config, memory, now, sync=kube.sync)  # type: ignore[arg-type]
    if outcome.status is not None:
        obj["status"] = outcome.status
    return outcome


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def docker_config(kube: FakeKube, namespace: str) -> dict:
    data = kube.secrets[(namespace, "corp")]["data"][".dockerconfigjson"]
    return json.loads(base64.b64decode(data))


def test_writes_selected_namespaces_and_patches_service_accounts(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    outcome = run(kube, obj, schedule.Memory(), now=0)
    # The index counts them as this object's (the metrics' ocireg_managed_secrets).
    assert kube.fanout.managed(REF) == 2
    assert kube.fanout.holds(REF, "team-a", "corp")
    assert not kube.fanout.holds(REF, "team-c", "corp")
    assert ("other", "corp") not in kube.secrets
    entry = docker_config(kube, "team-a")["auths"]["registry.example.com"]
    assert base64.b64decode(entry["auth"]).decode() == f"robot:{PASSWORD}"
    assert kube.accounts[("team-a", "default")]["imagePullSecrets"] == [{"name": "corp"}]
    cond = conditions(obj)
    assert cond["Ready"]["status"] == "True"
    assert obj["status"]["targets"] == {
        "namespaces": 2,
        "serviceAccounts": 2,
        "failed": [],
        "failedCount": 0,
    }
    assert PASSWORD not in json.dumps(obj["status"])
    assert [e[1] for e in outcome.events] == ["SecretsWritten", "Verified"]


def test_steady_state_writes_nothing_and_skips_the_registry(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    memory = run(kube, obj, schedule.Memory(), now=0).memory
    writes, calls = kube.writes, len(verified)
    for now in range(10, 200, 10):
        outcome = run(kube, obj, memory, now=now)
        memory = outcome.memory
        assert outcome.status is None
        assert not outcome.events
    assert kube.writes == writes
    assert len(verified) == calls
    # The periodic target resync compares and finds nothing to write either.
    outcome = run(kube, obj, memory, now=schedule.TARGET_RESYNC + 1)
    assert outcome.status is not None
    assert kube.writes == writes
    assert len(verified) == calls


def test_password_change_is_verified_and_every_copy_follows(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    memory = run(kube, obj, schedule.Memory(), now=0).memory
    verified.accepted = frozenset({"n3w-pa55"})  # the registry now wants the new one
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": "n3w-pa55"})
    run(kube, obj, memory, now=10)
    for namespace in ("team-a", "team-b"):
        assert docker_config(kube, namespace)["auths"]["registry.example.com"]["password"] == (
            "n3w-pa55"
        )


def test_wrong_password_keeps_the_good_secret_and_backs_off(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    memory = run(kube, obj, schedule.Memory(), now=0).memory
    good = dict(kube.secrets[("team-a", "corp")]["data"])
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": "wrong"})
    outcome = run(kube, obj, memory, now=10)
    cond = conditions(obj)
    assert cond["CredentialsReady"]["reason"] == "AuthenticationFailed"
    assert cond["Ready"]["status"] == "False"
    assert cond["Stalled"]["status"] == "True"
    assert cond["TargetsSynced"]["status"] == "True"  # the last good Secrets are still there
    assert kube.secrets[("team-a", "corp")]["data"] == good
    assert outcome.events == [
        ("Warning", "AuthenticationFailed", "registry.example.com refused the credentials")
    ]
    assert "wrong" not in json.dumps(obj["status"])
    # No hot loop: ticks before the backoff ends neither verify nor post Events.
    calls = len(verified)
    quiet = run(kube, obj, outcome.memory, now=11)
    assert quiet.status is None
    assert not quiet.events
    assert len(verified) == calls
    # After the backoff it tries again, without repeating the same Warning.
    again = run(kube, obj, outcome.memory, now=outcome.memory.retry_at + 1)
    assert len(verified) == calls + 1
    assert not again.events
    assert again.memory.failures == 2
    assert again.status is not None
    assert again.status["failures"] == 2  # what `ocireg status` shows
    assert again.memory.retry_at > outcome.memory.retry_at
    # Fixing the Secret is noticed on the next tick, whatever the backoff.
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": PASSWORD})
    fixed = run(kube, obj, again.memory, now=outcome.memory.retry_at + 2)
    assert fixed.memory.failures == 0
    assert conditions(obj)["Ready"]["status"] == "True"
    assert fixed.status is not None
    assert fixed.status["failures"] is None  # merge-patched away


def test_reconciling_and_stalled_are_present_only_while_true(
    kube: FakeKube, verified: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kstatus' abnormal-true polarity, as Flux writes it: a healthy object carries neither;
    # a transient failure is Reconciling=True (kstatus: InProgress), one only a change can
    # fix Stalled=True (kstatus: Failed), never both; recovery removes them again.
    obj = body()
    memory = run(kube, obj, schedule.Memory(), now=0).memory
    assert set(conditions(obj)) == {"Ready", "CredentialsReady", "TargetsSynced"}

    def unreachable(spec: Any, credential: Any, tls: Any, egress_policy: Any = None) -> None:
        raise ReconcileError("Unreachable", f"{spec.server}: connection refused", transient=True)

    monkeypatch.setattr(reconcile, "verify", unreachable)
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": "other"})
    memory = run(kube, obj, memory, now=10).memory
    retrying = conditions(obj)
    assert "Stalled" not in retrying
    assert (retrying["Reconciling"]["status"], retrying["Reconciling"]["reason"]) == (
        "True",
        "Retrying",
    )
    assert retrying["Reconciling"]["message"].startswith("retrying in ")

    monkeypatch.undo()
    monkeypatch.setattr(reconcile, "verify", lambda *a, **k: None)
    kube.secrets.pop(("ocireg-system", "creds"))  # only the user can fix this
    memory = run(kube, obj, memory, now=memory.retry_at + 1).memory
    stalled = conditions(obj)
    assert "Reconciling" not in stalled
    assert (stalled["Stalled"]["status"], stalled["Stalled"]["reason"]) == (
        "True",
        "SecretNotFound",
    )

    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": PASSWORD})
    run(kube, obj, memory, now=memory.retry_at + 2)
    assert set(conditions(obj)) == {"Ready", "CredentialsReady", "TargetsSynced"}
    assert conditions(obj)["Ready"]["status"] == "True"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda k: k.secrets.pop(("ocireg-system", "creds")), "SecretNotFound"),
        (lambda k: k.put_secret("ocireg-system", "creds", {"username": "robot"}), "KeyMissing"),
    ],
)
def test_missing_secret_or_key_is_a_condition(
    kube: FakeKube, verified: Calls, change: Any, reason: str
) -> None:
    change(kube)
    obj = body()
    outcome = run(kube, obj, schedule.Memory(), now=0)
    assert conditions(obj)["Ready"]["reason"] == reason
    assert "creds" in conditions(obj)["Ready"]["message"]
    assert kube.writes == 0
    assert outcome.events[0][:2] == ("Warning", reason)


def test_relabelled_namespace_loses_only_our_secret_and_reference(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    memory = run(kube, obj, schedule.Memory(), now=0).memory
    sa = kube.accounts[("team-b", "default")]
    sa["imagePullSecrets"].append({"name": "theirs"})
    kube.namespaces_["team-b"] = {}
    run(kube, obj, memory, now=schedule.TARGET_RESYNC + 1)
    assert ("team-b", "corp") not in kube.secrets
    assert sa["imagePullSecrets"] == [{"name": "theirs"}]
    assert ("team-a", "corp") in kube.secrets


def test_unmanaged_secret_of_the_same_name_is_a_conflict_not_overwritten(
    kube: FakeKube, verified: Calls
) -> None:
    kube.put_secret("team-b", "corp", {"mine": "keep"})
    obj = body()
    run(kube, obj, schedule.Memory(), now=0)
    assert kube.secrets[("team-b", "corp")]["data"] == {"mine": base64.b64encode(b"keep").decode()}
    cond = conditions(obj)
    assert cond["TargetsSynced"]["reason"] == "SecretConflict"
    assert cond["Ready"]["status"] == "False"
    assert obj["status"]["targets"]["failed"][0]["namespace"] == "team-b"
    assert obj["status"]["targets"]["namespaces"] == 1
    # Waiting for someone to move the Secret: Stalled (kstatus: Failed), not Current.
    assert cond["Stalled"]["status"] == "True"
    assert cond["Stalled"]["reason"] == "SecretConflict"
    assert "team-b" in cond["Stalled"]["message"]
    assert "Reconciling" not in cond
    # Moved: the next resync writes the copy and the object is healthy again.
    del kube.secrets[("team-b", "corp")]
    run(kube, obj, schedule.Memory(), now=schedule.TARGET_RESYNC + 1)
    cond = conditions(obj)
    assert cond["Ready"]["status"] == "True"
    assert "Stalled" not in cond


def test_extends_inherits_and_overrides(kube: FakeKube, verified: Calls) -> None:
    kube.registries["base"] = {
        "spec": {
            "server": "registry.example.com",
            "auth": {"basic": {"secretRef": {"name": "creds"}}},
            "targets": {"namespaces": ["team-a"], "secretName": "base-pull"},
        }
    }
    spec = reconcile.effective_spec(
        kube,  # type: ignore[arg-type]
        REF,
        {"extends": "base", "targets": {"secretName": "mine"}},
    )
    assert spec.server == "registry.example.com"
    assert spec.effective_targets.secret_name == "mine"
    assert spec.effective_targets.namespaces == ["team-a"]


@pytest.mark.parametrize(
    ("registries", "reason"),
    [
        ({"a": {"spec": {"extends": "b"}}, "b": {"spec": {"extends": "a"}}}, "ExtendsLoop"),
        ({}, "BaseNotFound"),
    ],
)
def test_extends_problems_are_conditions(
    kube: FakeKube, verified: Calls, registries: dict, reason: str
) -> None:
    kube.registries.update(registries)
    obj = {"metadata": {"name": "corp", "generation": 1}, "spec": {"extends": "a"}}
    run(kube, obj, schedule.Memory(), now=0)
    assert conditions(obj)["Ready"]["reason"] == reason


@pytest.mark.parametrize("bases", [8, 9, 40])
def test_extends_depth_is_capped_with_a_clear_condition(
    kube: FakeKube, verified: Calls, bases: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # corp -> b1 -> ... -> bN: each base is one read per tick, so a long chain costs every
    # object in it a read of the rest on every tick (N(N-1)/2 in all).
    reads: list[str] = []
    real = kube.read_registry
    monkeypatch.setattr(kube, "read_registry", lambda k, n, ns: reads.append(n) or real(k, n, ns))
    for i in range(1, bases):
        kube.registries[f"b{i}"] = {"spec": {"extends": f"b{i + 1}"}}
    kube.registries[f"b{bases}"] = {"spec": body()["spec"]}
    obj = {"metadata": {"name": "corp", "generation": 1}, "spec": {"extends": "b1"}}
    run(kube, obj, schedule.Memory(), now=0)
    ready = conditions(obj)["Ready"]
    if bases <= 8:  # reconcile.MAX_EXTENDS_DEPTH
        assert ready["status"] == "True"
        assert len(reads) == bases
        return
    assert ready["reason"] == "ExtendsTooDeep"
    assert ready["message"].startswith("extends goes through more than 8 bases (corp -> b1 ->")
    assert conditions(obj)["Stalled"]["status"] == "True"
    assert len(reads) == 8  # the 9th base is never read


def test_any_exception_from_a_provider_is_a_condition_with_backoff(
    kube: FakeKube, verified: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec: Any, ctx: Any) -> Any:
        raise UnicodeEncodeError("latin-1", "Bearer \u00ff" + PASSWORD, 7, 8, "out of range")

    monkeypatch.setattr(reconcile.providers, "resolve", broken)
    obj = body()
    first = run(kube, obj, schedule.Memory(), now=0)
    ready = conditions(obj)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ProviderError")
    assert "UnicodeEncodeError" in ready["message"]
    assert PASSWORD not in json.dumps(obj["status"])
    assert first.events == [("Warning", "ProviderError", ready["message"])]
    assert first.memory.retry_at > 5
    second = run(kube, obj, first.memory, now=5)  # within the backoff: no new status or Event
    assert (second.status, second.events) == (None, [])
    assert second.memory.retry_at == first.memory.retry_at


def test_a_webhook_header_that_is_not_latin_1_is_an_invalid_secret(
    kube: FakeKube, verified: Calls
) -> None:
    # Was: UnicodeEncodeError from http.client on every tick, no condition, no backoff.
    kube.put_secret("ocireg-system", "hook-headers", {})
    kube.secrets[("ocireg-system", "hook-headers")]["data"] = {
        "Authorization": base64.b64encode(b"Bearer \xff\xfe" + PASSWORD.encode()).decode()
    }
    webhook = {"url": "http://127.0.0.1:9/creds", "headersSecretRef": {"name": "hook-headers"}}
    obj = body(auth={"webhook": webhook})
    run(kube, obj, schedule.Memory(), now=0)
    ready = conditions(obj)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSecret")
    assert "'Authorization' is not a usable HTTP header value" in ready["message"]
    assert conditions(obj)["Stalled"]["status"] == "True"
    assert PASSWORD not in json.dumps(obj["status"])


def test_auth_is_replaced_whole_by_an_override() -> None:
    merged = reconcile.merge_specs(
        {"auth": {"basic": {"secretRef": {"name": "a"}}}, "tls": {"insecure": True}},
        {"auth": {"anonymous": {}}, "tls": {"insecureSkipVerify": False}},
    )
    assert merged["auth"] == {"anonymous": {}}
    assert merged["tls"] == {"insecure": True, "insecureSkipVerify": False}


def test_removing_several_references_in_one_patch() -> None:
    sa = {
        "metadata": {
            "name": "default",
            "resourceVersion": "3",
            "annotations": {plan.ANNOTATION_SA_REFS: "a,b"},
        },
        "imagePullSecrets": [{"name": "a"}, {"name": "theirs"}, {"name": "b"}],
    }
    patch = reconcile.removing({"a", "b"})(sa)
    assert patch is not None
    assert patch["imagePullSecrets"] == [{"name": "theirs"}]
    assert patch["metadata"] == {
        "resourceVersion": "3",
        "annotations": {plan.ANNOTATION_SA_REFS: None},
    }


def test_adding_several_references_in_one_patch() -> None:
    sa = {
        "metadata": {"name": "default", "resourceVersion": "5"},
        "imagePullSecrets": [{"name": "theirs"}, {"name": "b"}],
    }
    patch = plan.service_account_change(sa, ["a", "b", "c"], [])
    assert patch is not None
    # "b" was put there by someone else: left alone, not claimed.
    assert patch["imagePullSecrets"] == [
        {"name": "theirs"},
        {"name": "b"},
        {"name": "a"},
        {"name": "c"},
    ]
    assert patch["metadata"] == {
        "resourceVersion": "5",
        "annotations": {plan.ANNOTATION_SA_REFS: "a,c"},
    }
    assert plan.service_account_change(sa, ["b"], []) is None


# -- ownership: registry objects of the same name, upgrades, re-created objects ---------------

TENANT_A = RegistryRef("OCIRegistry", "ghcr", "team-a", "uid-a")
TENANT_B = RegistryRef("OCIRegistry", "ghcr", "team-b", "uid-b")
CLUSTER_GHCR = RegistryRef("ClusterOCIRegistry", "ghcr", None, "uid-c")


def registry_body(ref: RegistryRef, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "server": "registry.example.com",
        "auth": {"basic": {"secretRef": {"name": "creds"}}},
    }
    meta = {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid, "generation": 1}
    return {"metadata": meta, "spec": {**base, **spec}}


def run_as(
    kube: FakeKube, ref: RegistryRef, obj: dict, memory: schedule.Memory, now: float
) -> reconcile.Outcome:
    config = OperatorConfig(credentials_namespace="ocireg-system")
    outcome = reconcile.reconcile(kube, ref, obj, config, memory, now, sync=kube.sync)  # type: ignore[arg-type]
    if outcome.status is not None:
        obj["status"] = outcome.status
    return outcome


def delete_as(kube: FakeKube, ref: RegistryRef) -> None:
    """What handlers.on_delete does: stop serving it, then clean up from a list."""
    tracked = kube.registries_.forget(ref)
    if tracked is not None:
        tracked.publish(None, None)
    reconcile.cleanup(kube, ref)  # type: ignore[arg-type]


def two_tenants(kube: FakeKube) -> tuple[dict, dict]:
    """team-a and team-b each with an OCIRegistry "ghcr", both written."""
    objects = []
    for ref in (TENANT_A, TENANT_B):
        assert ref.namespace is not None
        kube.put_secret(ref.namespace, "creds", {"username": "robot", "password": PASSWORD})
        obj = registry_body(ref)
        run_as(kube, ref, obj, schedule.Memory(), now=0)
        assert conditions(obj)["Ready"]["status"] == "True", obj["status"]
        objects.append(obj)
    return objects[0], objects[1]


def test_deleting_a_tenants_registry_leaves_another_tenants_of_the_same_name(
    kube: FakeKube, verified: Calls
) -> None:
    two_tenants(kube)
    theirs = copy.deepcopy(kube.secrets[("team-b", "ghcr")])
    delete_as(kube, TENANT_A)
    assert ("team-a", "ghcr") not in kube.secrets
    assert kube.accounts[("team-a", "default")]["imagePullSecrets"] == []
    assert kube.secrets[("team-b", "ghcr")] == theirs  # same uid, resourceVersion, bytes
    assert kube.accounts[("team-b", "default")]["imagePullSecrets"] == [{"name": "ghcr"}]


def test_resyncs_of_two_tenants_registries_of_the_same_name_leave_each_other_alone(
    kube: FakeKube, verified: Calls
) -> None:
    # A list-based write path (since removed) once removed the other tenant's copy on every
    # resync: same name, same kind, same labels. The namespace jobs must not either.
    obj_a, obj_b = two_tenants(kube)
    writes = kube.writes
    theirs = copy.deepcopy(kube.secrets[("team-b", "ghcr")])
    mine = copy.deepcopy(kube.secrets[("team-a", "ghcr")])
    run_as(kube, TENANT_A, obj_a, schedule.Memory(), now=schedule.TARGET_RESYNC + 1)
    run_as(kube, TENANT_B, obj_b, schedule.Memory(), now=schedule.TARGET_RESYNC + 1)
    assert kube.secrets[("team-b", "ghcr")] == theirs
    assert kube.secrets[("team-a", "ghcr")] == mine
    assert kube.writes == writes
    for namespace in ("team-a", "team-b"):
        assert kube.accounts[(namespace, "default")]["imagePullSecrets"] == [{"name": "ghcr"}]
        assert conditions(obj_a if namespace == "team-a" else obj_b)["Ready"]["status"] == "True"


def test_a_cluster_registry_next_to_a_tenants_of_the_same_name(
    kube: FakeKube, verified: Calls
) -> None:
    kube.put_secret("team-a", "creds", {"username": "robot", "password": PASSWORD})
    tenant = registry_body(TENANT_A)
    run_as(kube, TENANT_A, tenant, schedule.Memory(), now=0)
    theirs = copy.deepcopy(kube.secrets[("team-a", "ghcr")])
    cluster = registry_body(
        CLUSTER_GHCR, targets={"namespaceSelector": {"matchLabels": {"pull": "yes"}}}
    )
    cluster["metadata"].pop("namespace")
    run_as(kube, CLUSTER_GHCR, cluster, schedule.Memory(), now=0)
    (failed,) = cluster["status"]["targets"]["failed"]
    assert failed["namespace"] == "team-a"
    assert failed["reason"] == "SecretConflict"
    assert "OCIRegistry/team-a/ghcr" in failed["message"]
    assert kube.secrets[("team-a", "ghcr")] == theirs  # never overwritten
    assert ("team-b", "ghcr") in kube.secrets
    # Deleting the cluster object leaves the tenant's Secret and reference.
    delete_as(kube, CLUSTER_GHCR)
    assert ("team-b", "ghcr") not in kube.secrets
    assert kube.secrets[("team-a", "ghcr")] == theirs
    assert kube.accounts[("team-a", "default")]["imagePullSecrets"] == [{"name": "ghcr"}]
    # And the other way round: deleting the tenant's leaves the cluster object's copies.
    run_as(kube, CLUSTER_GHCR, cluster, schedule.Memory(), now=0)
    clusters = copy.deepcopy(kube.secrets[("team-b", "ghcr")])
    delete_as(kube, TENANT_A)
    assert kube.secrets[("team-b", "ghcr")] == clusters
    assert kube.accounts[("team-b", "default")]["imagePullSecrets"] == [{"name": "ghcr"}]


def test_secrets_of_the_release_before_the_uid_label_are_taken_over(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    run(kube, obj, schedule.Memory(), now=0)
    for namespace in ("team-a", "team-b"):  # as the old release labelled them
        del kube.secrets[(namespace, "corp")]["metadata"]["labels"][plan.LABEL_UID]
    data = kube.secrets[("team-a", "corp")]["data"]
    run(kube, obj, schedule.Memory(), now=0)
    assert conditions(obj)["TargetsSynced"]["reason"] == "Synced"  # no SecretConflict
    for namespace in ("team-a", "team-b"):
        labels = kube.secrets[(namespace, "corp")]["metadata"]["labels"]
        assert labels[plan.LABEL_UID] == REF.uid
        assert kube.accounts[(namespace, "default")]["imagePullSecrets"] == [{"name": "corp"}]
    assert kube.secrets[("team-a", "corp")]["data"] == data
    # Old-style copies are cleaned up by their object too.
    del kube.secrets[("team-b", "corp")]["metadata"]["labels"][plan.LABEL_UID]
    delete_as(kube, REF)
    assert not [k for k in kube.secrets if k[1] == "corp"]


def test_a_recreated_object_takes_over_its_predecessors_copies(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    run(kube, obj, schedule.Memory(), now=0)
    reborn = RegistryRef(REF.kind, REF.name, None, "uid-2")  # deleted and applied again
    kube.registries_.forget(REF)
    fresh = body()
    run_as(kube, reborn, fresh, schedule.Memory(), now=0)
    assert conditions(fresh)["TargetsSynced"]["reason"] == "Synced"
    for namespace in ("team-a", "team-b"):
        assert kube.secrets[(namespace, "corp")]["metadata"]["labels"][plan.LABEL_UID] == "uid-2"


def test_a_run_says_what_it_read_and_when_it_is_next_due(kube: FakeKube, verified: Calls) -> None:
    # What it read is what a watch event must run it again for: the credentials Secret and
    # the base it extends; and with nothing else due, it wakes at its resync.
    kube.registries["base"] = {"spec": {"server": "registry.example.com"}}
    obj = body(extends="base", refresh={"interval": "24h"})
    seen: list[tuple[str, str, str]] = []
    config = OperatorConfig(credentials_namespace="ocireg-system")
    outcome = reconcile.reconcile(
        kube,  # type: ignore[arg-type]
        REF,
        obj,
        config,
        schedule.Memory(),
        0,
        sync=kube.sync,  # type: ignore[arg-type]
        on_read=seen.append,
    )
    assert outcome.status is not None
    assert conditions({"status": outcome.status})["Ready"]["status"] == "True"
    assert outcome.reads == {
        ("ClusterOCIRegistry", "", "base"),
        ("Secret", "ocireg-system", "creds"),
    }
    assert set(seen) == outcome.reads
    assert outcome.wake_in == config.resync_seconds
    # Re-verification comes first when it is sooner than the resync.
    obj = body(refresh={"interval": "2m"})
    outcome = run(kube, obj, schedule.Memory(), now=0)
    assert outcome.wake_in == 120


def test_a_missing_input_is_still_a_read_and_the_failure_wakes_at_its_retry(
    kube: FakeKube, verified: Calls
) -> None:
    # The user creates the Secret or ConfigMap later: its watch event must find this object.
    obj = body(
        auth={"basic": {"secretRef": {"name": "not-yet"}}},
        tls={"caBundleRef": {"configMap": "corp-ca", "key": "ca.crt"}},
    )
    outcome = run(kube, obj, schedule.Memory(), now=0)
    assert ("ConfigMap", "ocireg-system", "corp-ca") in outcome.reads
    obj = body(auth={"basic": {"secretRef": {"name": "not-yet"}}})
    outcome = run(kube, obj, schedule.Memory(), now=0)
    assert ("Secret", "ocireg-system", "not-yet") in outcome.reads
    assert outcome.memory.failures == 1
    assert outcome.wake_in == pytest.approx(outcome.memory.retry_at)


class CountingKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        self.reads += 1
        return super().read_secret(namespace, name)


def first_run(kube: FakeKube, obj: dict) -> tuple[reconcile.Outcome, reconcile.Known]:
    """The object's first run, and what a later run is handed as known from it."""
    first = run(kube, obj, schedule.Memory(), now=0)
    assert first.spec is not None
    assert first.credential is not None
    assert first.tls is not None
    return first, (first.spec, first.credential, first.tls)


def test_a_resync_with_nothing_changed_reads_nothing_and_keeps_what_it_depends_on(
    verified: Calls,
) -> None:
    kube = CountingKube()
    next(_setup(kube))
    try:
        obj = body()
        first, known = first_run(kube, obj)
        config = OperatorConfig(credentials_namespace="ocireg-system")
        reads, calls = kube.reads, len(verified)
        resync = reconcile.reconcile(
            kube,  # type: ignore[arg-type]
            REF,
            obj,
            config,
            first.memory,
            config.resync_seconds + 1,
            sync=kube.sync,  # type: ignore[arg-type]
            known=known,
        )
        assert kube.reads == reads  # no API read
        assert len(verified) == calls  # no registry call
        assert resync.reads is None  # what it depends on is left as it was
        assert resync.memory.synced_at == config.resync_seconds + 1
        # Re-verification due: it reads (and verifies) again, whatever it was handed.
        due = reconcile.reconcile(
            kube,  # type: ignore[arg-type]
            REF,
            obj,
            config,
            resync.memory,
            3600 + 1,
            sync=kube.sync,  # type: ignore[arg-type]
            known=known,
        )
        assert kube.reads == reads + 1
        assert len(verified) == calls + 1
        assert due.reads == {("Secret", "ocireg-system", "creds")}
    finally:
        kube.close()


def test_a_quiet_resync_costs_no_sync_and_no_status(verified: Calls) -> None:
    """Nothing it read and nothing its last resync looked at changed: the resync's answer
    would be the last one's, so it runs no namespace check and builds no status."""
    kube = CountingKube()
    next(_setup(kube))
    try:
        obj = body()
        first, known = first_run(kube, obj)
        config = OperatorConfig(credentials_namespace="ocireg-system")
        synced: list[object] = []

        def sync(*args: Any) -> Any:
            synced.append(args)
            return kube.sync(*args)

        def resync_at(now: float, memory: schedule.Memory, quiet: bool) -> reconcile.Outcome:
            return reconcile.reconcile(
                kube,  # type: ignore[arg-type]
                REF,
                obj,
                config,
                memory,
                now,
                sync=sync,
                known=known,
                quiet=lambda: quiet,
            )

        due = config.resync_seconds + 1
        skipped = resync_at(due, first.memory, quiet=True)
        assert synced == []
        assert skipped.status is None
        assert skipped.memory.synced_at == due  # the resync counts as done
        assert skipped.wake_in >= config.resync_seconds - 1  # next one a period later
        assert resync_at(due, first.memory, quiet=False).status is not None
        assert len(synced) == 1
        # Not quiet enough when the inputs are due to be read again (re-verification).
        resync_at(3600 + 1, first.memory, quiet=True)
        assert len(synced) == 2
    finally:
        kube.close()


# ------------------------------------------------------------------- refresh requests


def test_a_refresh_request_verifies_and_writes_again_once_per_value(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    memory = run(kube, obj, schedule.Memory(), now=0).memory
    calls = len(verified)
    obj["metadata"]["annotations"] = {"ocireg.dev/refresh-requested-at": "2026-12-07T15:00:00Z"}
    outcome = run(kube, obj, memory, now=5)  # nothing else is due at 5 s
    assert len(verified) == calls + 1
    assert obj["status"]["lastHandledRefreshAt"] == "2026-12-07T15:00:00Z"
    assert "Refreshed" in [e[1] for e in outcome.events]
    # The same value again (a resync, a restart's resume) does nothing.
    again = run(kube, obj, outcome.memory, now=6)
    assert len(verified) == calls + 1
    assert again.status is None
    # Flux's annotation is handled the same way, recorded under Flux's field.
    obj["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"] = "now"
    run(kube, obj, again.memory, now=7)
    assert len(verified) == calls + 2
    assert obj["status"]["lastHandledReconcileAt"] == "now"


def test_a_refresh_request_retries_a_failing_object_at_once_and_is_recorded(
    kube: FakeKube, verified: Calls
) -> None:
    obj = body()
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": "wrong"})
    failed = run(kube, obj, schedule.Memory(), now=0)
    calls = len(verified)
    obj["metadata"]["annotations"] = {"reconcile.fluxcd.io/requestedAt": "a"}
    outcome = run(kube, obj, failed.memory, now=1)  # well inside the backoff
    assert len(verified) == calls + 1
    assert obj["status"]["lastHandledReconcileAt"] == "a"
    assert outcome.memory.failures == 2


def test_a_failure_is_logged_once_until_it_changes(
    kube: FakeKube, verified: Calls, caplog: pytest.LogCaptureFixture
) -> None:
    obj = body()
    kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": "wrong"})
    with caplog.at_level("INFO", logger="ocireg"):
        memory = run(kube, obj, schedule.Memory(), now=0).memory
        for _ in range(3):
            memory = run(kube, obj, memory, now=memory.retry_at + 1).memory
        kube.secrets.pop(("ocireg-system", "creds"))
        memory = run(kube, obj, memory, now=memory.retry_at + 1).memory
        kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": PASSWORD})
        run(kube, obj, memory, now=memory.retry_at + 1)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("ocireg")]
    assert lines == [
        (
            "WARNING",
            "ClusterOCIRegistry/corp failed: AuthenticationFailed: registry.example.com refused "
            "the credentials (retrying with backoff)",
        ),
        (
            "WARNING",
            "ClusterOCIRegistry/corp failed: SecretNotFound: Secret ocireg-system/creds does not "
            "exist (retrying with backoff)",
        ),
        ("INFO", "ClusterOCIRegistry/corp works again after 5 failed attempt(s)"),
    ]
    assert "wrong" not in caplog.text


# ------------------------------------------------------------------- the Runtime's status write


class StatusKube(FakeKube):
    """The fake API with the registry object's status subresource, which can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.status_writes: list[dict[str, Any]] = []
        self.refuse_status = False

    def patch_registry_status(self, ref: RegistryRef, status: dict[str, Any]) -> None:
        if self.refuse_status:
            raise RuntimeError("the API server is away")
        self.status_writes.append(status)


class NoEvents:
    def post(self, *_: Any) -> None:
        pass


def test_a_status_the_api_refused_is_written_by_the_next_run_even_a_quiet_one(
    verified: Calls,
) -> None:
    """A run whose status write fails leaves nothing behind that would let the next run
    (its retry) skip the write: not its schedule, and not its quiet-resync record."""
    from ocireg.providers.cache import MintCache
    from ocireg.pullsecrets.runtime import Runtime

    kube = StatusKube()
    next(_setup(kube))
    resync = kube.fanout.resync

    def following(*args: Any) -> Any:  # the watches catch up before each resync
        kube.fanout.index = index_of(kube)
        return resync(*args)

    kube.fanout.resync = following  # type: ignore[method-assign]
    config = OperatorConfig(credentials_namespace="ocireg-system", resync_seconds=300)
    running = Runtime(config, kube, None, kube.registries_, MintCache(), NoEvents())  # type: ignore[arg-type]
    running.fanout = kube.fanout
    tracked = running.registries.get(REF)
    tracked.body = body()
    try:
        running.work(REF, tracked, tracked.body)  # created: verified, written, status written
        assert kube.status_writes[-1]["targets"]["namespaces"] == 2
        # A namespace labelled: its own job writes the copy (a watch event), the status
        # catches up at the next resync.
        kube.add_namespace("team-c", pull="yes")
        kube.fanout.index = index_of(kube)
        kube.fanout.namespace("team-c")
        kube.fanout.index = index_of(kube)
        due = dataclasses.replace(tracked.memory, synced_at=tracked.memory.synced_at - 301)
        tracked.memory = due
        kube.refuse_status = True
        with pytest.raises(RuntimeError):
            running.work(REF, tracked, tracked.body)  # the resync: namespaces 3, not written
        kube.refuse_status, writes = False, len(kube.status_writes)
        running.work(REF, tracked, tracked.body)  # its retry
        assert len(kube.status_writes) == writes + 1
        assert kube.status_writes[-1]["targets"]["namespaces"] == 3
    finally:
        kube.close()


@pytest.mark.parametrize(
    ("targets", "written"),
    [
        ({}, "pull secrets"),
        ({"argoCD": {}}, "pull secrets and Argo CD Secrets"),
    ],
)
def test_the_conditions_name_what_was_written(targets: dict, written: str) -> None:
    spec = RegistrySpec.model_validate(
        {"server": "registry.example.com", "auth": {"anonymous": {}}, "targets": targets}
    )
    credential = Credential("basic", ("registry.example.com",), "u", "p")
    synced = {"namespaces": 3, "serviceAccounts": 3, "failed": [], "failedCount": 0}
    status = reconcile._success_status(spec, credential, 1, {}, synced, "now", "later")
    found = {c["type"]: c for c in status["conditions"]}
    assert found["Ready"]["message"] == f"credentials verified and {written} written"
    assert found["TargetsSynced"]["message"] == f"{written} in 3 namespace(s)"
