"""One module per auth method; each turns a spec plus Secrets into a Credential."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ocireg.api.cloud import ServiceAccountRef
from ocireg.api.common import SecretRef
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.oci import TLSOptions
from ocireg.providers import destinations, static
from ocireg.providers.cache import MintCache
from ocireg.settings import OperatorConfig

# (namespace, name) -> the Secret's decoded data; raises ReconcileError SecretNotFound.
SecretReader = Callable[[str, str], Mapping[str, bytes]]
# (namespace, service account, audience) -> a short-lived ServiceAccount token.
TokenRequester = Callable[[str, str, str], str]


def _no_tokens(namespace: str, name: str, audience: str) -> str:
    raise ReconcileError("Unsupported", "ServiceAccount tokens are not available here")


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
        caller holding the same secret, in the same trust domain, gets the same key."""
        return (provider, digest(self.trust_domain(), *inputs))

    def minted(
        self,
        key: tuple[str, str],
        mint: Callable[[], Credential],
        max_age: dt.timedelta | None = None,
    ) -> Credential:
        """The shared cache's credential for ``key`` (from mint_key), counted against this
        tenant's share of the cache."""
        tenant = self.default_namespace if self.namespaced else None
        return self.cache.get(key, self.renew_before, mint, max_age, tenant=tenant)

    def check_ambient_allowed(self, method: str) -> None:
        if self.namespaced and not self.config.allow_tenant_ambient_identity:
            raise ReconcileError(
                "AmbientIdentityNotAllowed",
                f"an OCIRegistry must name its own {method} credentials (auth.{method}."
                "credentials): only a ClusterOCIRegistry may use the operator's own identity",
            )

    def _namespace(self, namespace: str | None) -> str:
        chosen = namespace or self.default_namespace
        if self.namespaced and chosen != self.default_namespace:
            raise ReconcileError(
                "CrossNamespaceReference",
                "an OCIRegistry may only use Secrets and ServiceAccounts in its own namespace",
            )
        return chosen


# Keys digests of secret material: a digest that ever reached a log or a heap dump could not
# be checked offline against guessed passwords without this per-process key.
_DIGEST_KEY = secrets.token_bytes(32)


def digest(*parts: object) -> str:
    """A keyed digest of identity inputs, for cache keys (never the inputs themselves).
    repr() of str/bytes/None/numbers/dicts/tuples quotes and escapes every value, so
    different inputs cannot produce the same text."""
    return hmac.new(_DIGEST_KEY, repr(parts).encode(), hashlib.sha256).hexdigest()


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
        raise ReconcileError("AmbientDestinationNotAllowed", refusal, stalls=True)


def endpoints(spec: RegistrySpec) -> tuple[str, ...]:
    assert spec.server is not None
    return (spec.server,)


CLOUD_METHODS = frozenset({"ecr", "gcp", "acr", "webhook"})


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    if spec.auth is None or spec.server is None:
        raise ReconcileError(
            "InvalidSpec", "server and auth must be set (directly or through extends)"
        )
    method = spec.auth.method
    if method in static.METHODS:
        return static.resolve(spec, ctx, endpoints(spec))
    if method not in CLOUD_METHODS:
        raise ReconcileError("UnsupportedAuth", f"auth method {method} is not supported")
    # Each SDK is imported only when an object uses it: boto3, azure-identity and google-auth
    # together would add tens of MB to every operator that never needs them.
    module = importlib.import_module(f"{__name__}.{method}")
    resolver: Callable[[RegistrySpec, ResolveContext], Credential] = module.resolve
    return resolver(spec, ctx)


__all__ = [
    "ResolveContext",
    "SecretReader",
    "TokenRequester",
    "check_ambient_destination",
    "digest",
    "resolve",
]
