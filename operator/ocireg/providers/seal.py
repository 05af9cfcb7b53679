"""The operator's own key, and the keyed digests made with it: the mint cache's keys
(ResolveContext.mint_key) and the seal in each object's status that lets a restarted operator
reuse the credentials its copies hold (providers/recall.py).

The key is 32 random bytes in the Secret `ocireg-seal-key` of the operator's credentials
namespace (its own namespace in the shipped manifests), made by the first replica that starts
and never changed by the operator (immutable; the own-objects admission policy lets it create
that one Secret and change none). Tenants cannot read that namespace, so they can neither
compute a seal nor check guesses of a secret input (a webhook's header, say) against a digest
they can see. Without the key (not allowed to read or create it) every digest uses a key of
this process only: nothing breaks, but a restart mints again and rewrites every copy, as
before there was a key.

Deleting the Secret is the way to invalidate every seal at once (the next start makes a new
key; every object then mints once and rewrites its copies)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from ocireg.api.names import SEAL_KEY_FIELD, SEAL_KEY_SECRET

log = logging.getLogger(__name__)

KEY_BYTES = 32
# A seal is the first 128 bits of an HMAC-SHA256 (32 hex digits), as in HMAC-SHA256-128.
SEAL_HEX = 32
SEAL_VERSION = "ocireg.dev/seal/v1"


class Sealer:
    """Keyed digests under one key: the persistent one from `load_key`, or (None) one of
    this process only."""

    def __init__(self, key: bytes | None = None) -> None:
        self.persistent = key is not None
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)

    def digest(self, *parts: object) -> str:
        """A keyed digest of ``parts`` (never the parts themselves). repr() of str, bytes,
        None, numbers, dicts and tuples quotes and escapes every value, so different inputs
        cannot produce the same text."""
        return hmac.new(self._key, repr(parts).encode(), hashlib.sha256).hexdigest()

    def jitter(self, minted_from: str, issued_at: dt.datetime, spread: float) -> float:
        """The fraction of a credential's renewal window given up, in [0, spread): drawn
        from the mint (its inputs and when it was made) rather than at random, so that a
        restarted operator renews a reused credential at the very moment it would have."""
        drawn = self.digest("jitter", minted_from, issued_at.isoformat())
        return spread * int(drawn[:16], 16) / 2**64

    def seal(
        self,
        uid: str | None,
        fingerprint: str,
        minted_from: str | None,
        issued_at: str | None,
        refreshed_at: str | None,
    ) -> str:
        """What status.credentials.seal holds: this object (uid), the fingerprint of what was
        verified (spec, credential, CA bundle, generation: reconcile's), the inputs it was
        minted from (the mint key, keyed) and when it was minted and verified."""
        parts = (SEAL_VERSION, uid, fingerprint, minted_from, issued_at, refreshed_at)
        return self.digest(*parts)[:SEAL_HEX]

    def matches(self, recorded: object, *parts: Any) -> bool:
        """Whether ``recorded`` is the seal of ``parts`` (compared in constant time)."""
        if not isinstance(recorded, str) or len(recorded) != SEAL_HEX:
            return False
        return hmac.compare_digest(recorded, self.seal(*parts))


def key_secret(namespace: str) -> dict[str, Any]:
    """The Secret a new key is stored in."""
    key = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SEAL_KEY_SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "ocireg", "app.kubernetes.io/component": "seal"},
        },
        "type": "Opaque",
        "immutable": True,
        "data": {SEAL_KEY_FIELD: key},
    }


def key_of(body: Mapping[str, Any]) -> bytes | None:
    """The key a Secret holds, or None when it is not one (too short, not base64)."""
    value = (body.get("data") or {}).get(SEAL_KEY_FIELD)
    try:
        key = base64.b64decode(value or "", validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= KEY_BYTES else None


class KeyStore(Protocol):
    """What load_key needs of ocireg.kube.client.Kube."""

    def read_secret_body(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def write_secret(self, body: dict[str, Any]) -> object: ...


def load_key(namespace: str, kube: KeyStore) -> bytes | None:
    """The operator's key from its Secret in ``namespace``, made now if there is none. None
    (with a warning that says what it costs) when it can be neither read nor made."""
    where = f"Secret {namespace}/{SEAL_KEY_SECRET}"
    cost = "restarts mint every credential again and rewrite every copy"
    for attempt in range(2):
        try:
            found = kube.read_secret_body(namespace, SEAL_KEY_SECRET)
        except Exception as error:
            log.warning("cannot read %s (%s): %s", where, type(error).__name__, cost)
            return None
        if found is not None:
            key = key_of(found)
            if key is None:
                log.warning("%s holds no key of %d bytes: %s", where, KEY_BYTES, cost)
            return key
        if attempt:
            break
        body = key_secret(namespace)
        try:
            made = kube.write_secret(body)
        except Exception as error:  # another replica made it first (409), or we may not
            log.debug("creating %s: %s; reading it again", where, type(error).__name__)
            continue
        if made is None:  # the namespace is gone or terminating
            break
        log.info("made the operator's seal key in %s", where)
        return key_of(body)
    log.warning("cannot create %s: %s", where, cost)
    return None
