"""Reading the CA bundle `tls.caBundleRef` names: every way it can be wrong is a
ReconcileError with a named reason that says whether only the user can fix it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import CABundleRef

ReadData = Callable[[str, str], Mapping[str, bytes] | None]

# A registry's CA chain is a few KiB; a tenant's bundle is held in memory by every client
# made for her object (kept per object for chart syncs), so it is bounded.
MAX_CA_BUNDLE_BYTES = 256 * 1024


def ca_bundle_namespace(ref: CABundleRef, default_namespace: str, namespaced: bool) -> str:
    """Where the bundle is read from. A tenant's (OCIRegistry) reference stays in its own
    namespace: the CRD rule refuses `namespace` there, but an object written before that rule,
    or by a client that skips validation, must not make the operator read another namespace."""
    chosen = ref.namespace or default_namespace
    if namespaced and chosen != default_namespace:
        raise ReconcileError(
            Reason.CROSS_NAMESPACE_REFERENCE,
            "an OCIRegistry may only use a tls.caBundleRef in its own namespace; remove "
            "tls.caBundleRef.namespace",
        )
    return chosen


def read_ca_bundle(
    ref: CABundleRef,
    default_namespace: str,
    namespaced: bool,
    read_secret: ReadData,
    read_config_map: ReadData,
) -> str:
    """The PEM text. ``read_secret`` raises SecretNotFound itself; ``read_config_map`` returns
    None for a missing ConfigMap, which stalls the same way (the user has to create it)."""
    namespace = ca_bundle_namespace(ref, default_namespace, namespaced)
    if ref.secret:
        where = f"Secret {namespace}/{ref.secret}"
        data = read_secret(namespace, ref.secret)
    else:
        where = f"ConfigMap {namespace}/{ref.config_map}"
        data = read_config_map(namespace, ref.config_map or "")
        if data is None:
            raise ReconcileError(Reason.CONFIG_MAP_NOT_FOUND, f"{where} does not exist")
    if data is None:  # pragma: no cover - read_secret raises instead
        raise ReconcileError(Reason.SECRET_NOT_FOUND, f"{where} does not exist")
    if ref.key not in data:
        raise ReconcileError(Reason.KEY_MISSING, f"{where} has no key {ref.key!r}")
    if len(data[ref.key]) > MAX_CA_BUNDLE_BYTES:
        raise ReconcileError(
            Reason.INVALID_CA_BUNDLE,
            f"{where} key {ref.key!r} is {len(data[ref.key]) // 1024} KiB, over the "
            f"{MAX_CA_BUNDLE_BYTES // 1024} KiB a CA bundle may hold; keep only the CAs the "
            "registry needs",
        )
    try:
        return data[ref.key].decode("utf-8")
    except UnicodeDecodeError:
        # The bytes are not quoted back: a Secret may hold anything.
        raise ReconcileError(
            Reason.INVALID_CA_BUNDLE,
            f"{where} key {ref.key!r} is not text: a CA bundle is PEM certificates "
            "(-----BEGIN CERTIFICATE-----), not DER or other binary data",
        ) from None
