"""A credential of the operator's own (ambient) cloud identity goes only to its cloud's
registries, over TLS only they can read (issue 14, point 4): the pure host decision, and each
provider refusing before anything is minted or sent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pydantic
import pytest

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.cli import build_parser, config_from_args
from ocireg.oci import TLSOptions
from ocireg.providers import ResolveContext, acr, ecr, gcp, resolve
from ocireg.providers.destinations import ambient_refusal, host_matches, hostname
from ocireg.settings import OperatorConfig


@pytest.mark.parametrize(
    ("server", "pattern", "matches"),
    [
        ("corp.azurecr.io", "*.azurecr.io", True),
        ("CORP.AzureCR.io.", "*.azurecr.io", True),  # case and a final dot do not matter
        ("corp.azurecr.io:443", "*.azurecr.io", True),
        ("azurecr.io", "*.azurecr.io", False),
        ("a.corp.azurecr.io", "*.azurecr.io", False),  # "*" is one label, never several
        ("corp.azurecr.io.evil.example", "*.azurecr.io", False),
        ("corpazurecr.io", "*.azurecr.io", False),
        ("gcr.io", "gcr.io", True),
        ("eu.gcr.io", "*.gcr.io", True),
        ("europe-west1-docker.pkg.dev", "*.pkg.dev", True),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "*.dkr.ecr.*.amazonaws.com", True),
        # An S3 bucket named "x.dkr.ecr.y" is someone's virtual host under amazonaws.com.
        ("x.dkr.ecr.y.s3.amazonaws.com", "*.dkr.ecr.*.amazonaws.com", False),
        ("127.0.0.1:5000", "127.0.0.1", True),
        ("127.0.0.2:5000", "127.0.0.1", False),
        ("[::1]:5000", "::1", True),
        # Anything but host[:port] matches nothing, whatever a URL parser would make of it.
        ("corp.azurecr.io:443@attacker.example", "*.azurecr.io", False),
        ("127.0.0.1:1@attacker.example", "127.0.0.1", False),
        ("corp.azurecr.io/x", "*.azurecr.io", False),
        ("x_y.azurecr.io", "*.azurecr.io", False),
    ],
)
def test_host_patterns(server: str, pattern: str, matches: bool) -> None:
    assert host_matches(hostname(server), pattern) is matches


def refusal(cloud: str, server: str, **tls: bool) -> str | None:
    options = {"insecure": False, "skip_verify": False, "custom_ca": False, "namespaced": False}
    return ambient_refusal(cloud, [server], (), **{**options, **tls})


def test_each_cloud_accepts_its_own_registries_only() -> None:
    assert refusal("acr", "corp.azurecr.io") is None
    assert refusal("acr", "corp.azurecr.us") is None
    assert refusal("gcp", "us-docker.pkg.dev") is None
    assert refusal("ecr", "public.ecr.aws") is None
    assert refusal("ecr", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn") is None
    for cloud, foreign in (("acr", "gcr.io"), ("gcp", "corp.azurecr.io"), ("ecr", "ghcr.io")):
        message = refusal(cloud, foreign)
        assert message is not None
        assert foreign in message
        assert f"--ambient-{cloud}-host" in message


def test_the_ambient_token_never_travels_over_tls_that_others_could_read() -> None:
    assert "plain HTTP" in (refusal("acr", "corp.azurecr.io", insecure=True) or "")
    assert "insecureSkipVerify" in (refusal("gcp", "gcr.io", skip_verify=True) or "")
    # A platform team's CA is its own decision; a tenant's CA could vouch for any host.
    assert refusal("acr", "corp.azurecr.io", custom_ca=True) is None
    tenant_ca = refusal("acr", "corp.azurecr.io", custom_ca=True, namespaced=True)
    assert "caBundleRef" in (tenant_ca or "")


def test_the_operator_replaces_the_list() -> None:
    assert ambient_refusal(
        "acr", ["localhost:8443"], ["localhost"],
        insecure=False, skip_verify=False, custom_ca=False, namespaced=True,
    ) is None  # fmt: skip
    assert ambient_refusal(
        "acr", ["corp.azurecr.io"], ["localhost"],
        insecure=False, skip_verify=False, custom_ca=False, namespaced=True,
    ) is not None  # fmt: skip


def test_host_flags() -> None:
    args = ["run", "--ambient-acr-host", "localhost", "--ambient-acr-host", "*.azurecr.io"]
    config = config_from_args(build_parser().parse_args(args))
    assert config.ambient_hosts("acr") == ("localhost", "*.azurecr.io")
    assert config.ambient_hosts("gcp") == ()


def test_host_flags_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIREG_AMBIENT_GCP_HOSTS", "127.0.0.1,gcr.io")
    config = config_from_args(build_parser().parse_args(["run"]))
    assert config.ambient_hosts("gcp") == ("127.0.0.1", "gcr.io")


# ------------------------------------------------------------------ through the providers


class CountingMint:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Credential:
        self.calls += 1
        return Credential("fake", ("r",), "user", "minted")


def no_secrets(namespace: str, name: str) -> Mapping[str, bytes]:
    raise ReconcileError("SecretNotFound", f"Secret {namespace}/{name} does not exist")


def context(namespaced: bool, tls: TLSOptions | None = None, **config: Any) -> ResolveContext:
    return ResolveContext(
        no_secrets,
        "team" if namespaced else "ops",
        namespaced,
        config=OperatorConfig(allow_tenant_ambient_identity=True, **config),
        registry_tls=tls or TLSOptions(),
    )


AMBIENT: dict[str, tuple[Any, dict[str, Any], str]] = {
    "acr": (acr, {"acr": {"clientId": "11111111-2222-3333-4444-555555555555"}}, "c.azurecr.io"),
    "gcp": (gcp, {"gcp": {}}, "europe-docker.pkg.dev"),
    "ecr": (ecr, {"ecr": {"regions": ["eu-west-1"]}}, "1.dkr.ecr.eu-west-1.amazonaws.com"),
}


@pytest.fixture(params=sorted(AMBIENT))
def ambient(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, CountingMint, Callable[[str], RegistrySpec], str]:
    module, auth, own_host = AMBIENT[request.param]
    fake = CountingMint()
    monkeypatch.setattr(module, "mint", fake)

    def spec(server: str) -> RegistrySpec:
        return RegistrySpec.model_validate({"server": server, "auth": auth})

    return request.param, fake, spec, own_host


@pytest.mark.parametrize("namespaced", [True, False], ids=["OCIRegistry", "ClusterOCIRegistry"])
def test_an_ambient_identity_is_not_minted_for_a_foreign_host(
    ambient: tuple[str, CountingMint, Callable[[str], RegistrySpec], str], namespaced: bool
) -> None:
    _cloud, minted, spec, own_host = ambient
    with pytest.raises(ReconcileError) as caught:
        resolve(spec("registry.attacker.example"), context(namespaced))
    assert caught.value.reason == "AmbientDestinationNotAllowed"
    assert "registry.attacker.example" in caught.value.message
    assert minted.calls == 0  # refused before the cloud was asked for a token
    assert resolve(spec(own_host), context(namespaced)).password == "minted"
    assert minted.calls == 1


def test_an_ambient_identity_is_not_minted_over_plain_http(
    ambient: tuple[str, CountingMint, Callable[[str], RegistrySpec], str],
) -> None:
    _cloud, minted, spec, own_host = ambient
    with pytest.raises(ReconcileError) as caught:
        resolve(spec(own_host), context(False, TLSOptions(insecure=True)))
    assert caught.value.reason == "AmbientDestinationNotAllowed"
    assert minted.calls == 0


def test_the_operators_list_admits_a_stand_in(
    ambient: tuple[str, CountingMint, Callable[[str], RegistrySpec], str],
) -> None:
    cloud, _minted, spec, own_host = ambient
    allowed = context(False, **{f"ambient_{cloud}_hosts": ("127.0.0.1",)})
    assert resolve(spec("127.0.0.1:5000"), allowed).password == "minted"
    with pytest.raises(ReconcileError):
        resolve(spec(own_host), allowed)  # the list replaces the defaults


def test_ecr_templates_are_checked_for_every_region(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = CountingMint()
    monkeypatch.setattr(ecr, "mint", fake)
    auth = {"ecr": {"regions": ["eu-west-1", "us-east-2"], "registryIds": ["123456789012"]}}
    template = RegistrySpec.model_validate(
        {"server": "{account}.dkr.ecr.{region}.amazonaws.com", "auth": auth}
    )
    assert resolve(template, context(False)).password == "minted"
    elsewhere = RegistrySpec.model_validate({"server": "{region}.attacker.example", "auth": auth})
    with pytest.raises(ReconcileError, match=r"eu-west-1\.attacker\.example"):
        resolve(elsewhere, context(False))
    assert fake.calls == 1


def test_named_identities_are_not_restricted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant's own key goes where the tenant says (the egress policy guards addresses)."""
    fake = CountingMint()
    monkeypatch.setattr(ecr, "mint", fake)
    keys = {("team", "aws"): {"accessKeyId": b"AKIDTEAM", "secretAccessKey": b"s"}}
    ctx = ResolveContext(lambda ns, name: keys[(ns, name)], "team", True)
    auth = {"ecr": {"regions": ["eu-west-1"], "credentials": {"secretRef": {"name": "aws"}}}}
    resolve(RegistrySpec.model_validate({"server": "registry.team.example", "auth": auth}), ctx)
    assert fake.calls == 1


def test_an_ecr_region_cannot_steer_the_sts_endpoint() -> None:
    """boto3 builds https://sts.<region>.amazonaws.com: a region must be a region name."""
    with pytest.raises(pydantic.ValidationError):
        RegistrySpec.model_validate(
            {"server": "x", "auth": {"ecr": {"regions": ["attacker.example#"]}}}
        )
