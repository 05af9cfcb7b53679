"""One module per auth method; each turns a spec plus Secrets into a Credential."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..credential import Credential
from ..errors import ReconcileError
from ..models.spec import RegistrySpec, SecretRef
from . import static

# (namespace, name) -> the Secret's decoded data; raises ReconcileError SecretNotFound.
SecretReader = Callable[[str, str], Mapping[str, bytes]]


@dataclass(frozen=True)
class ResolveContext:
    read_secret: SecretReader
    # Where a SecretRef without a namespace points: the object's own namespace for
    # OCIRegistry, the operator's credentials namespace for ClusterOCIRegistry.
    default_namespace: str
    namespaced: bool

    def secret(self, ref: SecretRef) -> tuple[str, Mapping[str, bytes]]:
        namespace = ref.namespace or self.default_namespace
        if self.namespaced and namespace != self.default_namespace:
            raise ReconcileError(
                "CrossNamespaceReference",
                "an OCIRegistry may only read Secrets in its own namespace",
            )
        return namespace, self.read_secret(namespace, ref.name)


def endpoints(spec: RegistrySpec) -> tuple[str, ...]:
    assert spec.server is not None
    return (spec.server,)


def resolve(spec: RegistrySpec, ctx: ResolveContext) -> Credential:
    if spec.auth is None or spec.server is None:
        raise ReconcileError(
            "InvalidSpec", "server and auth must be set (directly or through extends)"
        )
    method = spec.auth.method
    if method in static.METHODS:
        return static.resolve(spec, ctx, endpoints(spec))
    raise ReconcileError("UnsupportedAuth", f"auth method {method} is not supported yet")


__all__ = ["ResolveContext", "SecretReader", "resolve"]
