"""Credentials that live in Secrets as they are: anonymous, basic, token, dockerConfig."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.names import DOCKER_HUB_HOSTS
from ocireg.api.reasons import Reason
from ocireg.api.spec import RegistrySpec, TokenType

if TYPE_CHECKING:
    from ocireg.providers import ResolveContext


def _value(data: Mapping[str, bytes], key: str, where: str) -> str:
    if key not in data:
        raise ReconcileError(Reason.KEY_MISSING, f"Secret {where} has no key {key!r}")
    try:
        value = data[key].decode().strip()
    except UnicodeDecodeError:
        raise ReconcileError(
            Reason.INVALID_SECRET, f"key {key!r} of Secret {where} is not UTF-8"
        ) from None
    if not value:
        raise ReconcileError(Reason.KEY_MISSING, f"key {key!r} of Secret {where} is empty")
    return value


def _host_of(key: str) -> str:
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if host in DOCKER_HUB_HOSTS else host


def docker_config_entry(config_text: str, server: str, where: str) -> dict[str, Any]:
    """The entry for ``server`` in a Docker config (config.json, .dockerconfigjson or the
    legacy .dockercfg map)."""
    try:
        config = json.loads(config_text)
    except json.JSONDecodeError as error:
        raise ReconcileError(
            Reason.INVALID_DOCKER_CONFIG,
            f"Secret {where} is not valid JSON ({error.msg} at line {error.lineno})",
        ) from None
    if not isinstance(config, dict):
        raise ReconcileError(Reason.INVALID_DOCKER_CONFIG, f"Secret {where} is not a JSON object")
    auths = config.get("auths", config)
    if not isinstance(auths, dict):
        raise ReconcileError(
            Reason.INVALID_DOCKER_CONFIG, f"Secret {where}: auths is not an object"
        )
    wanted = _host_of(server)
    for key, entry in auths.items():
        if isinstance(entry, dict) and _host_of(str(key)) == wanted:
            return entry
    hosts = ", ".join(sorted(_host_of(str(k)) for k in auths)) or "none"
    raise ReconcileError(
        Reason.KEY_MISSING, f"Secret {where} has no entry for {server} (it has: {hosts})"
    )


def _text(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise ReconcileError(
        Reason.INVALID_DOCKER_CONFIG, f"Secret {where}: the {key} field is not a string"
    )


def from_docker_entry(entry: dict[str, Any], where: str) -> dict[str, str | None]:
    username, password = _text(entry, "username", where), _text(entry, "password", where)
    auth = _text(entry, "auth", where)
    if auth and not password:
        try:
            username, _, password = base64.b64decode(auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            raise ReconcileError(
                Reason.INVALID_DOCKER_CONFIG,
                f"Secret {where}: the auth field is not base64 user:password",
            ) from None
    out = {
        "username": username or None,
        "password": password or None,
        "identity_token": _text(entry, "identitytoken", where),
        "registry_token": _text(entry, "registrytoken", where),
    }
    if not (out["password"] or out["identity_token"] or out["registry_token"]):
        raise ReconcileError(
            Reason.INVALID_DOCKER_CONFIG,
            f"Secret {where}: the entry has no password, auth, identitytoken or registrytoken",
        )
    return out


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    auth = spec.auth
    assert auth is not None
    assert spec.server is not None
    endpoints = (spec.server,)
    if auth.anonymous is not None:
        return Credential("anonymous", endpoints)
    if auth.basic is not None:
        namespace, data = ctx.secret(auth.basic.secret_ref)
        where = f"{namespace}/{auth.basic.secret_ref.name}"
        username = auth.basic.username or _value(data, auth.basic.username_key, where)
        return Credential(
            "basic", endpoints, username, _value(data, auth.basic.password_key, where)
        )
    if auth.token is not None:
        namespace, data = ctx.secret(auth.token.secret_ref)
        token = _value(data, auth.token.key, f"{namespace}/{auth.token.secret_ref.name}")
        if auth.token.type is TokenType.registry:
            return Credential("token", endpoints, auth.token.username, registry_token=token)
        return Credential("token", endpoints, auth.token.username, identity_token=token)
    assert auth.docker_config is not None
    namespace, data = ctx.secret(auth.docker_config.secret_ref)
    where = f"{namespace}/{auth.docker_config.secret_ref.name}"
    key = auth.docker_config.key
    if key not in data and ".dockercfg" in data:
        key = ".dockercfg"
    entry = docker_config_entry(_value(data, key, where), spec.server, where)
    found = from_docker_entry(entry, where)
    return Credential(
        "dockerConfig",
        endpoints,
        found["username"],
        found["password"],
        identity_token=found["identity_token"],
        registry_token=found["registry_token"],
    )
