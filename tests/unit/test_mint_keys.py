"""The shared mint cache, attacked by a tenant (issue 14, point 1).

One MintCache serves every registry object of the operator. Its keys decide who gets whose
credential without the provider being asked: each test here has a victim mint a credential,
then an attacker who knows everything public about the victim's identity (and, across
namespaces, even the same secret) resolve next to it. A counting fake stands in for each
provider's mint, so the only question is whether the cache hands the victim's credential out.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.oci import TLSOptions
from ocireg.providers import ResolveContext, acr, ecr, gcp, resolve, webhook
from ocireg.providers.cache import PER_TENANT, MintCache
from ocireg.settings import OperatorConfig

Store = dict[tuple[str, str], dict[str, bytes]]


class CountingMint:
    """Stands in for a provider's mint: every call is a new credential named by its count."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.calls = 0
        self.fail_with: ReconcileError | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Credential:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return Credential(self.provider, ("r",), "user", f"minted-{self.calls}")


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], CountingMint]:
    def install(module: Any) -> CountingMint:
        fake = CountingMint(module.__name__.rsplit(".", 1)[-1])
        monkeypatch.setattr(module, "mint", fake)
        return fake

    return install


def reader(store: Store) -> Callable[[str, str], Mapping[str, bytes]]:
    def read(namespace: str, name: str) -> Mapping[str, bytes]:
        if (namespace, name) not in store:
            raise ReconcileError("SecretNotFound", f"Secret {namespace}/{name} does not exist")
        return store[(namespace, name)]

    return read


def tokens(namespace: str, name: str, audience: str) -> str:
    return f"sa-token-for-{namespace}-{name}"


def tenant(store: Store, namespace: str, cache: MintCache, **kwargs: Any) -> ResolveContext:
    return ResolveContext(reader(store), namespace, True, tokens, cache=cache, **kwargs)


def platform(store: Store, cache: MintCache, **kwargs: Any) -> ResolveContext:
    return ResolveContext(reader(store), "ops", False, tokens, cache=cache, **kwargs)


def spec(auth: dict[str, Any], server: str = "registry.example.com") -> RegistrySpec:
    return RegistrySpec.model_validate({"server": server, "auth": auth})


# ------------------------------------------------------------------------------- GCP


def gcp_key(private_key: str, **overrides: str) -> bytes:
    info = {
        "type": "service_account",
        "project_id": "victim-project",
        "private_key_id": "8f3c2e1d0b9a87654321fedcba0123456789abcd",  # public: Google lists it
        "private_key": private_key,
        "client_email": "deployer@victim-project.iam.gserviceaccount.com",  # public
        "client_id": "10987654321",
        "token_uri": "https://oauth2.googleapis.com/token",
        **overrides,
    }
    return json.dumps(info).encode()


GCP = {"gcp": {"credentials": {"secretRef": {"name": "gcp"}}}}


def test_gcp_public_email_and_key_id_with_another_private_key_get_no_cached_token(
    counting: Callable[[Any], CountingMint],
) -> None:
    """The attack from the issue: the victim's client_email and private_key_id (both public)
    next to the attacker's own private key."""
    minted = counting(gcp)
    cache = MintCache()
    store: Store = {
        ("ops", "gcp"): {"key.json": gcp_key("-----BEGIN PRIVATE KEY-----victim")},
        ("mallory", "gcp"): {"key.json": gcp_key("-----BEGIN PRIVATE KEY-----mallory")},
    }
    victim = resolve(spec(GCP), platform(store, cache))
    stolen = resolve(spec(GCP), tenant(store, "mallory", cache))
    assert stolen.password != victim.password
    assert minted.calls == 2  # the attacker's key went to the token endpoint itself


def test_gcp_same_key_shares_a_mint_only_within_one_namespace(
    counting: Callable[[Any], CountingMint],
) -> None:
    minted = counting(gcp)
    cache = MintCache()
    key = gcp_key("-----BEGIN PRIVATE KEY-----team")
    store: Store = {("team-a", "gcp"): {"key.json": key}, ("team-b", "gcp"): {"key.json": key}}
    first = resolve(spec(GCP), tenant(store, "team-a", cache))
    assert resolve(spec(GCP), tenant(store, "team-a", cache)) is first  # still one mint
    assert minted.calls == 1
    assert resolve(spec(GCP), tenant(store, "team-b", cache)).password != first.password
    assert resolve(spec(GCP), platform({("ops", "gcp"): {"key.json": key}}, cache)) is not first
    assert minted.calls == 3


def test_gcp_a_tenants_failing_mint_does_not_put_the_victim_into_backoff(
    counting: Callable[[Any], CountingMint],
) -> None:
    minted = counting(gcp)
    cache = MintCache()
    store: Store = {
        ("ops", "gcp"): {"key.json": gcp_key("-----BEGIN PRIVATE KEY-----victim")},
        ("mallory", "gcp"): {"key.json": gcp_key("-----BEGIN PRIVATE KEY-----mallory")},
    }
    minted.fail_with = ReconcileError("AccessDenied", "Google refused to issue a token")
    with pytest.raises(ReconcileError):
        resolve(spec(GCP), tenant(store, "mallory", cache))
    minted.fail_with = None
    assert resolve(spec(GCP), platform(store, cache)).password == "minted-2"


# ------------------------------------------------------------------------------- AWS ECR


ECR_KEYS = {"ecr": {"regions": ["eu-west-1"], "credentials": {"secretRef": {"name": "aws"}}}}
ROLE = "arn:aws:iam::123456789012:role/puller"


def test_ecr_keys_share_a_mint_only_within_one_namespace(
    counting: Callable[[Any], CountingMint],
) -> None:
    minted = counting(ecr)
    cache = MintCache()
    keys = {"accessKeyId": b"AKIDSHARED", "secretAccessKey": b"victim-secret"}
    store: Store = {
        ("team-a", "aws"): keys,
        ("team-b", "aws"): keys,
        ("mallory", "aws"): {"accessKeyId": b"AKIDSHARED", "secretAccessKey": b"guess"},
    }
    first = resolve(spec(ECR_KEYS), tenant(store, "team-a", cache))
    assert resolve(spec(ECR_KEYS), tenant(store, "team-a", cache)) is first
    assert resolve(spec(ECR_KEYS), tenant(store, "mallory", cache)) is not first
    assert resolve(spec(ECR_KEYS), tenant(store, "team-b", cache)) is not first
    assert minted.calls == 3


def test_ecr_web_identity_is_shared_by_the_accounts_namespace_only(
    counting: Callable[[Any], CountingMint],
) -> None:
    """A ServiceAccount's web identity is its namespace's: a cluster object naming the same
    account and role does not get (nor give) the tenant's mint."""
    minted = counting(ecr)
    cache = MintCache()
    web = {"roleArn": ROLE, "credentials": {"serviceAccountRef": {"name": "puller"}}}
    cluster_web = {
        "roleArn": ROLE,
        "credentials": {"serviceAccountRef": {"name": "puller", "namespace": "team-a"}},
    }
    first = resolve(spec({"ecr": web}), tenant({}, "team-a", cache))
    assert resolve(spec({"ecr": web}), tenant({}, "team-a", cache)) is first
    assert resolve(spec({"ecr": cluster_web}), platform({}, cache)) is not first
    assert minted.calls == 2


# ------------------------------------------------------------------------------- Azure ACR


TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"


def acr_auth(credentials: dict[str, Any], tenant_id: str = TENANT_ID) -> dict[str, Any]:
    return {"acr": {"tenantId": tenant_id, "clientId": CLIENT_ID, "credentials": credentials}}


def test_acr_client_secret_shares_a_mint_only_within_one_namespace(
    counting: Callable[[Any], CountingMint],
) -> None:
    minted = counting(acr)
    cache = MintCache()
    secret = {"clientSecret": b"app-s3cret"}
    store: Store = {
        ("team-a", "app"): secret,
        ("team-b", "app"): secret,
        ("mallory", "app"): {"clientSecret": b"not-the-secret"},
    }
    auth = acr_auth({"secretRef": {"name": "app"}})
    first = resolve(spec(auth), tenant(store, "team-a", cache))
    assert resolve(spec(auth), tenant(store, "team-a", cache)) is first
    assert resolve(spec(auth), tenant(store, "mallory", cache)) is not first
    assert resolve(spec(auth), tenant(store, "team-b", cache)) is not first
    assert minted.calls == 3


def test_acr_workload_identity_key_covers_the_entra_tenant(
    counting: Callable[[Any], CountingMint],
) -> None:
    """The same ServiceAccount and client id in another Entra tenant is another identity."""
    minted = counting(acr)
    cache = MintCache()
    workload = {"serviceAccountRef": {"name": "default"}}
    first = resolve(spec(acr_auth(workload)), tenant({}, "team-a", cache))
    other = acr_auth(workload, tenant_id="00000000-1111-2222-3333-444444444444")
    assert resolve(spec(other), tenant({}, "team-a", cache)) is not first
    assert minted.calls == 2


def test_acr_exchange_over_unverified_tls_is_not_shared_with_verified_objects(
    counting: Callable[[Any], CountingMint],
) -> None:
    """An exchange answered over unverified TLS may come from anyone on the path: a refresh
    token got that way is not handed to an object that verifies its registry."""
    minted = counting(acr)
    cache = MintCache()
    store: Store = {("team-a", "app"): {"clientSecret": b"app-s3cret"}}
    auth = acr_auth({"secretRef": {"name": "app"}})
    careless = tenant(store, "team-a", cache, registry_tls=TLSOptions(skip_verify=True))
    first = resolve(spec(auth), careless)
    assert resolve(spec(auth), tenant(store, "team-a", cache)) is not first
    assert minted.calls == 2


# ------------------------------------------------------------------------------- webhook


def test_webhook_answer_is_shared_only_within_one_namespace(
    counting: Callable[[Any], CountingMint],
) -> None:
    minted = counting(webhook)
    cache = MintCache()
    headers = {"X-Api-Key": b"team-key"}
    store: Store = {
        ("team-a", "hook"): headers,
        ("team-b", "hook"): headers,
        ("mallory", "hook"): {"X-Api-Key": b"guess"},
    }
    auth = {"webhook": {"url": "https://creds.example.com/x", "headersSecretRef": {"name": "hook"}}}
    first = resolve(spec(auth), tenant(store, "team-a", cache))
    assert resolve(spec(auth), tenant(store, "team-a", cache)) is first
    assert resolve(spec(auth), tenant(store, "mallory", cache)) is not first
    assert resolve(spec(auth), tenant(store, "team-b", cache)) is not first
    assert minted.calls == 3


def test_a_tenants_webhook_never_shares_with_a_cluster_object(
    counting: Callable[[Any], CountingMint],
) -> None:
    """A cluster object's webhook may reach internal addresses a tenant's may not: the same
    URL without headers must still be asked again for the tenant (through the address guard)."""
    minted = counting(webhook)
    cache = MintCache()
    auth = {"webhook": {"url": "https://creds.example.com/x"}}
    first = resolve(spec(auth), platform({}, cache))
    assert resolve(spec(auth), tenant({}, "team-a", cache)) is not first
    assert minted.calls == 2


def test_ambient_identity_is_shared_by_cluster_objects(
    counting: Callable[[Any], CountingMint],
) -> None:
    """The operator's own identity keeps one mint for every cluster object that uses it."""
    minted = counting(ecr)
    cache = MintCache()
    ambient = spec(
        {"ecr": {"regions": ["eu-west-1"]}}, "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    )
    config = OperatorConfig()
    first = resolve(ambient, platform({}, cache, config=config))
    assert resolve(ambient, platform({}, cache, config=config)) is first
    assert minted.calls == 1


# ------------------------------------------------------------------------------- growth


def test_a_tenant_minting_keys_at_will_evicts_only_her_own(
    counting: Callable[[Any], CountingMint],
) -> None:
    """Keys bound to secrets are keys a tenant can make at will: one per write of a random key
    into her Secret. She holds at most PER_TENANT of them; nobody else's entry makes room."""
    minted = counting(webhook)
    cache = MintCache()
    auth = {"webhook": {"url": "https://creds.example.com/x", "headersSecretRef": {"name": "h"}}}
    victim_store: Store = {("team-a", "h"): {"X-Api-Key": b"team-key"}}
    victim = resolve(spec(auth), tenant(victim_store, "team-a", cache))
    for attempt in range(3 * PER_TENANT):
        store: Store = {("mallory", "h"): {"X-Api-Key": f"random-{attempt}".encode()}}
        resolve(spec(auth), tenant(store, "mallory", cache))
    assert len(cache._entries) <= PER_TENANT + 1
    assert resolve(spec(auth), tenant(victim_store, "team-a", cache)) is victim
    assert minted.calls == 1 + 3 * PER_TENANT


def test_keys_nobody_asks_for_are_dropped() -> None:
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    cache = MintCache(lambda: now[0])
    calls: list[str] = []

    def mint() -> Credential:
        calls.append("x")
        return Credential("ecr", ("r",), "AWS", f"pw-{len(calls)}")

    cache.get(("ecr", "rotated-away"), "20%", mint, max_age=dt.timedelta(hours=1))
    for minutes in range(0, 3 * 60, 10):  # an object still in use asks every tick
        now[0] = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
        cache.get(("ecr", "in-use"), "20%", mint, max_age=dt.timedelta(days=1))
    assert set(cache._entries) == {("ecr", "in-use")}
    assert set(cache._key_locks) == {("ecr", "in-use")}


def test_a_fresh_request_mints_again_even_while_cached_or_backing_off() -> None:
    cache = MintCache()
    mint = CountingMint("webhook")
    first = cache.get(("webhook", "k"), "20%", mint, dt.timedelta(hours=1))
    assert cache.get(("webhook", "k"), "20%", mint, dt.timedelta(hours=1)) is first
    assert mint.calls == 1
    fresh = cache.get(("webhook", "k"), "20%", mint, dt.timedelta(hours=1), fresh=True)
    assert mint.calls == 2
    assert fresh is not first
    # The fresh credential is the one kept for everyone who shares the key.
    assert cache.get(("webhook", "k"), "20%", mint, dt.timedelta(hours=1)) is fresh
    mint.fail_with = ReconcileError("WebhookError", "down")
    with pytest.raises(ReconcileError):
        cache.get(("webhook", "j"), "20%", mint, dt.timedelta(hours=1))
    calls = mint.calls
    with pytest.raises(ReconcileError):  # backing off: not asked again...
        cache.get(("webhook", "j"), "20%", mint, dt.timedelta(hours=1))
    assert mint.calls == calls
    with pytest.raises(ReconcileError):  # ...unless a person asks for it
        cache.get(("webhook", "j"), "20%", mint, dt.timedelta(hours=1), fresh=True)
    assert mint.calls == calls + 1
