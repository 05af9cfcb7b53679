"""Restarts that cost nothing while credentials are valid: reusing what the copies hold.

A restarted operator has an empty mint cache and no memory of what it verified. Rather than
mint every credential again, rewrite every copy and verify everything against its registry,
it trusts exactly what it can prove it did itself. Every status it writes carries a seal
(status.credentials.seal, providers/seal.py):

    HMAC(operator key, uid, fingerprint(spec, credential, CA bundle, generation),
         mint key digest, issuedAt, refreshedAt)

The key is in a Secret of the operator's namespace, which tenants cannot read, and the
status of a ClusterOCIRegistry is not theirs to write. Nothing secret is recorded: the
credential stays in the Secrets, the inputs appear only inside a keyed digest.

After a restart, for one object (`recalled`, pure; the cache calls it through
ResolveContext.recall before it would mint):

- the status must say the credentials were verified (CredentialsReady True for this
  generation: one whose last verification failed is minted again, as a restart always did),
  and hold a record: provider, endpoints, issuedAt, refreshedAt, a seal;
- one copy is read (the one most copies agree with, pullsecrets.runtime picks it from the
  index; an object with no pull secret anywhere, only an Argo CD Secret, is read back from
  that); it must be ours, exactly: ownership.claim says OURS for this uid (never a copy of
  a predecessor or another object, never one outside an OCIRegistry's namespace);
- its data must parse as a credential for every endpoint recorded;
- the seal of that credential, with this object's uid, the spec, CA and generation as they
  are now, the digest of the inputs the provider would mint from now, and the recorded
  times, must be the recorded seal. So a changed spec, generation, CA, input Secret,
  webhook header, trust domain, or a copy or record edited by anyone is not reused;
- then the cache keeps it only while it is not due (expiry minus renewBefore, with the same
  jitter, or the refresh interval for credentials without expiry) and mints otherwise.

What is handed out is the credential rebuilt from the sealed parts (what plan writes is a
function of them), so no byte of a copy the seal does not cover is ever repeated, and a
copy someone edited is put right by the namespace jobs as it would be without a restart.
The worst a tenant can do with the copies in her namespace is make a restart mint again;
with her own OCIRegistry's status (tenants may be allowed to write it) she can at most
bring back a record and copy the operator itself wrote for that object earlier, which only
ever reaches her own namespace and is renewed at its recorded time.

`verified_age` does the same for what was verified: when the record proves the credential
in hand (minted, reused or read from a Secret: every provider) is the one verified at
refreshedAt for this spec, the restarted operator resumes that schedule instead of verifying
at once, so the status it computes is the one already written: no patch."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.ownership import Claim, RegistryRef, claim
from ocireg.api.spec import Format
from ocireg.providers import static
from ocireg.providers.cache import Recall
from ocireg.providers.seal import Sealer

log = logging.getLogger(__name__)

# What plan.desired_secrets writes, per format: the Secret type.
SECRET_TYPES = {
    Format.dockerconfigjson: "kubernetes.io/dockerconfigjson",
    Format.basic_auth: "kubernetes.io/basic-auth",
    Format.env: "Opaque",
}
# The copy read back: the format that carries the most (per-endpoint passwords) first.
PREFERRED = (Format.dockerconfigjson, Format.basic_auth, Format.env)
# An object that writes no pull secret anywhere (a ClusterOCIRegistry for Argo CD only) is
# read back from its Argo CD Secret (plan.argocd_secrets: Opaque, username and password),
# when it has one registry host: with more, its per-host passwords are in several Secrets.
ARGOCD: Final = "argocd"
CopyFormat = Format | Literal["argocd"]

# One copy of this object's Secret ``name``: (namespace, body), or None.
CopyReader = Callable[[RegistryRef, str], tuple[str, Mapping[str, Any]] | None]
# reconcile's fingerprint of what it verifies, for a credential (spec, CA, generation fixed).
Fingerprint = Callable[[Credential], str]


def iso(moment: dt.datetime) -> str:
    """A time as status holds it (whole seconds, Z)."""
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def status_record(
    sealer: Sealer,
    uid: str | None,
    fingerprint: str,
    credential: Credential,
    refreshed_at: str,
) -> dict[str, str]:
    """The fields of status.credentials that make the record: issuedAt (minted
    credentials) and the seal."""
    issued = iso(credential.issued_at) if credential.issued_at is not None else None
    record = {"seal": sealer.seal(uid, fingerprint, credential.minted_from, issued, refreshed_at)}
    if issued is not None:
        record["issuedAt"] = issued
    return record


@dataclass(frozen=True)
class Recalled:
    """What `recalled` decided: the credential to reuse, or None and why not (for the log
    and the tests; never the credential's bytes)."""

    credential: Credential | None
    why: str
    namespace: str | None = None


def _decoded(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def read_back(
    fmt: CopyFormat,
    body: Mapping[str, Any],
    provider: str,
    endpoints: tuple[str, ...],
    expires_at: dt.datetime | None,
) -> Credential | None:
    """The credential a copy in format ``fmt`` holds for ``endpoints`` (the inverse of
    plan.desired_secrets), or None when it holds none."""
    data = body.get("data") or {}
    wanted = "Opaque" if fmt == ARGOCD else SECRET_TYPES[Format(fmt)]
    if not isinstance(data, Mapping) or body.get("type") != wanted or not endpoints:
        return None
    if fmt == ARGOCD:
        username, password = _decoded(data, "username"), _decoded(data, "password")
        if len(endpoints) != 1 or not password:
            return None
        return Credential(provider, endpoints, username or None, password, expires_at=expires_at)
    if fmt is Format.dockerconfigjson:
        text = _decoded(data, ".dockerconfigjson")
        if text is None:
            return None
        try:
            entries = [
                static.from_docker_entry(static.docker_config_entry(text, host, "copy"), "copy")
                for host in endpoints
            ]
        except (ReconcileError, TypeError, AttributeError):
            return None
        first = entries[0]
        return Credential(
            provider,
            endpoints,
            first["username"],
            first["password"],
            identity_token=first["identity_token"],
            registry_token=first["registry_token"],
            expires_at=expires_at,
            passwords=tuple(
                (host, entry["password"])
                for host, entry in zip(endpoints, entries, strict=True)
                if entry["password"] is not None
            ),
        )
    if fmt is Format.basic_auth:
        username, password = _decoded(data, "username"), _decoded(data, "password")
        if password is None:
            return None
        return Credential(provider, endpoints, username or None, password, expires_at=expires_at)
    username = _decoded(data, "OCI_REGISTRY_USERNAME")
    password = _decoded(data, "OCI_REGISTRY_PASSWORD")
    token = _decoded(data, "OCI_REGISTRY_TOKEN")
    if password is None and token is None:
        return None
    return Credential(
        provider,
        endpoints,
        username or None,
        password or None,
        identity_token=token or None,
        expires_at=expires_at,
    )


def _verified(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether the status says its credentials were verified, for this generation."""
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "CredentialsReady"),
        {},
    )
    return ready.get("status") == "True" and ready.get("observedGeneration") == generation


def recalled(
    ref: RegistryRef,
    status: Mapping[str, Any] | None,
    generation: int | None,
    fmt: CopyFormat,
    copy: tuple[str, Mapping[str, Any]] | None,
    minted_from: str,
    fingerprint: Fingerprint,
    sealer: Sealer,
) -> Recalled:
    """Whether the copy holds the credential this object (ref, with its uid) minted from
    ``minted_from`` and recorded in ``status`` (as it was; its credentials verified for this
    ``generation``: a credential whose last verification failed is minted again, as a
    restart always did), for the spec ``fingerprint`` is made for. See the module text."""
    status = status or {}
    record: Mapping[str, Any] = status.get("credentials") or {}
    if not _verified(status, generation):
        return Recalled(None, "the status does not say its credentials were verified")
    seal, issued_text = record.get("seal"), record.get("issuedAt")
    provider, endpoints = record.get("provider"), record.get("endpoints")
    issued = parse_time(issued_text)
    if not (ref.uid and isinstance(seal, str) and issued is not None):
        return Recalled(None, "no record of a minted credential in the status")
    if not isinstance(provider, str) or not isinstance(endpoints, list):
        return Recalled(None, "no record of a minted credential in the status")
    if not all(isinstance(e, str) for e in endpoints):
        return Recalled(None, "no record of a minted credential in the status")
    expires_text = record.get("expiresAt")
    expires = parse_time(expires_text)
    if expires_text is not None and expires is None:
        return Recalled(None, "the recorded expiry is not a time")
    if copy is None:
        return Recalled(None, "no copy of the Secret to read it back from")
    namespace, body = copy
    meta = body.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if claim(ref, namespace, labels, annotations) is not Claim.OURS:
        return Recalled(None, f"the copy in {namespace} is not this object's", namespace)
    found = read_back(fmt, body, provider, tuple(endpoints), expires)
    if found is None:
        return Recalled(None, f"the copy in {namespace} holds no credential", namespace)
    found = replace(found, issued_at=issued, minted_from=minted_from)
    refreshed = record.get("refreshedAt")
    if not isinstance(refreshed, str) or not sealer.matches(
        seal, ref.uid, fingerprint(found), minted_from, issued_text, refreshed
    ):
        return Recalled(
            None,
            f"the copy in {namespace} and the status record do not match what this object "
            "would mint now (changed spec or inputs, or an edited copy or record)",
            namespace,
        )
    return Recalled(found, "sealed", namespace)


def preferred_format(formats: Iterable[Format]) -> Format | None:
    wanted = set(formats)
    return next((f for f in PREFERRED if f in wanted), None)


def recaller(
    ref: RegistryRef,
    status: Mapping[str, Any] | None,
    generation: int | None,
    formats: Iterable[Format],
    names: Mapping[Format, str],
    copies: CopyReader | None,
    fingerprint: Fingerprint,
    sealer: Sealer,
    argocd: str | None = None,
) -> Recall | None:
    """ResolveContext.recall for one object: `recalled` on one copy of its Secret (in the
    format that carries the most; else its Argo CD Secret named ``argocd``), read only if the
    cache has nothing and the status holds a seal. None: nothing to recall (the cache mints)."""
    fmt = preferred_format(formats)
    if copies is None or fmt is None or not ((status or {}).get("credentials") or {}).get("seal"):
        return None
    name = names[fmt]

    def recall(minted_from: str) -> Credential | None:
        kind: CopyFormat = fmt
        copy = copies(ref, name)
        if copy is None and argocd is not None:
            kind, copy = ARGOCD, copies(ref, argocd)
        found = recalled(ref, status, generation, kind, copy, minted_from, fingerprint, sealer)
        if found.credential is None:
            log.info("%s: minting again: %s", ref.display, found.why)
        else:
            log.info(
                "%s: reusing its credentials from the copy in %s", ref.display, found.namespace
            )
        return found.credential

    return recall


def choose_copy(
    ref: RegistryRef, candidates: Iterable[tuple[str, Mapping[str, str], Mapping[str, str], Any]]
) -> str | None:
    """Of (namespace, labels, annotations, data digest) of the indexed Secrets of one name,
    the namespace of a copy that is this object's, holding what most of its copies hold
    (so one namespace's edited copy is never the one read back); None if there is none."""
    tally: dict[Any, list[str]] = {}
    for namespace, labels, notes, digest in candidates:
        if claim(ref, namespace, labels, notes) is Claim.OURS:
            tally.setdefault(digest, []).append(namespace)
    if not tally:
        return None
    # The most copies alike; of equal counts, the one in the first namespace by name.
    most = min(tally.values(), key=lambda found: (-len(found), min(found)))
    return min(most)


def verified_age(
    ref: RegistryRef,
    old_status: Mapping[str, Any],
    generation: int | None,
    fingerprint: str,
    credential: Credential,
    sealer: Sealer,
    now: dt.datetime,
) -> float | None:
    """Seconds since ``credential`` was verified for this spec (``fingerprint``), when the
    status proves it (its seal, and CredentialsReady True for this generation); None:
    verify it now."""
    record = old_status.get("credentials") or {}
    refreshed_text = record.get("refreshedAt")
    refreshed = parse_time(refreshed_text)
    if not ref.uid or refreshed is None or not _verified(old_status, generation):
        return None
    issued = iso(credential.issued_at) if credential.issued_at is not None else None
    if record.get("issuedAt") != issued:
        return None
    if not sealer.matches(
        record.get("seal"), ref.uid, fingerprint, credential.minted_from, issued, refreshed_text
    ):
        return None
    return max(0.0, (now - refreshed).total_seconds())


__all__ = [
    "CopyReader",
    "Fingerprint",
    "Recalled",
    "choose_copy",
    "preferred_format",
    "read_back",
    "recalled",
    "recaller",
    "status_record",
    "verified_age",
]
