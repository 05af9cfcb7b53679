"""Credential backends: each turns a spec plus Secrets into a Credential.

One ``Provider`` interface, one registration table (``BACKENDS``), one module per backend
(``static`` serves the four methods whose credentials sit in Secrets as they are). resolve()
dispatches through the table only, and imports a backend's module on first use, so boto3,
azure-identity and google-auth load only in an operator that has an object using them.

To add a backend: add its field to ``ocireg.api.spec.AuthMethods`` (the field's camelCase
name is the method's name, and the CRD's one-of rule follows), write ``providers/<name>.py``
with a module-level ``resolve(spec, ctx) -> Credential`` (a minting one goes through
``ctx.mint_key`` and ``ctx.minted``, which after a restart also reuses what the object's
copies hold: providers/recall.py), and add one row to ``BACKENDS`` (a new module also goes
into ``_MODULES`` at the bottom, where mypy checks it against ``Provider``). Importing this
package fails while the table and the spec's methods differ.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ocireg.api.cloud import ServiceAccountRef
from ocireg.api.common import SecretRef
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import AUTH_METHODS, RegistrySpec
from ocireg.oci import TLSOptions
from ocireg.providers import destinations
from ocireg.providers.cache import MintCache, Recall
from ocireg.settings import OperatorConfig

# (namespace, name) -> the Secret's decoded data; raises ReconcileError SecretNotFound.
SecretReader = Callable[[str, str], Mapping[str, bytes]]
# (namespace, service account, audience) -> a short-lived ServiceAccount token.
TokenRequester = Callable[[str, str, str], str]


def _no_tokens(namespace: str, name: str, audience: str) -> str:
    raise ReconcileError(Reason.UNSUPPORTED, "ServiceAccount tokens are not available here")


@dataclass(frozen=True)
class ResolveContext:
    read_secret: SecretReader
    # Where a SecretRef without a namespace points: the object's own namespace for
    # OCIRegistry, the operator's credentials namespace for ClusterOCIRegistry.
    default_namespace: str
    namespaced: bool
    request_token: TokenRequester = _no_tokens
    config: OperatorConfig = field(default_factory=OperatorConfig)
    cache: MintCache = field(default_factory=MintCache)
    renew_before: str = "20%"
    refresh_interval: dt.timedelta = dt.timedelta(hours=1)
    # How to reach the registry itself, for providers that call it (ACR's token exchange).
    registry_tls: TLSOptions = field(default_factory=TLSOptions)
    # After a restart: the credential this object's copies hold for a mint key, when its
    # status seal vouches for it (providers/recall.py); None: always mint.
    recall: Recall | None = None
    # Rotate now (a refresh request on the object): mint again whatever the cache holds.
    fresh: bool = False

    def secret(self, ref: SecretRef) -> tuple[str, Mapping[str, bytes]]:
        namespace = self._namespace(ref.namespace)
        return namespace, self.read_secret(namespace, ref.name)

    def service_account_token(self, ref: ServiceAccountRef, audience: str) -> str:
        return self.request_token(self._namespace(ref.namespace), ref.name, audience)

    def service_account_id(self, ref: ServiceAccountRef) -> str:
        return f"{self._namespace(ref.namespace)}/{ref.name}"

    def trust_domain(self) -> tuple[str, ...]:
        """Who may share a mint with this object: a tenant only with objects of its own
        namespace, a platform team's object only with other cluster objects."""
        if self.namespaced:
            return ("OCIRegistry", self.default_namespace)
        return ("ClusterOCIRegistry",)

    def mint_key(self, provider: str, *inputs: object) -> tuple[str, str]:
        """The mint cache key for a credential made from ``inputs``: every input the mint
        consumes (whole secrets, headers, TLS, endpoints), bound to the trust domain. Only a
        caller holding the same secret, in the same trust domain, gets the same key. Keyed
        with the operator's key (providers/seal.py): the same across restarts, and never a
        digest of a secret that anyone without the key could check guesses against."""
        return (provider, self.cache.sealer.digest(self.trust_domain(), *inputs))

    def minted(
        self,
        key: tuple[str, str],
        mint: Callable[[], Credential],
        max_age: dt.timedelta | None = None,
    ) -> Credential:
        """The shared cache's credential for ``key`` (from mint_key), counted against this
        tenant's share of the cache; after a restart, the one the copies hold while it is
        valid (``recall``)."""
        tenant = self.default_namespace if self.namespaced else None
        return self.cache.get(
            key,
            self.renew_before,
            mint,
            max_age,
            tenant=tenant,
            recall=self.recall,
            fresh=self.fresh,
        )

    def check_ambient_allowed(self, method: str) -> None:
        if self.namespaced and not self.config.allow_tenant_ambient_identity:
            raise ReconcileError(
                Reason.AMBIENT_IDENTITY_NOT_ALLOWED,
                f"an OCIRegistry must name its own {method} credentials (auth.{method}."
                "credentials): only a ClusterOCIRegistry may use the operator's own identity",
            )

    def _namespace(self, namespace: str | None) -> str:
        chosen = namespace or self.default_namespace
        if self.namespaced and chosen != self.default_namespace:
            raise ReconcileError(
                Reason.CROSS_NAMESPACE_REFERENCE,
                "an OCIRegistry may only use Secrets and ServiceAccounts in its own namespace",
            )
        return chosen


def check_ambient_destination(cloud: str, servers: Iterable[str], ctx: ResolveContext) -> None:
    """Refuse, before anything is minted or sent, a credential of the operator's own
    ``cloud`` identity for registries its cloud does not run (destinations.py)."""
    tls = ctx.registry_tls
    refusal = destinations.ambient_refusal(
        cloud,
        servers,
        ctx.config.ambient_hosts(cloud),
        insecure=tls.insecure,
        skip_verify=tls.skip_verify,
        custom_ca=bool(tls.ca_bundle),
        namespaced=ctx.namespaced,
    )
    if refusal is not None:
        raise ReconcileError(Reason.AMBIENT_DESTINATION_NOT_ALLOWED, refusal)


@runtime_checkable
class Provider(Protocol):
    """What every backend module offers: the credential for ``spec`` (``spec.server`` and
    ``spec.auth`` are set), or a ReconcileError saying why not."""

    def resolve(self, spec: RegistrySpec, ctx: ResolveContext) -> Credential: ...


@dataclass(frozen=True)
class Backend:
    """One row of the registration table."""

    module: str  # under ocireg.providers; imported on first use
    # Makes short-lived credentials (through ctx.minted, renewed before they expire) rather
    # than reading them as they are from Secrets.
    mints: bool = False
    # May use the operator's own cloud identity (ctx.check_ambient_allowed), whose
    # credentials only that cloud's registries may receive (destinations.py).
    ambient: bool = False


# The registration table: every auth method of the spec, and the backend that resolves it.
BACKENDS: Mapping[str, Backend] = {
    "anonymous": Backend("static"),
    "basic": Backend("static"),
    "token": Backend("static"),
    "dockerConfig": Backend("static"),
    "ecr": Backend("ecr", mints=True, ambient=True),
    "gcp": Backend("gcp", mints=True, ambient=True),
    "acr": Backend("acr", mints=True, ambient=True),
    "webhook": Backend("webhook", mints=True),
}
if set(BACKENDS) != set(AUTH_METHODS):
    raise ImportError(
        "ocireg.providers.BACKENDS and the spec's auth methods differ: "
        f"no backend for {sorted(set(AUTH_METHODS) - set(BACKENDS))}, "
        f"no such method for {sorted(set(BACKENDS) - set(AUTH_METHODS))}"
    )


def provider(method: str) -> Provider:
    """The backend for ``method``, its module imported now if it was not yet: each SDK is
    imported only when an object uses it (boto3, azure-identity and google-auth together
    would add tens of MB to every operator that never needs them)."""
    backend = BACKENDS.get(method)
    if backend is None:
        raise ReconcileError(Reason.UNSUPPORTED_AUTH, f"auth method {method} is not supported")
    module = importlib.import_module(f"{__name__}.{backend.module}")
    if not isinstance(module, Provider):
        raise TypeError(f"{module.__name__} has no resolve(spec, ctx)")
    return module


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    if spec.auth is None or spec.server is None:
        raise ReconcileError(
            Reason.INVALID_SPEC, "server and auth must be set (directly or through extends)"
        )
    return provider(spec.auth.method).resolve(spec, ctx)


if TYPE_CHECKING:
    # mypy checks that each backend module fits Provider (signature included).
    from ocireg.providers import acr, ecr, gcp, static, webhook

    _MODULES: tuple[Provider, ...] = (acr, ecr, gcp, static, webhook)


__all__ = [
    "BACKENDS",
    "Backend",
    "Provider",
    "ResolveContext",
    "SecretReader",
    "TokenRequester",
    "check_ambient_destination",
    "provider",
    "resolve",
]
