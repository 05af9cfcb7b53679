"""Property-based tests of everything that reads outside data: the spec models (what users
apply) and the parsers of what Secrets, webhooks, registries and token servers send. Each may
reject its input, but only with its own clear error type, never with a crash."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ocireg.api.cloud import WebhookAuth, WebhookFormat
from ocireg.api.credential import Credential
from ocireg.api.durations import format_duration, parse_duration, renew_margin
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import AUTH_METHODS, RegistrySpec
from ocireg.egress import embedded_ipv4
from ocireg.oci import parse_link_next, parse_www_authenticate, parse_www_authenticate_all
from ocireg.providers import ResolveContext
from ocireg.providers.acr import jwt_expiry
from ocireg.providers.static import docker_config_entry
from ocireg.providers.static import resolve as static_resolve
from ocireg.providers.webhook import address_refused, check_destination, parse_answer
from ocireg_devenv.hygiene import KnownSecrets, forms

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _outcome(
    function: Callable[..., Any], *args: Any, allowed: type[Exception]
) -> tuple[Any, Exception | None]:
    """(result, None), or (None, error) when ``function`` raised an ``allowed`` error; any
    other exception propagates and fails the test."""
    try:
        return function(*args), None
    except allowed as error:
        return None, error


# ------------------------------------------------------------------------------ strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
# Anything json.loads could return (NaN and Infinity included: Python's json accepts them).
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

_SCHEMA = RegistrySpec.model_json_schema(by_alias=True)


def _from_schema(node: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped like the JSON schema of the spec (so validation gets past the first
    level), each one sometimes replaced by arbitrary JSON."""
    if "$ref" in node:
        node = _SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if depth > 6:
        return json_values
    if "anyOf" in node:
        return st.one_of([_from_schema(choice, depth + 1) for choice in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"]) | st.text(max_size=10)
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        properties = {
            name: _from_schema(sub, depth + 1) | json_values
            for name, sub in node["properties"].items()
        }
        return st.fixed_dictionaries({}, optional=properties)
    if kind == "object":
        return st.dictionaries(st.text(max_size=12), json_values, max_size=3)
    if kind == "array":
        return st.lists(_from_schema(node.get("items", {}), depth + 1), max_size=3)
    if kind == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True) | st.text(max_size=20)
        return st.text(max_size=20)
    if kind == "integer":
        return st.integers(min_value=-5, max_value=100)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


spec_dicts = _from_schema(_SCHEMA)


def _marked(text: str) -> str:
    # Secrets are made distinctive so that "the message never contains the secret" cannot
    # pass or fail by accident on a one-letter password.
    return f"S3CR3T-{text}-Z"


secrets_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=":\x00"),
    min_size=4,
    max_size=24,
).map(_marked)

# ------------------------------------------------------------------------------ spec models


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_spec_model_never_crashes_on_arbitrary_json(data: dict[str, Any]) -> None:
    _outcome(RegistrySpec.model_validate, data, allowed=ValidationError)


@SETTINGS
@given(spec_dicts)
def test_spec_model_schema_shaped_input_validates_or_is_refused_and_round_trips(
    data: dict[str, Any],
) -> None:
    spec, error = _outcome(RegistrySpec.model_validate, data, allowed=ValidationError)
    if error is not None:
        assert isinstance(error, ValidationError)
        assert error.errors(), "a refusal says what is wrong"
        return
    # What the operator writes back (to_api) reads back as the same spec.
    assert RegistrySpec.model_validate(spec.to_api()) == spec
    # And the derived views never raise.
    spec.effective_targets, spec.effective_refresh, spec.effective_tls  # noqa: B018
    if spec.auth is not None:
        assert spec.auth.method in {"none", *AUTH_METHODS}


def test_spec_strategy_reaches_valid_specs() -> None:
    """The schema-shaped strategy above is only worth something if it produces specs that
    validate as well as ones that are refused."""
    outcomes: set[bool] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(spec_dicts)
    def probe(data: dict[str, Any]) -> None:
        try:
            RegistrySpec.model_validate(data)
            outcomes.add(True)
        except ValidationError:
            outcomes.add(False)

    probe()
    assert outcomes == {True, False}


# ------------------------------------------------------------------------------ durations


@SETTINGS
@given(st.text(max_size=20) | st.from_regex(r"([0-9]{1,4}(\.[0-9]{1,3})?(ms|s|m|h)){1,4}"))
def test_parse_duration_value_error_only(text: str) -> None:
    delta, error = _outcome(parse_duration, text, allowed=ValueError)
    if error is not None:
        assert repr(text) in str(error)
        return
    assert delta >= dt.timedelta(0)


@SETTINGS
@given(st.integers(min_value=0, max_value=10**7))
def test_format_then_parse_duration_round_trips(seconds: int) -> None:
    delta = dt.timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@SETTINGS
@given(
    st.text(max_size=8) | st.from_regex(r"[0-9]{1,3}%", fullmatch=True),
    st.integers(min_value=1, max_value=10**6),
)
def test_renew_margin_never_exceeds_lifetime(renew_before: str, lifetime_s: int) -> None:
    lifetime = dt.timedelta(seconds=lifetime_s)
    margin, error = _outcome(renew_margin, renew_before, lifetime, allowed=ValueError)
    if error is not None:
        return
    assert dt.timedelta(0) <= margin <= lifetime


# ------------------------------------------------------------------------------ Docker config


def _docker_config_texts() -> st.SearchStrategy[str]:
    entry = st.fixed_dictionaries(
        {},
        optional={
            "auth": json_values
            | st.text(max_size=30)
            | st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
            "username": json_values,
            "password": json_values,
            "identitytoken": json_values,
            "registrytoken": json_values,
        },
    )
    hosts = st.sampled_from(
        [
            "reg.example",
            "https://reg.example/v1/",
            "reg.example:5000",
            "docker.io",
            "https://index.docker.io/v1/",
            "other.example",
        ]
    ) | st.text(max_size=15)
    auths = st.dictionaries(hosts, entry | json_values, max_size=3)
    shaped = st.one_of(
        auths.map(lambda a: {"auths": a}),
        auths,  # the legacy .dockercfg map
        json_values,
    ).map(lambda value: json.dumps(value, allow_nan=True))
    return shaped | st.text(max_size=40)


def _static_ctx(data: dict[str, bytes]) -> ResolveContext:
    def read(namespace: str, name: str) -> Mapping[str, bytes]:
        return data

    return ResolveContext(read_secret=read, default_namespace="ns", namespaced=True)


_DOCKER_CONFIG_SPEC = RegistrySpec.model_validate(
    {"server": "reg.example", "auth": {"dockerConfig": {"secretRef": {"name": "cfg"}}}}
)


@SETTINGS
@given(_docker_config_texts(), st.sampled_from(["reg.example", "docker.io", "reg.example:5000"]))
def test_docker_config_entry_reconcile_error_only(text: str, server: str) -> None:
    entry, error = _outcome(docker_config_entry, text, server, "ns/cfg", allowed=ReconcileError)
    if error is not None:
        assert isinstance(error, ReconcileError)
        assert error.reason in {"InvalidDockerConfig", "KeyMissing"}
        return
    assert isinstance(entry, dict)


@SETTINGS
@given(_docker_config_texts())
# Known counterexamples (found earlier) run first, whatever the search finds.
@example(json.dumps({"auths": {"reg.example": {"auth": "é"}}}))
def test_docker_config_resolve_reconcile_error_only_and_strings(text: str) -> None:
    _check_docker_config_resolve(text.encode())


def _check_docker_config_resolve(raw: bytes) -> None:
    try:
        credential = static_resolve(_DOCKER_CONFIG_SPEC, _static_ctx({".dockerconfigjson": raw}))
    except ReconcileError:
        return
    assert isinstance(credential, Credential)
    for value in (
        credential.username,
        credential.password,
        credential.identity_token,
        credential.registry_token,
    ):
        assert value is None or isinstance(value, str), value
    assert not credential.anonymous


@pytest.mark.parametrize(
    "config",
    [
        {"auths": {"reg.example": {"auth": "é"}}},
        {"auths": {"reg.example": {"username": 5, "password": ["x"]}}},
    ],
    ids=["non-ascii-auth", "non-string-password"],
)
def test_docker_config_resolve_known_counterexamples(config: dict[str, Any]) -> None:
    _check_docker_config_resolve(json.dumps(config).encode())


@SETTINGS
@given(st.binary(max_size=60))
def test_docker_config_resolve_raw_bytes(raw: bytes) -> None:
    # Arbitrary bytes: not UTF-8, not JSON, empty... always a ReconcileError.
    _outcome(
        static_resolve,
        _DOCKER_CONFIG_SPEC,
        _static_ctx({".dockerconfigjson": raw}),
        allowed=ReconcileError,
    )


# ------------------------------------------------------------------------------ webhook answers


def _webhook_auths() -> st.SearchStrategy[WebhookAuth]:
    field_names = st.sampled_from(["password", "token", "data.token", "a.b.c", "user", ""])
    return st.builds(
        lambda fmt, user_f, pass_f, at_f, in_f, username: WebhookAuth(
            url="https://hook.example/creds",
            format=fmt,
            username_field=user_f,
            password_field=pass_f,
            expires_at_field=at_f,
            expires_in_field=in_f,
            username=username,
        ),
        st.sampled_from(list(WebhookFormat)),
        field_names,
        field_names,
        st.none() | st.sampled_from(["expiresAt", "exp", "data.expiry"]),
        st.none() | st.sampled_from(["expiresIn", "ttl", "data.ttl"]),
        st.none() | st.text(max_size=8),
    )


def _answers(password: str) -> st.SearchStrategy[bytes]:
    """Answers that hold ``password`` somewhere (or are plain garbage)."""
    placed = st.recursive(
        st.just(password) | json_values,
        lambda children: (
            st.dictionaries(
                st.sampled_from(
                    [
                        "password",
                        "token",
                        "data",
                        "user",
                        "expiresAt",
                        "exp",
                        "expiresIn",
                        "ttl",
                        "expiry",
                        "a",
                        "b",
                        "c",
                    ]
                ),
                children,
                max_size=5,
            )
            | st.lists(children, max_size=3)
        ),
        max_leaves=12,
    )
    as_json = placed.map(lambda v: json.dumps(v, allow_nan=True).encode())
    as_basic = st.text(max_size=10).map(
        lambda user: base64.b64encode(f"{user}:{password}".encode())
    ) | st.text(max_size=20).map(lambda t: base64.b64encode(t.encode()))
    return as_json | as_basic | st.binary(max_size=40)


@SETTINGS
@given(_webhook_auths(), secrets_text.flatmap(lambda p: st.tuples(st.just(p), _answers(p))))
def test_webhook_parse_answer_reconcile_error_only_never_quotes_the_secret(
    auth: WebhookAuth, password_and_body: tuple[str, bytes]
) -> None:
    password, body = password_and_body
    answer, error = _outcome(parse_answer, body, auth, NOW, allowed=ReconcileError)
    if error is not None:
        assert isinstance(error, ReconcileError)
        assert error.reason == "InvalidProviderAnswer"
        assert password not in str(error)
        assert password not in error.message
        return
    username, found, expires = answer
    assert isinstance(username, str)
    assert isinstance(found, str)
    assert found
    assert expires is None or (isinstance(expires, dt.datetime) and expires.tzinfo is not None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expiresAt", 1e20),
        ("expiresAt", -1e20),
        ("expiresAt", float("nan")),
        ("expiresAt", float("inf")),
        ("expiresAt", "9999-99-99T00:00:00Z"),
        ("expiresIn", 1e300),
        ("expiresIn", float("nan")),
        ("expiresIn", -(10**30)),
    ],
)
def test_webhook_absurd_expiry_is_a_clear_error(field: str, value: object) -> None:
    auth = WebhookAuth(
        url="https://hook.example/",
        format=WebhookFormat.json,
        expires_at_field="expiresAt" if field == "expiresAt" else None,
        expires_in_field="expiresIn" if field == "expiresIn" else None,
    )
    body = json.dumps({"password": "S3CR3T", field: value}, allow_nan=True).encode()
    with pytest.raises(ReconcileError) as caught:
        parse_answer(body, auth, NOW)
    assert caught.value.reason == "InvalidProviderAnswer"
    assert "S3CR3T" not in str(caught.value)


# ------------------------------------------------------------------------------ webhook addresses

_ip_addresses = st.ip_addresses(v=4) | st.ip_addresses(v=6)


@SETTINGS
@given(_ip_addresses)
def test_non_global_addresses_are_always_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    # An IPv6 form that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is
    # judged by that address: no spelling of a refused IPv4 address gets through.
    inner = embedded_ipv4(address)
    checked = inner or [address]
    refused = address_refused(address, [])
    if any(not a.is_global or a.is_multicast for a in checked):
        assert refused
    elif isinstance(address, ipaddress.IPv6Address) and (
        address.teredo
        or address in ipaddress.ip_network("64:ff9b:1::/48")
        or address.is_site_local  # fec0::/10: is_global says True, but it is private
    ):
        assert refused  # tunnels, local-use NAT64 and site-local are refused
    else:
        assert not refused


@SETTINGS
@given(st.lists(_ip_addresses, min_size=1, max_size=4))
def test_check_destination_refuses_if_any_resolved_address_is_private(
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    def resolve(host: str, port: object, proto: int = 0) -> list[tuple[Any, ...]]:
        return [(0, 0, proto, "", (str(a), 0)) for a in addresses]

    any_refused = any(address_refused(a, []) for a in addresses)
    _, error = _outcome(
        check_destination, "https://hook.example/x", [], resolve, allowed=ReconcileError
    )
    if error is not None:
        assert isinstance(error, ReconcileError)
        assert error.reason == "WebhookAddressNotAllowed"
        assert any_refused
        return
    assert not any_refused


# ------------------------------------------------------------------------------ registry headers

_header_text = st.text(
    alphabet=st.sampled_from([*'abcBEARERrealm=",;<>/: \t\\srvicnext?&%', "é", "\x00"]),
    max_size=60,
)


@SETTINGS
@given(_header_text | st.text(max_size=60))
def test_www_authenticate_value_error_only(header: str) -> None:
    parsed, error = _outcome(parse_www_authenticate, header, allowed=ValueError)
    if error is not None:
        return
    scheme, params = parsed
    assert scheme
    assert scheme == scheme.lower()
    assert all(name == name.lower() for name in params)
    assert len(parse_www_authenticate_all(header)) >= 1


@SETTINGS
@given(
    st.sampled_from(["Bearer", "Basic", "bearer"]),
    st.dictionaries(
        st.sampled_from(["realm", "service", "scope", "error"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        max_size=4,
    ),
)
def test_www_authenticate_quoted_values_round_trip(scheme: str, params: dict[str, str]) -> None:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = scheme + " " + ",".join(f"{k}={quoted(v)}" for k, v in params.items())
    assert parse_www_authenticate(header) == (scheme.lower(), params)


@SETTINGS
@given(
    _header_text | st.text(max_size=60),
    st.sampled_from(
        ["https://reg.example/v2/_catalog", "http://reg.example:5000/v2/x/tags/list", "nonsense"]
    ),
)
def test_link_next_value_error_only(header: str, base: str) -> None:
    url, error = _outcome(parse_link_next, header, base, allowed=ValueError)
    if error is not None:
        return
    assert url is None or url.startswith(("http://", "https://"))


# ------------------------------------------------------------------------------ JWT expiry


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode().rstrip("=")


_jwt_payloads = st.one_of(
    st.fixed_dictionaries({"exp": json_values}).map(lambda v: json.dumps(v, allow_nan=True)),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=30),
).map(lambda text: _b64(text.encode()))
_jwts = st.one_of(
    st.tuples(st.text(max_size=8), _jwt_payloads, st.text(max_size=8)).map(".".join),
    st.text(max_size=60),
)


def _check_jwt_expiry(token: str) -> None:
    expiry = jwt_expiry(token)
    assert expiry is None or (isinstance(expiry, dt.datetime) and expiry.tzinfo is not None)


@SETTINGS
@given(_jwts)
def test_jwt_expiry_none_or_datetime_on_ordinary_input(token: str) -> None:
    # Integers within the range a datetime can hold; the absurd ones are below.
    claims_exp = None
    parts = token.split(".")
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            claims_exp = claims.get("exp") if isinstance(claims, dict) else None
        except ValueError:
            pass
    assume(
        not isinstance(claims_exp, int | float)
        or isinstance(claims_exp, bool)
        or (math.isfinite(claims_exp) and abs(claims_exp) < 2**33)
    )
    _check_jwt_expiry(token)


@pytest.mark.parametrize("exp", ["1e20", "-1e20", "NaN", "Infinity", str(10**30)])
def test_jwt_expiry_absurd_exp_returns_none(exp: str) -> None:
    payload = _b64(('{"exp": ' + exp + "}").encode())
    token = f"{_b64(b'{}')}.{payload}.sig"
    _check_jwt_expiry(token)


# ------------------------------------------------------------------------------ leak detection
# The e2e suite's secret-hygiene check (tests/conftest.py) relies on this finding a secret in
# any of the forms a careless log line would take.


@SETTINGS
@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=8, max_size=30),
    st.sampled_from(sorted(forms("x" * 8, "user"))),
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_known_secrets_found_in_every_form(secret: str, form: str, before: str, after: str) -> None:
    known = KnownSecrets()
    known.add(secret, "a password", "user")
    leaked = forms(secret, "user")[form]
    leaks = known.find(f"{before}{leaked}{after}", "a log")
    assert [(leak.label, leak.where) for leak in leaks] == [("a password", "a log")]
    assert secret not in repr(leaks)


def test_known_secrets_ignore_short_values_and_clean_text() -> None:
    known = KnownSecrets()
    known.add("short", "too short to tell from ordinary text")
    known.add("S3CR3T-long-enough", "a password")
    assert len(known) == 1
    assert known.find("nothing to see, short and S3CR3T-long-enoug", "a log") == []
