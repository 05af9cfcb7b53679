"""Restarts that cost nothing while credentials are valid (issue "ten times the cluster",
item 3): a restarted operator reuses a minted credential from the Secrets it wrote, only when
the object's status seal (providers/seal.py) proves it is exactly what this object minted
from these inputs, and only while it is not due; and resumes the verification schedule the
status records, so it writes nothing. Everything else mints as before.

- the pure decision (providers/recall.py): every way a copy or the record can differ from
  what was sealed, each refused;
- the mint cache: one path for every provider, kept only while not due, with the same
  renewal time as before the restart;
- every minting provider (webhook, ECR, GCP, ACR) through providers.resolve: 0 mints after a
  restart, a mint when the key, an input or the spec changed;
- the reconcile with namespace jobs on an in-memory cluster: 0 mints, 0 writes, the same
  status and no registry call after a restart; a tenant's edited copy or forged record never
  handed out; static providers too;
- the operator's key: made once, read back, never a short or foreign one."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from ocireg.api.credential import Credential
from ocireg.api.names import SEAL_KEY_FIELD, SEAL_KEY_SECRET
from ocireg.api.ownership import RegistryRef
from ocireg.api.spec import Format, RegistrySpec, Targets
from ocireg.providers import BACKENDS, ResolveContext, acr, ecr, gcp, recall, resolve, seal, webhook
from ocireg.providers.cache import MintCache
from ocireg.providers.recall import recalled
from ocireg.providers.seal import Sealer
from ocireg.pullsecrets import plan, reconcile, schedule
from ocireg.settings import OperatorConfig
from tests.unit.test_mint_keys import ECR_KEYS, GCP, acr_auth, gcp_key
from tests.unit.test_reconcile import FakeKube, index_of

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
SERVER = "registry.example.com"
REF = RegistryRef("ClusterOCIRegistry", "corp", None, "uid-1")
TARGETS = Targets(formats=list(Format))
READY = {"type": "CredentialsReady", "status": "True", "observedGeneration": 1}


def fingerprint_for(generation: int = 1, spec: object = "spec") -> recall.Fingerprint:
    def fingerprint(credential: Credential) -> str:
        return schedule.fingerprint(spec, credential.fingerprint_parts(), None, generation)

    return fingerprint


def minted(**fields: Any) -> Credential:
    base: dict[str, Any] = {
        "provider": "webhook",
        "endpoints": (SERVER,),
        "username": "robot",
        "password": "t0ken-minted",
        "expires_at": T0 + dt.timedelta(hours=1, microseconds=123),
        "issued_at": T0,
        "minted_from": "inputs-1",
    }
    return Credential(**{**base, **fields})


def record_of(
    credential: Credential,
    sealer: Sealer,
    ref: RegistryRef = REF,
    fingerprint: recall.Fingerprint | None = None,
    refreshed: str = "2026-03-01T12:00:01Z",
) -> dict[str, Any]:
    """status.credentials as reconcile writes it for ``credential``."""
    fingerprint = fingerprint or fingerprint_for()
    record: dict[str, Any] = {
        "provider": credential.provider,
        "endpoints": list(credential.endpoints),
        "refreshedAt": refreshed,
        "nextRefreshAt": "2026-03-01T12:48:00Z",
    }
    if credential.expires_at is not None:
        record["expiresAt"] = credential.expires_at.isoformat().replace("+00:00", "Z")
    record.update(
        recall.status_record(sealer, ref.uid, fingerprint(credential), credential, refreshed)
    )
    return record


def copy_of(
    credential: Credential,
    namespace: str = "team-a",
    ref: RegistryRef = REF,
    fmt: Format = Format.dockerconfigjson,
) -> tuple[str, dict[str, Any]]:
    """A copy as the namespace jobs write it (and the API returns it)."""
    for desired in plan.desired_secrets(ref, TARGETS, credential, namespace):
        body = desired.body()
        if body["type"] == recall.SECRET_TYPES[fmt]:
            body["metadata"]["uid"] = "secret-uid"
            return namespace, body
    raise AssertionError(fmt)


def decide(
    record: Mapping[str, Any] | None,
    found: tuple[str, Mapping[str, Any]] | None,
    *,
    ref: RegistryRef = REF,
    fmt: Format = Format.dockerconfigjson,
    minted_from: str = "inputs-1",
    fingerprint: recall.Fingerprint | None = None,
    sealer: Sealer | None = None,
) -> recall.Recalled:
    status = None if record is None else {"credentials": record, "conditions": [READY]}
    return recalled(
        ref,
        status,
        1,
        fmt,
        found,
        minted_from,
        fingerprint or fingerprint_for(),
        sealer or Sealer(KEY),
    )


def _dockerconfig(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(body["data"][".dockerconfigjson"]))


def _set_dockerconfig(body: dict[str, Any], config: dict[str, Any]) -> None:
    body["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(config).encode()).decode()


# ------------------------------------------------------------------------ the pure decision


@pytest.mark.parametrize("fmt", list(Format))
def test_a_sealed_copy_is_read_back_exactly(fmt: Format) -> None:
    credential = minted()
    found = decide(record_of(credential, Sealer(KEY)), copy_of(credential, fmt=fmt), fmt=fmt)
    assert found.credential is not None, found.why
    assert found.credential.fingerprint_parts() == credential.fingerprint_parts()
    assert found.credential.issued_at == credential.issued_at
    assert found.credential.expires_at == credential.expires_at  # microseconds and all
    assert found.namespace == "team-a"
    # What the namespace jobs would write from it is byte for byte what the copy holds.
    again = plan.desired_secrets(REF, TARGETS, found.credential, "team-a")
    assert [d.data for d in again] == [
        d.data for d in plan.desired_secrets(REF, TARGETS, credential, "team-a")
    ]


def test_several_endpoints_and_docker_hub_are_read_back() -> None:
    hosts = ("docker.io", "1.dkr.ecr.eu-west-1.x", "1.dkr.ecr.us-east-2.x")
    credential = minted(
        endpoints=hosts,
        password="pw-hub",
        passwords=((hosts[0], "pw-hub"), (hosts[1], "pw-eu"), (hosts[2], "pw-us")),
    )
    found = decide(record_of(credential, Sealer(KEY)), copy_of(credential))
    assert found.credential is not None, found.why
    assert [found.credential.password_for(h) for h in hosts] == ["pw-hub", "pw-eu", "pw-us"]


def _edit_copy(change: Callable[[dict[str, Any]], None]) -> Callable[[Any, Any], None]:
    def edit(record: dict[str, Any], body: dict[str, Any]) -> None:
        change(body)

    return edit


def _edit_record(**fields: Any) -> Callable[[Any, Any], None]:
    def edit(record: dict[str, Any], body: dict[str, Any]) -> None:
        record.update(fields)

    return edit


def _own_password(body: dict[str, Any]) -> None:
    config = _dockerconfig(body)
    entry = config["auths"][SERVER]
    entry.update(password="tenant-planted", auth=base64.b64encode(b"robot:tenant-planted").decode())
    _set_dockerconfig(body, config)


def _own_username(body: dict[str, Any]) -> None:
    config = _dockerconfig(body)
    config["auths"][SERVER]["username"] = "mallory"
    _set_dockerconfig(body, config)


def _other_host(body: dict[str, Any]) -> None:
    config = _dockerconfig(body)
    config["auths"] = {"evil.example.com": config["auths"][SERVER]}
    _set_dockerconfig(body, config)


def _label(key: str, value: str | None) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        labels = body["metadata"]["labels"]
        if value is None:
            labels.pop(key)
        else:
            labels[key] = value

    return change


def _seal_under(key: bytes, **overrides: Any) -> Callable[[Any, Any], None]:
    """The record resealed by someone holding ``key`` (not the operator's), for the values
    the record shows, with ``overrides`` (a forged expiry, say)."""

    def edit(record: dict[str, Any], body: dict[str, Any]) -> None:
        record.update(overrides)
        forged = minted(
            expires_at=dt.datetime.fromisoformat(record["expiresAt"].replace("Z", "+00:00"))
        )
        fake = recall.status_record(
            Sealer(key), REF.uid, fingerprint_for()(forged), forged, record["refreshedAt"]
        )
        record["seal"] = fake["seal"]

    return edit


FAR = "2027-03-01T12:00:00Z"
HOSTILE = {
    "the tenant's own password in the copy": _edit_copy(_own_password),
    "another username in the copy": _edit_copy(_own_username),
    "the copy's entry moved to another host": _edit_copy(_other_host),
    "the copy not labelled as ocireg's": _edit_copy(_label(plan.MANAGED_BY, None)),
    "the copy labelled as another object's": _edit_copy(_label(plan.LABEL_UID, "uid-2")),
    "the copy labelled as another kind's": _edit_copy(_label(plan.LABEL_KIND, "OCIRegistry")),
    "the copy's type changed": _edit_copy(lambda body: body.update(type="Opaque")),
    "the copy's data not JSON": _edit_copy(
        lambda body: body["data"].update({".dockerconfigjson": base64.b64encode(b"{").decode()})
    ),
    "the copy emptied": _edit_copy(lambda body: body.update(data={})),
    "a far expiry in the record": _edit_record(expiresAt=FAR),
    "another issue time in the record": _edit_record(issuedAt="2026-03-01T12:30:00Z"),
    "a later verification in the record": _edit_record(refreshedAt="2026-03-01T13:00:00Z"),
    "another provider in the record": _edit_record(provider="ecr"),
    "another endpoint in the record": _edit_record(endpoints=[SERVER, "evil.example.com"]),
    "a seal of the right length, made up": _edit_record(seal="0" * 32),
    "a seal made with another key": _seal_under(OTHER_KEY),
    "a far expiry resealed with another key": _seal_under(OTHER_KEY, expiresAt=FAR),
    "no seal": _edit_record(seal=None),
    "an expiry that is not a time": _edit_record(expiresAt="soon"),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_an_edited_copy_or_record_is_never_reused(what: str) -> None:
    credential = minted()
    record = record_of(credential, Sealer(KEY))
    _, body = copy_of(credential)
    HOSTILE[what](record, body)
    found = decide(record, ("team-a", body))
    assert found.credential is None, what
    assert "tenant-planted" not in found.why


def test_what_this_object_would_not_mint_now_is_not_reused() -> None:
    credential = minted()
    record, found = record_of(credential, Sealer(KEY)), copy_of(credential)
    assert decide(record, found).credential is not None
    # Other inputs (a new header, secret key, role, TLS...: another mint key).
    assert decide(record, found, minted_from="inputs-2").credential is None
    # Another spec or generation, or a CA bundle: what reconcile verifies is another thing.
    assert decide(record, found, fingerprint=fingerprint_for(generation=2)).credential is None
    assert decide(record, found, fingerprint=fingerprint_for(spec="other")).credential is None
    # Another object: a predecessor of the same name (other uid), or the same name in a tenant.
    twin = RegistryRef("ClusterOCIRegistry", "corp", None, "uid-2")
    assert decide(record, found, ref=twin).credential is None
    assert decide(record, found, ref=replace(REF, uid=None)).credential is None
    # The operator's key lost or replaced (the Secret deleted): nothing sealed before counts.
    assert decide(record, found, sealer=Sealer(OTHER_KEY)).credential is None
    assert decide(record, found, sealer=Sealer()).credential is None
    # No copy, no record.
    assert decide(record, None).credential is None
    assert decide(None, found).credential is None
    assert decide({k: v for k, v in record.items() if k != "issuedAt"}, found).credential is None


def test_a_credential_whose_last_verification_failed_is_not_reused() -> None:
    """A restart stays the way to get a fresh mint after the registry refused one."""
    credential = minted()
    record, found = record_of(credential, Sealer(KEY)), copy_of(credential)
    for ready in (
        {**READY, "status": "False", "reason": "AuthenticationFailed"},
        {**READY, "observedGeneration": 0},
        None,
    ):
        status = {"credentials": record, "conditions": [ready] if ready else []}
        got = recalled(
            REF,
            status,
            1,
            Format.dockerconfigjson,
            found,
            "inputs-1",
            fingerprint_for(),
            Sealer(KEY),
        )
        assert got.credential is None, ready


def test_a_copy_replayed_from_before_a_renewal_is_not_reused() -> None:
    """A tenant who kept an older copy (the operator's own, sealed then) and puts it back:
    the record in the status is the newer one, so the older copy does not match it."""
    sealer = Sealer(KEY)
    old = minted(password="t0ken-old", issued_at=T0 - dt.timedelta(minutes=50))
    new = minted()
    assert decide(record_of(new, sealer), copy_of(old)).credential is None
    assert decide(record_of(old, sealer), copy_of(old)).credential is not None


def test_a_tenant_object_owns_no_copy_outside_its_namespace() -> None:
    sealer = Sealer(KEY)
    mine = RegistryRef("OCIRegistry", "corp", "team-a", "uid-t")
    credential = minted()
    record = record_of(credential, sealer, ref=mine)
    assert decide(record, copy_of(credential, "team-a", mine), ref=mine).credential is not None
    assert decide(record, copy_of(credential, "team-b", mine), ref=mine).credential is None


def test_the_copy_read_back_is_one_most_copies_agree_with_and_ours() -> None:
    labels = REF.labels()
    notes = REF.annotations()
    other = RegistryRef("ClusterOCIRegistry", "corp", None, "uid-2").labels()
    candidates = [
        ("team-a", labels, notes, b"edited"),
        ("team-b", labels, notes, b"sealed"),
        ("team-c", labels, notes, b"sealed"),
        ("team-d", other, notes, b"x"),
    ]
    assert recall.choose_copy(REF, candidates) == "team-b"
    assert recall.choose_copy(REF, candidates[:1] + candidates[3:]) == "team-a"
    assert recall.choose_copy(REF, candidates[3:]) is None
    # A tie: the first namespace by name, whatever order the index lists them in.
    assert recall.choose_copy(REF, [candidates[2], candidates[0]]) == "team-a"


def test_the_record_holds_no_credential_and_no_checkable_digest_of_an_input() -> None:
    credential = minted()
    record = record_of(credential, Sealer(KEY))
    text = json.dumps(record)
    for value in credential.secret_values():
        assert value not in text
    assert set(record) - {"provider", "endpoints", "refreshedAt", "nextRefreshAt", "expiresAt"} == {
        "issuedAt",
        "seal",
    }
    assert len(record["seal"]) == 32
    # Without the key the same inputs give another seal: nothing to check a guess against.
    assert record_of(credential, Sealer(OTHER_KEY))["seal"] != record["seal"]


# ------------------------------------------------------------------------ the mint cache


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def counting_mint(
    lifetime: dt.timedelta | None, clock: Clock
) -> tuple[list[int], Callable[[], Credential]]:
    calls: list[int] = []

    def mint() -> Credential:
        calls.append(1)
        expires = clock.now + lifetime if lifetime is not None else None
        return Credential("webhook", (SERVER,), "robot", f"minted-{len(calls)}", expires_at=expires)

    return calls, mint


def restarted(
    before: MintCache, credential: Credential, clock: Clock, key: bytes = KEY
) -> tuple[MintCache, Callable[[str], Credential | None]]:
    """A new process's cache and a recall vouching for ``credential`` (as its copies and
    status would, through recall.recalled)."""
    after = MintCache(clock, Sealer(key))
    record = record_of(credential, before.sealer)

    def vouch(minted_from: str) -> Credential | None:
        return decide(
            record, copy_of(credential), minted_from=minted_from, sealer=after.sealer
        ).credential

    return after, vouch


def test_a_vouched_credential_is_kept_instead_of_minting_with_the_same_renewal() -> None:
    clock = Clock()
    calls, mint = counting_mint(dt.timedelta(hours=1), clock)
    before = MintCache(clock, Sealer(KEY))
    first = before.get(("webhook", "k"), "20%", mint)
    renewal = before.next_renewal(first, "20%")
    assert first.issued_at == T0
    assert first.minted_from is not None
    clock.now = T0 + dt.timedelta(minutes=10)
    after, vouch = restarted(before, first, clock)
    again = after.get(("webhook", "k"), "20%", mint, recall=vouch)
    assert calls == [1]
    assert (after.mints["webhook"], after.reused["webhook"]) == (0, 1)
    assert again.fingerprint_parts() == first.fingerprint_parts()
    assert after.next_renewal(again, "20%") == renewal  # the same jitter: the same moment
    assert after.get(("webhook", "k"), "20%", mint, recall=vouch) is again  # kept
    # At its renewal time it is renewed, as it would have been without the restart.
    assert renewal is not None
    clock.now = renewal
    assert after.get(("webhook", "k"), "20%", mint, recall=vouch).password == "minted-2"


def test_a_vouched_credential_due_for_renewal_is_minted_again() -> None:
    clock = Clock()
    _calls, mint = counting_mint(dt.timedelta(hours=1), clock)
    before = MintCache(clock, Sealer(KEY))
    first = before.get(("webhook", "k"), "20%", mint)
    clock.now = T0 + dt.timedelta(minutes=49)  # past expiry minus renewBefore (48 min at most)
    after, vouch = restarted(before, first, clock)
    assert after.get(("webhook", "k"), "20%", mint, recall=vouch).password == "minted-2"
    assert after.reused["webhook"] == 0
    # renewBefore is the object's: a larger one makes the same credential due sooner.
    clock.now = T0 + dt.timedelta(minutes=31)
    after, vouch = restarted(before, first, clock)
    assert after.get(("webhook", "k"), "70%", mint, recall=vouch).password == "minted-3"


def test_a_credential_without_expiry_is_reused_within_the_refresh_interval_only() -> None:
    clock = Clock()
    _calls, mint = counting_mint(None, clock)
    hour = dt.timedelta(hours=1)
    before = MintCache(clock, Sealer(KEY))
    first = before.get(("webhook", "k"), "20%", mint, max_age=hour)
    clock.now = T0 + dt.timedelta(minutes=59)
    after, vouch = restarted(before, first, clock)
    assert (
        after.get(("webhook", "k"), "20%", mint, max_age=hour, recall=vouch).password == "minted-1"
    )
    clock.now = T0 + hour
    after, vouch = restarted(before, first, clock)
    assert (
        after.get(("webhook", "k"), "20%", mint, max_age=hour, recall=vouch).password == "minted-2"
    )


def test_recall_is_asked_once_and_never_while_backing_off() -> None:
    from ocireg.api.errors import ReconcileError

    clock = Clock()
    asked: list[str] = []

    def nothing(minted_from: str) -> Credential | None:
        asked.append(minted_from)
        return None

    def failing() -> Credential:
        raise ReconcileError("WebhookError", "HTTP 503", transient=True)

    cache = MintCache(clock, Sealer(KEY))
    for _ in range(3):
        with pytest.raises(ReconcileError):
            cache.get(("webhook", "k"), "20%", failing, recall=nothing)
    assert len(asked) == 1  # then the failure's backoff, not a copy read per tick

    def broken(minted_from: str) -> Credential | None:
        raise OSError("the API server went away")

    _calls, mint = counting_mint(dt.timedelta(hours=1), clock)
    assert cache.get(("webhook", "k2"), "20%", mint, recall=broken).password == "minted-1"


# ------------------------------------------------------------ every minting provider, one path


Store = dict[tuple[str, str], dict[str, bytes]]
WEBHOOK = {"webhook": {"url": "https://creds.example.com/x", "headersSecretRef": {"name": "hook"}}}
# method -> (auth, Secrets in the credentials namespace "ops", the Secret an input is in)
PROVIDERS: dict[str, tuple[dict[str, Any], Store, tuple[str, str]]] = {
    "webhook": (WEBHOOK, {("ops", "hook"): {"X-Api-Key": b"platform-key"}}, ("ops", "hook")),
    "ecr": (
        ECR_KEYS,
        {("ops", "aws"): {"accessKeyId": b"AKID", "secretAccessKey": b"s3cret"}},
        ("ops", "aws"),
    ),
    "gcp": (
        GCP,
        {("ops", "gcp"): {"key.json": gcp_key("-----BEGIN PRIVATE KEY-----a")}},
        ("ops", "gcp"),
    ),
    "acr": (
        acr_auth({"secretRef": {"name": "app"}}),
        {("ops", "app"): {"clientSecret": b"app-s3cret"}},
        ("ops", "app"),
    ),
}
MODULES = {"webhook": webhook, "ecr": ecr, "gcp": gcp, "acr": acr}


def test_every_minting_backend_is_covered() -> None:
    assert set(PROVIDERS) == {method for method, b in BACKENDS.items() if b.mints}


class Minting:
    """Stands in for a provider's mint: every call a new credential, expiring in 1 h."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Credential:
        self.calls += 1
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return Credential(
            self.provider, (SERVER,), "user", f"minted-{self.calls}", expires_at=expires
        )


def _reader(store: Store) -> Callable[[str, str], Mapping[str, bytes]]:
    from ocireg.api.errors import ReconcileError

    def read(namespace: str, name: str) -> Mapping[str, bytes]:
        if (namespace, name) not in store:
            raise ReconcileError("SecretNotFound", f"{namespace}/{name}")
        return store[(namespace, name)]

    return read


class Process:
    """One operator process's view: its cache, and what it wrote (copies, status record)."""

    def __init__(self, key: bytes | None) -> None:
        self.cache = MintCache(sealer=Sealer(key))

    def resolve(
        self,
        spec: RegistrySpec,
        store: Store,
        record: Mapping[str, Any] | None = None,
        copies: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
    ) -> Credential:
        targets = spec.effective_targets
        argocd = plan.argocd_secret_name(targets, REF.name)
        vouch = recall.recaller(
            REF,
            None if record is None else {"credentials": record, "conditions": [READY]},
            1,
            targets.formats,
            plan.secret_names(targets, REF.name),
            (lambda ref, name: (copies or {}).get(name)) if copies is not None else None,
            fingerprint_for(),
            self.cache.sealer,
            argocd=argocd,
        )
        ctx = ResolveContext(_reader(store), "ops", False, cache=self.cache, recall=vouch)
        return resolve(spec, ctx)


def _converged(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Minting, RegistrySpec, Store, dict[str, Any], dict[str, tuple[str, Mapping[str, Any]]]]:
    auth, store, _ = PROVIDERS[method]
    mint = Minting(method)
    monkeypatch.setattr(MODULES[method], "mint", mint)
    spec = RegistrySpec.model_validate({"server": SERVER, "auth": auth})
    first = Process(KEY).resolve(spec, copy.deepcopy(store))
    assert mint.calls == 1
    record = record_of(first, Sealer(KEY))
    name = plan.secret_names(spec.effective_targets, REF.name)[Format.dockerconfigjson]
    written = {name: copy_of(first, "team-a")}
    return mint, spec, store, record, written


@pytest.mark.parametrize("method", sorted(PROVIDERS))
def test_every_minting_provider_reuses_after_a_restart(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mint, spec, store, record, written = _converged(method, monkeypatch)
    process = Process(KEY)
    again = process.resolve(spec, copy.deepcopy(store), record, written)
    assert mint.calls == 1, f"{method} minted again after a restart"
    assert process.cache.reused[method] == 1
    assert process.cache.mints[method] == 0
    assert again.password == "minted-1"


@pytest.mark.parametrize("method", sorted(PROVIDERS))
def test_an_object_for_argo_cd_only_reuses_what_its_argo_cd_secret_holds(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ClusterOCIRegistry that selects no namespace and writes only an Argo CD Secret has no
    pull secret to read back after a restart: its Argo CD Secret is read instead, under the
    same seal; an edited one is not reused."""
    auth, store, _ = PROVIDERS[method]
    mint = Minting(method)
    monkeypatch.setattr(MODULES[method], "mint", mint)
    spec = RegistrySpec.model_validate(
        {"server": SERVER, "auth": auth, "targets": {"argoCD": {"namespace": "argocd"}}}
    )
    first = Process(KEY).resolve(spec, copy.deepcopy(store))
    record = record_of(first, Sealer(KEY))
    (argo,) = plan.argocd_secrets(REF, spec, first, "argocd")
    body = argo.body()
    written = {argo.name: ("argocd", body)}
    process = Process(KEY)
    again = process.resolve(spec, copy.deepcopy(store), record, written)
    assert mint.calls == 1, f"{method} minted again after a restart"
    assert process.cache.reused[method] == 1
    assert again.password == first.password
    body["data"]["password"] = "ZWRpdGVk"  # edited
    process = Process(KEY)
    process.resolve(spec, copy.deepcopy(store), record, written)
    assert mint.calls == 2


@pytest.mark.parametrize("method", sorted(PROVIDERS))
def test_every_minting_provider_mints_when_an_input_or_the_key_changed(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mint, spec, store, record, written = _converged(method, monkeypatch)
    # An input Secret changed while the operator was down (a rotated key or header).
    _, _, where = PROVIDERS[method]
    changed = copy.deepcopy(store)
    changed[where] = {
        k: (gcp_key("-----BEGIN PRIVATE KEY-----b") if k == "key.json" else v + b"-rotated")
        for k, v in changed[where].items()
    }
    assert Process(KEY).resolve(spec, changed, record, written).password == "minted-2"
    # The operator's key is not the one the record was sealed with (lost, or none at all).
    assert Process(OTHER_KEY).resolve(spec, store, record, written).password == "minted-3"
    assert Process(None).resolve(spec, store, record, written).password == "minted-4"
    # No copy to read back from.
    assert Process(KEY).resolve(spec, store, record, {}).password == "minted-5"
    assert mint.calls == 5


# ------------------------------------------------------------ the reconcile, restarted


PASSWORD = "s3cret-pa55"


class Registry:
    """Verification stands in here: what the registry accepts, and every call made."""

    def __init__(self) -> None:
        self.accepted: set[str] = {PASSWORD}
        self.calls: list[str | None] = []

    def verify(
        self, spec: Any, credential: Credential, tls: Any, egress_policy: Any = None
    ) -> None:
        from ocireg.api.errors import ReconcileError

        self.calls.append(credential.password)
        if credential.password not in self.accepted:
            raise ReconcileError("AuthenticationFailed", f"{spec.server} refused")


class Hook:
    """The webhook provider's mint: a new token each call, accepted by the registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.calls = 0

    def __call__(self, spec: Any, ctx: Any, headers: Any) -> Credential:
        self.calls += 1
        token = f"hook-token-{self.calls}"
        self.registry.accepted.add(token)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return Credential("webhook", (spec.server,), "robot", token, expires_at=expires)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    found = Registry()
    monkeypatch.setattr(reconcile, "verify", found.verify)
    return found


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> Hook:
    mint = Hook(registry)
    monkeypatch.setattr(webhook, "mint", mint)
    return mint


class Cluster:
    """The in-memory cluster (test_reconcile's FakeKube) and one operator process on it."""

    def __init__(self, key: bytes | None = KEY) -> None:
        self.kube = FakeKube()
        for namespace in ("ocireg-system", "team-a", "team-b", "team-c"):
            self.kube.add_namespace(namespace, pull="yes")
        self.kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": PASSWORD})
        self.kube.put_secret("ocireg-system", "hook", {"X-Api-Key": "platform-key"})
        self.cache = MintCache(sealer=Sealer(key))
        self.memory = schedule.Memory()

    def restart(self, key: bytes | None = KEY) -> Cluster:
        """The same cluster, a new process: empty cache, index and memory."""
        after = Cluster(key)
        after.kube.close()
        after.kube = FakeKube()
        for name in ("secrets", "namespaces_", "accounts", "registries"):
            setattr(after.kube, name, copy.deepcopy(getattr(self.kube, name)))
        after.kube._uid = self.kube._uid
        self.kube.close()
        return after

    def copies(self, ref: RegistryRef, name: str) -> tuple[str, dict[str, Any]] | None:
        """As pullsecrets.runtime.Runtime.copy_of, on the fake cluster's index."""
        index = index_of(self.kube)
        held = [
            (n, dict(s.labels), dict(s.annotations), s.digest)
            for n, k, s in index.secrets.items()
            if k == name
        ]
        namespace = recall.choose_copy(ref, held)
        body = None if namespace is None else self.kube.read_secret_body(namespace, name)
        return None if body is None or namespace is None else (namespace, body)

    def run(self, obj: dict[str, Any], now: float) -> reconcile.Outcome:
        config = OperatorConfig(credentials_namespace="ocireg-system")
        outcome = reconcile.reconcile(
            self.kube,  # type: ignore[arg-type]
            REF,
            obj,
            config,
            self.memory,
            now,
            sync=self.kube.sync,
            cache=self.cache,
            copies=self.copies,
        )
        self.memory = outcome.memory
        return outcome


def registry_object(auth: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "corp", "generation": 1, "uid": REF.uid},
        "spec": {
            "server": SERVER,
            "auth": auth,
            "targets": {"namespaceSelector": {"matchLabels": {"pull": "yes"}}},
            **spec,
        },
    }


HOOK_AUTH = {
    "webhook": {"url": "https://creds.example.com/x", "headersSecretRef": {"name": "hook"}}
}
BASIC_AUTH = {"basic": {"secretRef": {"name": "creds"}}}


def converge(cluster: Cluster, obj: dict[str, Any]) -> None:
    """Run until nothing is left to do, writing the status as the handlers would."""
    for now in (0.0, 10.0):
        outcome = cluster.run(obj, now)
        if outcome.status is not None:
            obj["status"] = outcome.status


def copies_data(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {
        ns: dict(cluster.kube.secrets[(ns, "corp")]["data"])
        for ns in ("ocireg-system", "team-a", "team-b", "team-c")
        if (ns, "corp") in cluster.kube.secrets
    }


def passwords(cluster: Cluster) -> dict[str, str]:
    out = {}
    for ns, data in copies_data(cluster).items():
        config = json.loads(base64.b64decode(data[".dockerconfigjson"]))
        out[ns] = config["auths"][SERVER]["password"]
    return out


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    found = Cluster()
    yield found
    found.kube.close()


def test_a_restarted_operator_mints_nothing_writes_nothing_and_asks_no_registry(
    cluster: Cluster, hook: Hook, registry: Registry
) -> None:
    obj = registry_object(HOOK_AUTH)
    converge(cluster, obj)
    assert hook.calls == 1
    assert len(registry.calls) == 1
    status, data = copy.deepcopy(obj["status"]), copies_data(cluster)
    assert {"issuedAt", "seal"} <= set(status["credentials"])

    after = cluster.restart()
    outcome = after.run(obj, 5000.0)  # a new process: monotonic time is anything
    assert hook.calls == 1, "minted again"
    assert after.kube.writes == 0, "a Secret or ServiceAccount written"
    assert len(registry.calls) == 1, "verified again at once"
    assert outcome.status == status  # the handler's comparison finds nothing to patch
    assert outcome.events == []
    assert copies_data(after) == data
    assert after.cache.reused["webhook"] == 1
    # Ticks after it: still nothing, until the verification the status announced is due.
    for now in (5010.0, 5020.0):
        assert after.run(obj, now).status is None
    assert hook.calls == 1
    assert after.kube.writes == 0
    after.kube.close()


def test_a_static_provider_restarted_asks_no_registry_and_writes_nothing(
    cluster: Cluster, registry: Registry
) -> None:
    obj = registry_object(BASIC_AUTH)
    converge(cluster, obj)
    status = copy.deepcopy(obj["status"])
    assert "issuedAt" not in status["credentials"]  # nothing minted
    after = cluster.restart()
    outcome = after.run(obj, 5000.0)
    assert (len(registry.calls), after.kube.writes) == (1, 0)
    assert outcome.status == status
    # A password changed while the operator was down is verified before it is written.
    after.kube.put_secret("ocireg-system", "creds", {"username": "robot", "password": "n3w"})
    registry.accepted.add("n3w")
    again = after.restart()
    again.run(obj, 6000.0)
    assert registry.calls[-1] == "n3w"
    assert set(passwords(again).values()) == {"n3w"}
    again.kube.close()


def test_a_tenants_edited_copy_is_put_right_and_never_handed_out(
    cluster: Cluster, hook: Hook
) -> None:
    """Alice edits, while the operator is down, the copy in her namespace (team-a): her
    password, labels and owner annotation left as they were. The cluster object's credential
    is read back from the copies she cannot write, hers is rewritten with it; no mint."""
    obj = registry_object(HOOK_AUTH)
    converge(cluster, obj)
    genuine = passwords(cluster)["team-b"]
    body = cluster.kube.secrets[("team-a", "corp")]
    config = json.loads(base64.b64decode(body["data"][".dockerconfigjson"]))
    config["auths"][SERVER]["password"] = "alice-planted"
    body["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(config).encode()).decode()
    untouched = {
        ns: cluster.kube.secrets[(ns, "corp")]["metadata"]["resourceVersion"]
        for ns in ("team-b", "team-c")
    }

    after = cluster.restart()
    after.run(obj, 5000.0)
    assert hook.calls == 1
    assert set(passwords(after).values()) == {genuine}
    assert after.kube.writes == 1  # her copy, put right
    for ns, version in untouched.items():
        assert after.kube.secrets[(ns, "corp")]["metadata"]["resourceVersion"] == version
    after.kube.close()


def test_an_edited_copy_read_back_is_minted_again(cluster: Cluster, hook: Hook) -> None:
    """When the copy read back is an edited one (here every copy is), the operator mints
    again and rewrites every copy: the planted password is never kept or handed out."""
    obj = registry_object(HOOK_AUTH)
    converge(cluster, obj)
    for key in list(cluster.kube.secrets):
        if key[1] != "corp":
            continue
        body = cluster.kube.secrets[key]
        config = json.loads(base64.b64decode(body["data"][".dockerconfigjson"]))
        config["auths"][SERVER]["password"] = "planted"
        body["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(config).encode()).decode()
    after = cluster.restart()
    after.run(obj, 5000.0)
    assert hook.calls == 2
    assert set(passwords(after).values()) == {"hook-token-2"}
    after.kube.close()


@pytest.mark.parametrize(
    "forgery",
    [
        {"expiresAt": "2027-03-01T12:00:00Z"},
        {"issuedAt": "2027-03-01T12:00:00Z"},
        {"refreshedAt": "2030-03-01T12:00:00Z"},
        {"seal": "f" * 32},
    ],
)
def test_a_forged_record_is_not_taken(
    cluster: Cluster, hook: Hook, registry: Registry, forgery: dict
) -> None:
    obj = registry_object(HOOK_AUTH)
    converge(cluster, obj)
    obj["status"]["credentials"].update(forgery)
    after = cluster.restart()
    outcome = after.run(obj, 5000.0)
    assert hook.calls == 2
    assert registry.calls[-1] == "hook-token-2"  # the new one verified before it is written
    assert set(passwords(after).values()) == {"hook-token-2"}
    assert outcome.status is not None
    for field, value in forgery.items():
        assert outcome.status["credentials"][field] != value
    after.kube.close()


def test_after_a_failed_verification_a_restart_mints_again(
    cluster: Cluster, hook: Hook, registry: Registry
) -> None:
    obj = registry_object(HOOK_AUTH)
    converge(cluster, obj)
    registry.accepted.discard("hook-token-1")  # revoked at the registry
    cluster.memory = replace(cluster.memory, verified_at=-1e9)  # its verification is due
    outcome = cluster.run(obj, 20.0)
    assert outcome.status is not None
    obj["status"] = outcome.status
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["CredentialsReady"]
    assert ready["reason"] == "AuthenticationFailed"
    after = cluster.restart()
    converge(after, obj)
    assert hook.calls == 2
    assert set(passwords(after).values()) == {"hook-token-2"}
    after.kube.close()


def test_a_changed_spec_input_or_key_mints_again(cluster: Cluster, hook: Hook) -> None:
    obj = registry_object(HOOK_AUTH)
    converge(cluster, obj)
    # The header Secret rotated while the operator was down.
    cluster.kube.put_secret("ocireg-system", "hook", {"X-Api-Key": "rotated"})
    after = cluster.restart()
    after.run(obj, 5000.0)
    assert hook.calls == 2
    converge(after, obj)
    # The spec changed (a new generation).
    changed = copy.deepcopy(obj)
    changed["metadata"]["generation"] = 2
    changed["spec"]["refresh"] = {"renewBefore": "30%"}
    again = after.restart()
    again.run(changed, 6000.0)
    assert hook.calls == 3
    converge(again, changed)
    # The operator's key Secret deleted (a new key at the next start).
    third = again.restart(key=OTHER_KEY)
    third.run(changed, 7000.0)
    assert hook.calls == 4
    third.kube.close()


# ------------------------------------------------------------------------ the key


class KeyStore:
    def __init__(self, body: dict[str, Any] | None = None, create_fails: bool = False) -> None:
        self.body = body
        self.created: list[dict[str, Any]] = []
        self.create_fails = create_fails
        self.raced: dict[str, Any] | None = None

    def read_secret_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert (namespace, name) == ("ocireg-system", SEAL_KEY_SECRET)
        return self.body

    def write_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.raced is not None:  # another replica made it first: 409
            self.body = self.raced
            raise RuntimeError("Conflict")
        if self.create_fails:
            raise RuntimeError("Forbidden")
        self.created.append(body)
        self.body = body
        return body


def test_the_key_is_made_once_and_read_back() -> None:
    store = KeyStore()
    key = seal.load_key("ocireg-system", store)
    assert key is not None
    assert len(key) == 32
    (made,) = store.created
    assert made["immutable"] is True
    assert made["type"] == "Opaque"
    assert list(made["data"]) == [SEAL_KEY_FIELD]
    assert seal.load_key("ocireg-system", store) == key
    assert len(store.created) == 1


def test_a_replica_that_loses_the_race_uses_the_winners_key() -> None:
    winner = seal.key_secret("ocireg-system")
    store = KeyStore()
    store.raced = winner
    assert seal.load_key("ocireg-system", store) == seal.key_of(winner)


def test_no_usable_key_means_a_key_of_this_process_only() -> None:
    short = {"data": {SEAL_KEY_FIELD: base64.b64encode(b"short").decode()}}
    assert seal.load_key("ocireg-system", KeyStore(short)) is None
    assert seal.load_key("ocireg-system", KeyStore(create_fails=True)) is None

    class Unreadable(KeyStore):
        def read_secret_body(self, namespace: str, name: str) -> dict[str, Any] | None:
            raise RuntimeError("Forbidden")

    assert seal.load_key("ocireg-system", Unreadable()) is None
    assert seal.key_of({"data": {SEAL_KEY_FIELD: "not base64!"}}) is None
    assert not Sealer(None).persistent
    assert Sealer(KEY).persistent
    assert Sealer().digest("x") != Sealer().digest("x")  # one key per process
