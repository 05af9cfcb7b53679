from __future__ import annotations

import base64
import json

import pytest

from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.providers import ResolveContext, resolve

SECRETS = {
    ("team-a", "basic"): {"username": b"robot$ci", "password": b"pw\n"},
    ("team-a", "only-pw"): {"password": b"json-key"},
    ("team-a", "token"): {"token": b"refresh-me"},
    ("team-a", "dockercfg"): {
        ".dockerconfigjson": json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pat").decode()},
                    "ghcr.io": {"username": "gh", "password": "ghp"},
                }
            }
        ).encode()
    },
    ("team-a", "broken"): {".dockerconfigjson": b"{not json"},
    ("team-b", "basic"): {"username": b"other", "password": b"other"},
}


def _read(namespace: str, name: str):
    try:
        return SECRETS[(namespace, name)]
    except KeyError:
        raise ReconcileError("SecretNotFound", f"Secret {namespace}/{name} not found") from None


def _resolve(spec: dict, namespaced: bool = True):
    return resolve(RegistrySpec.model_validate(spec), ResolveContext(_read, "team-a", namespaced))


def test_basic() -> None:
    credential = _resolve({"server": "r.io", "auth": {"basic": {"secretRef": {"name": "basic"}}}})
    assert (credential.username, credential.password) == ("robot$ci", "pw")
    assert credential.endpoints == ("r.io",)


def test_basic_with_literal_username() -> None:
    credential = _resolve(
        {
            "server": "europe-docker.pkg.dev",
            "auth": {"basic": {"secretRef": {"name": "only-pw"}, "username": "_json_key"}},
        }
    )
    assert (credential.username, credential.password) == ("_json_key", "json-key")


def test_token_types() -> None:
    identity = _resolve({"server": "r.io", "auth": {"token": {"secretRef": {"name": "token"}}}})
    assert identity.identity_token == "refresh-me"
    registry = _resolve(
        {
            "server": "r.io",
            "auth": {"token": {"secretRef": {"name": "token"}, "type": "RegistryToken"}},
        }
    )
    assert registry.registry_token == "refresh-me"


@pytest.mark.parametrize(
    ("server", "user", "password"), [("docker.io", "hub", "pat"), ("ghcr.io", "gh", "ghp")]
)
def test_docker_config_entry_for_the_server(server: str, user: str, password: str) -> None:
    credential = _resolve(
        {"server": server, "auth": {"dockerConfig": {"secretRef": {"name": "dockercfg"}}}}
    )
    assert (credential.username, credential.password) == (user, password)


@pytest.mark.parametrize(
    ("spec", "reason", "fragment"),
    [
        (
            {"server": "r.io", "auth": {"basic": {"secretRef": {"name": "missing"}}}},
            "SecretNotFound",
            "team-a/missing",
        ),
        (
            {"server": "r.io", "auth": {"basic": {"secretRef": {"name": "only-pw"}}}},
            "KeyMissing",
            "no key 'username'",
        ),
        (
            {"server": "quay.io", "auth": {"dockerConfig": {"secretRef": {"name": "dockercfg"}}}},
            "KeyMissing",
            "no entry for quay.io (it has: docker.io, ghcr.io)",
        ),
        (
            {"server": "r.io", "auth": {"dockerConfig": {"secretRef": {"name": "broken"}}}},
            "InvalidDockerConfig",
            "not valid JSON",
        ),
        (
            {
                "server": "r.io",
                "auth": {"basic": {"secretRef": {"name": "basic", "namespace": "team-b"}}},
            },
            "CrossNamespaceReference",
            "own namespace",
        ),
    ],
)
def test_errors_say_what_to_fix(spec: dict, reason: str, fragment: str) -> None:
    with pytest.raises(ReconcileError) as caught:
        _resolve(spec)
    assert caught.value.reason == reason
    assert fragment in caught.value.message
    for secret in SECRETS.values():
        for value in secret.values():
            assert (
                value.decode(errors="ignore").strip() not in caught.value.message or len(value) < 4
            )


def test_cluster_kind_may_name_a_namespace() -> None:
    credential = _resolve(
        {
            "server": "r.io",
            "auth": {"basic": {"secretRef": {"name": "basic", "namespace": "team-b"}}},
        },
        namespaced=False,
    )
    assert credential.username == "other"
