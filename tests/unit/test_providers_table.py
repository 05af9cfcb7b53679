"""The providers' registration table: one row per auth method of the spec, each backend a
Provider, the cloud SDKs imported only when an object uses them."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ocireg.api.errors import ReconcileError
from ocireg.api.spec import AUTH_METHODS, Auth, AuthMethods, RegistrySpec
from ocireg.providers import BACKENDS, Provider, ResolveContext, destinations, provider, resolve
from ocireg.providers.cache import MintCache
from ocireg.settings import OperatorConfig

OPERATOR = Path(__file__).resolve().parents[2] / "operator"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter: this one has imported every SDK already."""
    env = {**os.environ, "PYTHONPATH": str(OPERATOR)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_table_has_a_backend_for_every_method_and_no_other() -> None:
    assert set(BACKENDS) == set(AUTH_METHODS)


def test_the_methods_are_the_auth_fields_camel_case_names_in_order() -> None:
    aliases = tuple(f.alias for f in AuthMethods.model_fields.values())
    assert aliases == AUTH_METHODS
    assert AUTH_METHODS[:4] == ("anonymous", "basic", "token", "dockerConfig")
    rule = Auth.model_json_schema()["x-kubernetes-validations"][0]
    assert all(f"has(self.{m})" in rule["rule"] for m in AUTH_METHODS)


@pytest.mark.parametrize("method", AUTH_METHODS)
def test_auth_method_names_the_field_that_is_set(method: str) -> None:
    attribute = next(n for n, f in AuthMethods.model_fields.items() if f.alias == method)
    assert Auth.model_construct(**{attribute: object()}).method == method
    assert Auth.model_construct().method == "none"


@pytest.mark.parametrize("method", sorted(BACKENDS))
def test_every_backend_is_a_provider(method: str) -> None:
    backend = provider(method)
    assert isinstance(backend, Provider)
    assert list(inspect.signature(backend.resolve).parameters) == ["spec", "ctx"]


def test_mypy_checks_every_backend_module_against_the_protocol() -> None:
    """The TYPE_CHECKING tuple at the bottom of providers/__init__.py names every module."""
    import ocireg.providers

    source = inspect.getsource(ocireg.providers)
    checked = re.search(r"_MODULES: tuple\[Provider, \.\.\.\] = \(([^)]*)\)", source)
    assert checked is not None
    assert {m.strip() for m in checked[1].split(",")} == {b.module for b in BACKENDS.values()}


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ReconcileError) as caught:
        provider("quay")
    assert caught.value.reason == "UnsupportedAuth"


def test_the_ambient_backends_are_the_clouds_with_destinations_and_flags() -> None:
    ambient = {m for m, b in BACKENDS.items() if b.ambient}
    assert ambient == set(destinations.DEFAULT_HOSTS) == set(destinations.CLOUD_NAMES)
    assert ambient == set(destinations.FLAGS)
    for cloud in ambient:
        assert BACKENDS[cloud].mints
        assert OperatorConfig().ambient_hosts(cloud) == ()


class _NoMints(MintCache):
    def get(self, *args: object, **kwargs: object):  # type: ignore[override]
        raise AssertionError("a backend that does not mint asked the mint cache")


@pytest.mark.parametrize(
    ("method", "auth"),
    [
        ("anonymous", {"anonymous": {}}),
        ("basic", {"basic": {"secretRef": {"name": "s"}}}),
        ("token", {"token": {"secretRef": {"name": "s"}}}),
    ],
)
def test_backends_that_do_not_mint_never_ask_the_mint_cache(method: str, auth: dict) -> None:
    assert not BACKENDS[method].mints
    secret = {"username": b"u", "password": b"p", "token": b"t"}
    ctx = ResolveContext(lambda ns, name: secret, "team", True, cache=_NoMints())
    spec = RegistrySpec.model_validate({"server": "r.io", "auth": auth})
    assert resolve(spec, ctx).provider == method


def test_the_operator_imports_no_cloud_sdk_until_an_object_uses_one() -> None:
    result = _python(
        "import sys\n"
        "import ocireg.cli\n"
        "from ocireg.api.spec import RegistrySpec\n"
        "from ocireg.providers import ResolveContext, resolve\n"
        "spec = RegistrySpec.model_validate({'server': 'r.io', 'auth': {'anonymous': {}}})\n"
        "resolve(spec, ResolveContext(lambda ns, name: {}, 'team', True))\n"
        "roots = {'boto3', 'botocore', 'azure', 'google'}\n"
        "clouds = {f'ocireg.providers.{m}' for m in ('ecr', 'gcp', 'acr', 'webhook')}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots or m in clouds))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_the_providers_fails_while_a_method_has_no_backend() -> None:
    result = _python(
        "import ocireg.api.spec as spec\n"
        "spec.AUTH_METHODS = (*spec.AUTH_METHODS, 'quay')\n"
        "import ocireg.providers\n"
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "no backend for ['quay']" in result.stderr
