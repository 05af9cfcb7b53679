"""Cloud and webhook providers without a cluster: the mint cache's renewal and backoff
decisions, parsing of outside answers, the tenant address guard, and ECR through boto3 against
moto's in-process AWS."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from collections.abc import Mapping

import pytest
from moto import mock_aws

from ocireg.api.cloud import WebhookAuth
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.providers import ResolveContext, acr, ecr, resolve, webhook
from ocireg.providers.cache import EXPIRED_RENEW_AFTER, MIN_RENEW_AFTER, MintCache, renew_at
from ocireg.settings import OperatorConfig

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def minter(lifetime: dt.timedelta | None, clock: Clock, calls: list[int]):
    def mint() -> Credential:
        calls.append(1)
        expires = clock.now + lifetime if lifetime is not None else None
        return Credential("ecr", ("r",), "AWS", f"pw-{len(calls)}", expires_at=expires)

    return mint


# ------------------------------------------------------------------ the mint cache


def test_one_mint_per_identity_until_renewal_is_due() -> None:
    clock, calls = Clock(), []
    cache = MintCache(clock)
    mint = minter(dt.timedelta(hours=12), clock, calls)
    first = cache.get(("ecr", "id", "r"), "20%", mint)
    assert cache.get(("ecr", "id", "r"), "20%", mint) is first
    assert len(calls) == 1
    clock.now = T0 + dt.timedelta(hours=8, minutes=30)  # 71 %: not yet (jitter: 72-80 %)
    assert cache.get(("ecr", "id", "r"), "20%", mint) is first
    clock.now = T0 + dt.timedelta(hours=9, minutes=37)  # past 80 %: renewed
    assert cache.get(("ecr", "id", "r"), "20%", mint).password == "pw-2"
    assert cache.mints["ecr"] == 2


def test_a_minted_expiry_is_kept_in_whole_seconds_rounded_down() -> None:
    # As status shows it (kubectl get's EXPIRES column): 2026-...:00Z, not :00.999999Z.
    clock, calls = Clock(), []
    clock.now = T0 + dt.timedelta(microseconds=999_999)
    credential = MintCache(clock).get("k", "20%", minter(dt.timedelta(hours=1), clock, calls))
    assert credential.expires_at == T0 + dt.timedelta(hours=1)
    assert credential.issued_at == T0


def test_renewal_never_later_than_renew_before_allows_and_has_jitter() -> None:
    lifetime = dt.timedelta(hours=1)
    latest = renew_at(T0, T0 + lifetime, "20%", jitter=0)
    assert latest == T0 + dt.timedelta(minutes=48)
    assert renew_at(T0, T0 + lifetime, "20%", jitter=0.1) < latest
    assert renew_at(T0, T0 + lifetime, "15m", jitter=0) == T0 + dt.timedelta(minutes=45)


def test_already_expired_or_tiny_lifetimes_do_not_loop() -> None:
    assert renew_at(T0, dt.datetime(2015, 1, 1, tzinfo=dt.UTC), "20%", 0) == (
        T0 + EXPIRED_RENEW_AFTER
    )
    assert renew_at(T0, T0 + dt.timedelta(seconds=2), "20%", 0) == T0 + MIN_RENEW_AFTER
    clock, calls = Clock(), []
    cache = MintCache(clock)

    def expired() -> Credential:
        calls.append(1)
        return Credential(
            "ecr", ("r",), "AWS", "pw", expires_at=dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
        )

    credential = cache.get("k", "20%", expired)
    assert "already expired" in credential.note
    for seconds in range(10, 290, 10):  # ticks every 10 s for almost 5 minutes
        clock.now = T0 + dt.timedelta(seconds=seconds)
        cache.get("k", "20%", expired)
    assert len(calls) == 1


def test_failures_back_off_at_the_cache_without_calling_the_provider() -> None:
    clock, calls = Clock(), []
    cache = MintCache(clock)

    def failing() -> Credential:
        calls.append(1)
        raise ReconcileError("ProviderError", "HTTP 503", transient=True, retry_after=30)

    for _ in range(5):
        with pytest.raises(ReconcileError, match="503"):
            cache.get("k", "20%", failing)
    assert len(calls) == 1  # the error is repeated, the provider not asked again
    clock.now = T0 + dt.timedelta(seconds=31)
    with pytest.raises(ReconcileError):
        cache.get("k", "20%", failing)
    assert len(calls) == 2
    clock.now = T0 + dt.timedelta(minutes=10)
    ok = cache.get("k", "20%", minter(dt.timedelta(hours=1), clock, calls))
    assert ok.password == "pw-3"


def test_credentials_without_expiry_are_kept_for_max_age() -> None:
    clock, calls = Clock(), []
    cache = MintCache(clock)
    mint = minter(None, clock, calls)
    cache.get("k", "20%", mint, max_age=dt.timedelta(hours=1))
    clock.now = T0 + dt.timedelta(minutes=59)
    cache.get("k", "20%", mint, max_age=dt.timedelta(hours=1))
    clock.now = T0 + dt.timedelta(hours=1)
    cache.get("k", "20%", mint, max_age=dt.timedelta(hours=1))
    assert len(calls) == 2


# ------------------------------------------------------------------ webhook answers


def hook(**fields: object) -> WebhookAuth:
    return WebhookAuth.model_validate({"url": "https://creds.example.com/x", **fields})


def test_webhook_basic_answer() -> None:
    body = base64.b64encode(b"robot:t0ken")
    assert webhook.parse_answer(body, hook(), T0) == ("robot", "t0ken", None)


def test_webhook_json_answer_with_nested_fields_and_expiry() -> None:
    auth = hook(
        format="JSON",
        usernameField="data.user",
        passwordField="data.token",
        expiresAtField="data.expires",
    )
    body = json.dumps(
        {"data": {"user": "u", "token": "t", "expires": "2026-01-01T01:00:00Z"}}
    ).encode()
    assert webhook.parse_answer(body, auth, T0) == ("u", "t", T0 + dt.timedelta(hours=1))
    epoch = json.dumps({"password": "t", "exp": 1767229200}).encode()
    assert webhook.parse_answer(epoch, hook(format="JSON", expiresAtField="exp"), T0)[2] == (
        dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.UTC)
    )
    lifetime = json.dumps({"password": "t", "ttl": 600}).encode()
    assert webhook.parse_answer(lifetime, hook(format="JSON", expiresInField="ttl"), T0)[2] == (
        T0 + dt.timedelta(minutes=10)
    )


@pytest.mark.parametrize(
    ("body", "auth"),
    [
        (b"not base64!", hook()),
        (base64.b64encode(b"no-colon-here"), hook()),
        (b"{not json", hook(format="JSON")),
        (json.dumps({"username": "u"}).encode(), hook(format="JSON")),
        (
            json.dumps({"password": "s3cr3t", "expires": "soon"}).encode(),
            hook(format="JSON", expiresAtField="expires"),
        ),
        (
            json.dumps({"password": "s3cr3t", "ttl": "ten"}).encode(),
            hook(format="JSON", expiresInField="ttl"),
        ),
        (json.dumps([1, 2]).encode(), hook(format="JSON")),
    ],
)
def test_malformed_webhook_answers_are_clear_errors_without_the_secret(
    body: bytes, auth: WebhookAuth
) -> None:
    with pytest.raises(ReconcileError) as caught:
        webhook.parse_answer(body, auth, T0)
    assert caught.value.reason == "InvalidProviderAnswer"
    assert "s3cr3t" not in caught.value.message


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("169.254.169.254", True),  # cloud metadata
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("100.64.0.1", True),  # shared address space
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("0.0.0.0", True),  # noqa: S104 - an address under test, not a bind
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
    ],
)
def test_tenant_webhook_address_guard(address: str, refused: bool) -> None:
    assert webhook.address_refused(ipaddress.ip_address(address), []) is refused


def test_allowed_cidrs_open_a_range() -> None:
    allowed = [ipaddress.ip_network("10.0.0.0/8")]
    assert not webhook.address_refused(ipaddress.ip_address("10.1.2.3"), allowed)
    assert webhook.address_refused(ipaddress.ip_address("169.254.169.254"), allowed)


def test_destination_check_uses_every_resolved_address() -> None:
    def resolver(host: str, port: object, proto: int) -> list:
        return [(0, 0, 0, "", ("8.8.8.8", 0)), (0, 0, 0, "", ("169.254.169.254", 0))]

    with pytest.raises(ReconcileError) as caught:
        webhook.check_destination("https://creds.example.com/x", [], resolver)
    assert caught.value.reason == "WebhookAddressNotAllowed"


# ------------------------------------------------------------------ JWT expiry, GCP keys


def _jwt(claims: dict) -> str:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{part}.sig"


def test_acr_refresh_token_expiry_from_jwt() -> None:
    assert acr.jwt_expiry(_jwt({"exp": 1767229200})) == dt.datetime(2026, 1, 1, 1, tzinfo=dt.UTC)
    assert acr.jwt_expiry("opaque") is None
    assert acr.jwt_expiry(_jwt({"exp": "later"})) is None
    assert acr.jwt_expiry("a.!!!.c") is None


def secrets_of(store: dict[tuple[str, str], dict[str, bytes]]):
    def read(namespace: str, name: str) -> Mapping[str, bytes]:
        if (namespace, name) not in store:
            raise ReconcileError("SecretNotFound", f"Secret {namespace}/{name} does not exist")
        return store[(namespace, name)]

    return read


def spec(auth: dict, server: str = "registry.example.com") -> RegistrySpec:
    return RegistrySpec.model_validate({"server": server, "auth": auth})


def test_gcp_key_with_a_foreign_token_uri_is_refused() -> None:
    key = {"type": "service_account", "token_uri": "http://169.254.169.254/token"}
    ctx = ResolveContext(
        secrets_of({("team", "gcp"): {"key.json": json.dumps(key).encode()}}), "team", True
    )
    with pytest.raises(ReconcileError) as caught:
        resolve(spec({"gcp": {"credentials": {"secretRef": {"name": "gcp"}}}}), ctx)
    assert caught.value.reason == "InvalidSecret"
    assert "token_uri" in caught.value.message


@pytest.mark.parametrize("method", ["ecr", "gcp", "acr"])
def test_tenants_may_not_use_the_operators_identity(method: str) -> None:
    auth = {"ecr": {}, "gcp": {}, "acr": {}}[method]
    ctx = ResolveContext(secrets_of({}), "team", namespaced=True)
    with pytest.raises(ReconcileError) as caught:
        resolve(spec({method: auth}), ctx)
    assert caught.value.reason == "AmbientIdentityNotAllowed"


def test_tenants_may_not_name_another_namespaces_service_account() -> None:
    ctx = ResolveContext(secrets_of({}), "team", namespaced=True)
    auth = {
        "ecr": {
            "roleArn": "arn:aws:iam::123456789012:role/puller",
            "credentials": {"serviceAccountRef": {"name": "x", "namespace": "other"}},
        }
    }
    with pytest.raises(ReconcileError) as caught:
        resolve(spec(auth), ctx)
    assert caught.value.reason == "CrossNamespaceReference"


# ------------------------------------------------------------------ ECR through moto


KEYS = {("ops", "aws"): {"accessKeyId": b"AKIDEXAMPLE", "secretAccessKey": b"secret"}}


def ecr_ctx(**kwargs: object) -> ResolveContext:
    return ResolveContext(secrets_of(KEYS), "ops", False, **kwargs)  # type: ignore[arg-type]


@mock_aws
def test_ecr_static_keys_one_entry_per_region() -> None:
    auth = {
        "ecr": {
            "regions": ["eu-west-1", "us-east-2"],
            "credentials": {"secretRef": {"name": "aws"}},
        }
    }
    credential = resolve(spec(auth, "123456789012.dkr.ecr.{region}.amazonaws.com"), ecr_ctx())
    assert credential.username == "AWS"
    assert credential.endpoints == (
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "123456789012.dkr.ecr.us-east-2.amazonaws.com",
    )
    assert all(password for _, password in credential.passwords)
    assert credential.expires_at is not None


@mock_aws
def test_ecr_several_regions_need_a_region_placeholder() -> None:
    auth = {
        "ecr": {
            "regions": ["eu-west-1", "us-east-2"],
            "credentials": {"secretRef": {"name": "aws"}},
        }
    }
    with pytest.raises(ReconcileError, match="region"):
        resolve(spec(auth, "123456789012.dkr.ecr.eu-west-1.amazonaws.com"), ecr_ctx())


@mock_aws
def test_ecr_other_accounts_by_registry_id() -> None:
    auth = {
        "ecr": {
            "regions": ["eu-west-1"],
            "registryIds": ["111111111111", "222222222222"],
            "credentials": {"secretRef": {"name": "aws"}},
        }
    }
    credential = resolve(spec(auth, "{account}.dkr.ecr.{region}.amazonaws.com"), ecr_ctx())
    assert credential.endpoints == (
        "111111111111.dkr.ecr.eu-west-1.amazonaws.com",
        "222222222222.dkr.ecr.eu-west-1.amazonaws.com",
    )
    assert dict(credential.passwords)["222222222222.dkr.ecr.eu-west-1.amazonaws.com"] == (
        "222222222222-auth-token"
    )


@mock_aws
def test_ecr_assume_role_and_web_identity() -> None:
    role = "arn:aws:iam::123456789012:role/puller"
    assume = {
        "ecr": {
            "roleArn": role,
            "externalId": "ext-id-1",
            "credentials": {"secretRef": {"name": "aws"}},
        }
    }
    assert resolve(spec(assume), ecr_ctx()).password
    requested: list[tuple[str, str, str]] = []

    def request_token(namespace: str, name: str, audience: str) -> str:
        requested.append((namespace, name, audience))
        return "eyJ.web.identity"

    web = {"ecr": {"roleArn": role, "credentials": {"serviceAccountRef": {"name": "puller"}}}}
    tenant = ResolveContext(secrets_of({}), "team", True, request_token)
    assert resolve(spec(web), tenant).username == "AWS"
    assert requested == [("team", "puller", "sts.amazonaws.com")]


def test_ecr_public_uses_ecr_public_in_us_east_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto has no ECR Public token API: a stand-in session records what is asked.
    asked: list[tuple[str, str]] = []

    class Client:
        def get_authorization_token(self) -> dict:
            token = base64.b64encode(b"AWS:public-pw").decode()
            return {"authorizationData": {"authorizationToken": token, "expiresAt": T0}}

    class Session:
        def __init__(self, region: str) -> None:
            self.region = region

        def client(self, service: str, **_: object) -> Client:
            asked.append((service, self.region))
            return Client()

    monkeypatch.setattr(ecr, "_session", lambda auth, ctx, region, identity: Session(region))
    auth = {"ecr": {"regions": ["eu-west-1"], "credentials": {"secretRef": {"name": "aws"}}}}
    credential = resolve(spec(auth, "public.ecr.aws"), ecr_ctx())
    assert credential.endpoints == ("public.ecr.aws",)
    assert credential.password == "public-pw"
    assert asked == [("ecr-public", "us-east-1")]


@mock_aws
def test_ecr_ambient_identity_for_the_cluster_kind_and_shared_mints() -> None:
    cache = MintCache()
    ctx = ResolveContext(secrets_of({}), "ops", False, cache=cache, config=OperatorConfig())
    auth = {"ecr": {"regions": ["eu-west-1"]}}
    server = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    first = resolve(spec(auth, server), ctx)
    second = resolve(spec(auth, server), ctx)
    assert first is second
    assert cache.mints["ecr"] == 1


def test_max_age_does_not_shorten_an_expiring_credential() -> None:
    clock, calls = Clock(), []
    cache = MintCache(clock)
    mint = minter(dt.timedelta(hours=3), clock, calls)
    cache.get("k", "20%", mint, max_age=dt.timedelta(hours=1))
    clock.now = T0 + dt.timedelta(hours=2)
    cache.get("k", "20%", mint, max_age=dt.timedelta(hours=1))
    assert len(calls) == 1


def test_verification_uses_the_expanded_host_of_a_template() -> None:
    from ocireg.pullsecrets.reconcile import verified_host

    templated = spec({"ecr": {"regions": ["eu-west-1", "us-east-2"]}}, "1.dkr.ecr.{region}.x")
    credential = Credential(
        "ecr",
        ("1.dkr.ecr.eu-west-1.x", "1.dkr.ecr.us-east-2.x"),
        "AWS",
        "pw-eu",
        passwords=(("1.dkr.ecr.eu-west-1.x", "pw-eu"), ("1.dkr.ecr.us-east-2.x", "pw-us")),
    )
    assert verified_host(templated, credential) == "1.dkr.ecr.eu-west-1.x"
    assert credential.password_for("1.dkr.ecr.us-east-2.x") == "pw-us"
    plain = spec({"basic": {"secretRef": {"name": "x"}}}, "registry.example.com")
    assert verified_host(plain, credential) == "registry.example.com"


def test_ecr_answers_are_matched_to_accounts_by_endpoint() -> None:
    assert ecr._account_of("https://222222222222.dkr.ecr.eu-west-1.amazonaws.com") == (
        "222222222222"
    )
    assert ecr._account_of("https://public.ecr.aws") is None


# ------------------------------------------------------------------ the provider boundary


def test_any_exception_from_a_mint_is_a_failure_with_backoff() -> None:
    clock, calls = Clock(), []
    cache = MintCache(clock)

    def broken() -> Credential:
        calls.append(1)
        "s3cret-\xff".encode("latin-1").decode("ascii")  # UnicodeDecodeError quoting the value
        raise AssertionError("unreachable")

    for _ in range(3):
        with pytest.raises(ReconcileError) as caught:
            cache.get(("webhook", "k"), "20%", broken)
        assert caught.value.reason == "ProviderError"
        assert caught.value.transient
        assert "UnicodeDecodeError" in caught.value.message
        assert "s3cret" not in caught.value.message
    assert len(calls) == 1  # backing off: the provider is not asked on every tick
    assert cache.errors["webhook"] == 1


@pytest.mark.parametrize(
    "value",
    [b"Bearer \xff\xfe", "Bearer caf\u00e9".encode(), b"Bearer a\x00b", b"Bearer a\r\nX-Other: 1"],
)
def test_webhook_header_values_must_be_printable_ascii(value: bytes) -> None:
    store = {("team", "hook-headers"): {"Authorization": value}}
    ctx = ResolveContext(secrets_of(store), "team", True)
    webhook_spec = spec(
        {
            "webhook": {
                "url": "https://creds.example.com/token",
                "headersSecretRef": {"name": "hook-headers"},
            }
        }
    )
    for _ in range(2):  # the same condition every time, never an exception
        with pytest.raises(ReconcileError) as caught:
            resolve(webhook_spec, ctx)
        assert caught.value.reason == "InvalidSecret"
        assert "Authorization" in caught.value.message
        assert "Bearer" not in caught.value.message  # the value is the webhook's secret
