"""Header parsing and the small auth helpers of ocireg.oci, without any network."""

from __future__ import annotations

import email.utils
import time
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocireg.oci import (
    RegistryCredentials,
    parse_link_next,
    parse_retry_after,
    parse_www_authenticate,
    parse_www_authenticate_all,
)
from ocireg.oci.auth import (
    Redactor,
    TokenCache,
    choose_challenge,
    parse_token_response,
)
from ocireg.oci.headers import parse_rate_limit

# ------------------------------------------------------------------------ WWW-Authenticate


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:samalba/my-app:pull,push"',
            (
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:samalba/my-app:pull,push",
                },
            ),
        ),
        ('Basic realm="Registry Realm"', ("basic", {"realm": "Registry Realm"})),
        ("BASIC", ("basic", {})),
        (
            '  bearer   Realm = "a, b"  ,   service=reg.example ,error="insufficient_scope"  ',
            ("bearer", {"realm": "a, b", "service": "reg.example", "error": "insufficient_scope"}),
        ),
        (r'Bearer realm="say \"hi\" \\ there"', ("bearer", {"realm": 'say "hi" \\ there'})),
        (
            "Bearer realm=https://auth.example/token",
            ("bearer", {"realm": "https://auth.example/token"}),
        ),
        ('Bearer realm="x" service="y"', ("bearer", {"realm": "x", "service": "y"})),
        ('Bearer realm="",service=""', ("bearer", {"realm": "", "service": ""})),
        ('Bearer realm="first",realm="second"', ("bearer", {"realm": "first"})),
        (",, Bearer realm=x,,", ("bearer", {"realm": "x"})),
        ('Bearer\trealm="x"', ("bearer", {"realm": "x"})),
    ],
)
def test_parse_www_authenticate(header: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_www_authenticate(header) == expected


def test_several_challenges() -> None:
    header = 'Basic realm="r", Bearer realm="https://a/token", service="s", Negotiate'
    assert parse_www_authenticate_all(header) == [
        ("basic", {"realm": "r"}),
        ("bearer", {"realm": "https://a/token", "service": "s"}),
        ("negotiate", {}),
    ]
    assert parse_www_authenticate(header) == ("basic", {"realm": "r"})


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        'realm="x"',
        'Bearer realm="unterminated',
        'Bearer realm="dangling\\',
        "Bearer abc",
        '"Bearer"',
        "Bearer realm=x junk",
        'Bearer realm="x"y"',
        'Bearer realm=a"b',
        "@@@",
        "Bearer realm=x, =y",
    ],
)
def test_parse_www_authenticate_rejects_garbage(header: str) -> None:
    with pytest.raises(ValueError, match="WWW-Authenticate") as info:
        parse_www_authenticate(header)
    assert str(info.value)


def test_parse_www_authenticate_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        parse_www_authenticate(None)  # type: ignore[arg-type]


def test_choose_challenge_prefers_bearer_with_a_realm() -> None:
    chosen = choose_challenge(['Basic realm="x"', 'Bearer realm="https://a/t",service="s"'])
    assert (chosen.scheme, chosen.realm, chosen.service) == ("bearer", "https://a/t", "s")
    assert choose_challenge(['Bearer service="s"', 'Basic realm="x"']).scheme == "basic"
    assert choose_challenge(["garbage =", "Negotiate"]) is None
    assert choose_challenge([]) is None


header_alphabet = st.sampled_from(list('BbearsicRealm=",\\ \t\r\n;:/<>?&=_-.@é\x00'))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.text(header_alphabet)))
def test_parse_www_authenticate_only_raises_value_error(header: str) -> None:
    try:
        scheme, params = parse_www_authenticate(header)
    except ValueError as error:
        message = str(error)
        assert message.startswith("WWW-Authenticate: ")
        return
    assert scheme == scheme.lower()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


token_text = st.text(
    st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+!#$%&'*^`|"
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    scheme=token_text,
    params=st.dictionaries(token_text.map(str.lower), st.text(max_size=30), max_size=5),
    separator=st.sampled_from([",", ", ", " , ", ",\t"]),
)
def test_parse_www_authenticate_round_trip(
    scheme: str, params: dict[str, str], separator: str
) -> None:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = scheme + " " + separator.join(f"{k}={quoted(v)}" for k, v in params.items())
    assert parse_www_authenticate(header) == (scheme.lower(), params)


# ------------------------------------------------------------------------------------ Link

BASE = "https://reg.example:5000/v2/team/app/tags/list?n=2"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        (
            '</v2/team/app/tags/list?last=a&n=2>; rel="next"',
            "https://reg.example:5000/v2/team/app/tags/list?last=a&n=2",
        ),
        ("</v2/x/tags/list?last=b>; rel=next", "https://reg.example:5000/v2/x/tags/list?last=b"),
        (
            '<https://other.example/v2/x/tags/list?cursor=Zm9v>; rel="next"',
            "https://other.example/v2/x/tags/list?cursor=Zm9v",
        ),
        (
            "<?cursor=opaque%3D%3D>; rel=next",
            "https://reg.example:5000/v2/team/app/tags/list?cursor=opaque%3D%3D",
        ),
        (
            '<https://docs.example>; rel="help", <page2>;title="a, b; c";REL="prev next"',
            "https://reg.example:5000/v2/team/app/tags/page2",
        ),
        ('</a>; rel="prev", </b>; rel="last"', None),
        ("</a>;rel=next;rel=prev", "https://reg.example:5000/a"),
        ("  < /a >  ;  rel = next  ", "https://reg.example:5000/a"),
        ("</a>; rel=next, </b>; rel=next", "https://reg.example:5000/a"),
        ("</a>;; rel=next", "https://reg.example:5000/a"),
    ],
)
def test_parse_link_next(header: str | None, expected: str | None) -> None:
    assert parse_link_next(header, BASE) == expected


@pytest.mark.parametrize(
    "header",
    [
        "/v2/x; rel=next",
        "</v2/x; rel=next",
        '</v2/x>; rel="next',
        "</v2/x> rel=next",
        "<javascript:alert(1)>; rel=next",
        "<http://[::1>; rel=next",
        "</x>; =next",
    ],
)
def test_parse_link_next_rejects_garbage(header: str) -> None:
    with pytest.raises(ValueError, match="Link"):
        parse_link_next(header, BASE)


@settings(max_examples=400, deadline=None)
@given(
    header=st.one_of(st.text(), st.text(st.sampled_from(list('<>;,="rel next/?:[]\\ \té')))),
    base=st.one_of(st.just(BASE), st.text()),
)
def test_parse_link_next_only_raises_value_error(header: str, base: str) -> None:
    try:
        url = parse_link_next(header, base)
    except ValueError as error:
        message = str(error)
        assert message.startswith("Link: ")
        return
    assert url is None or urlsplit(url).scheme in ("http", "https")


@settings(max_examples=200, deadline=None)
@given(
    paths=st.lists(
        st.text(st.sampled_from("abcxyz0123/?=&-_.%"), min_size=1, max_size=20), min_size=1
    ),
    next_index=st.integers(min_value=0),
    quoted=st.booleans(),
)
def test_parse_link_next_finds_the_next_link(
    paths: list[str], next_index: int, quoted: bool
) -> None:
    index = next_index % len(paths)
    rel = '"next"' if quoted else "next"
    links = [f"<{path}>; rel={rel if i == index else 'other'}" for i, path in enumerate(paths)]
    assert parse_link_next(", ".join(links), BASE) == urljoin(BASE, paths[index])


# --------------------------------------------------------------------- Retry-After, limits


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("0") == 0
    for bad in (None, "", "-1", "soon", "nan", "inf", "Foo, 99 Bar 2000"):
        assert parse_retry_after(bad) is None
    later = parse_retry_after(email.utils.formatdate(time.time() + 60, usegmt=True))
    assert later is not None
    assert 55 <= later <= 61
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past


def test_parse_rate_limit() -> None:
    assert parse_rate_limit("76;w=21600") == 76
    assert parse_rate_limit(" 5 ") == 5
    assert parse_rate_limit("lots") is None
    assert parse_rate_limit(None) is None


# ----------------------------------------------------------------------- tokens, secrets


def test_parse_token_response() -> None:
    assert parse_token_response({"token": "t", "expires_in": 300}) == ("t", 300)
    assert parse_token_response({"access_token": "a"}) == ("a", 60)
    assert parse_token_response({"token": "t", "access_token": "a"})[0] == "t"
    for lifetime in (0, -5, "300", True, None, float("nan")):
        assert parse_token_response({"token": "t", "expires_in": lifetime}) == ("t", 60)
    for body in ([], {"token": ""}, {"token": 5}, {"token": "bad\nvalue"}, {"other": "x"}):
        with pytest.raises(ValueError, match=r"answer|token"):
            parse_token_response(body)


def test_token_cache_renews_early() -> None:
    cache = TokenCache()
    key = ("https://auth/token", "svc", "repository:a:pull")
    cache.put(key, "tok", 60, now=100)
    assert cache.get(key, now=149) == "tok"
    assert cache.get(key, now=150) is None
    cache.put(key, "tok", 60, now=0)
    cache.drop(key, "another")  # replaced meanwhile by another thread: keep
    assert cache.get(key, now=1) == "tok"
    cache.drop(key, "tok")
    assert cache.get(key, now=1) is None


def test_redactor() -> None:
    redact = Redactor(["p@ss word", "tok"])
    assert redact("x p@ss word y") == "x *** y"
    assert redact("p%40ss+word and p%40ss%20word") == "*** and ***"
    redact.add("later-token")
    assert redact("Bearer later-token") == "Bearer ***"
    assert redact("nothing") == "nothing"


def test_credentials() -> None:
    assert RegistryCredentials().anonymous
    assert RegistryCredentials("", "").anonymous
    creds = RegistryCredentials("u", "p")
    assert not creds.anonymous
    assert creds.has_basic
    assert creds.basic_authorization() == "Basic dTpw"
    assert not RegistryCredentials(registry_token="t").has_basic
    secret = RegistryCredentials("user-1", "pw-9f8e7d", "idt-9f8e7d", "rt-9f8e7d")
    for text in (repr(secret), str(secret)):
        assert "user-1" in text
        assert "9f8e7d" not in text
