"""Pure decisions: which Secrets should exist where, with what bytes, and how ServiceAccounts
change. No I/O here; everything is unit-tested without a cluster."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import struct
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ocireg.api.credential import Credential
from ocireg.api.names import (
    ANNOTATION_OWNER,
    ANNOTATION_SA_REFS,
    API_VERSION,
    ARGOCD_NAMESPACE,
    ARGOCD_SECRET_TYPE,
    DOCKER_HUB_API_HOST,
    DOCKER_HUB_HOSTS,
    DOCKER_HUB_KEY,
    LABEL_KIND,
    LABEL_REGISTRY,
    LABEL_UID,
    MANAGED_BY,
    MANAGER,
)
from ocireg.api.ownership import (
    OWNER_LABELS,
    Claim,
    RegistryRef,
    claim,
    recorded_owner,
)
from ocireg.api.spec import Format, LabelSelector, RegistrySpec, Targets

__all__ = [
    "ANNOTATION_OWNER",
    "LABEL_KIND",
    "LABEL_REGISTRY",
    "LABEL_UID",
    "MANAGED_BY",
    "MANAGER",
    "Claim",
    "RegistryRef",
]

# ServiceAccount annotation listing the imagePullSecrets we added, so we remove only ours.


@dataclass(frozen=True)
class DesiredSecret:
    namespace: str
    name: str
    type: str
    data: dict[str, str]  # base64, as the API stores it
    labels: dict[str, str]
    annotations: dict[str, str]
    owner_references: list[dict[str, Any]] = field(default_factory=list)
    owner: RegistryRef | None = None  # whom it is written for (ownership.claim decides)
    live: frozenset[str] = frozenset()  # uids of live registry objects (see claim)

    def body(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": dict(self.labels),  # copies: templates are shared between namespaces
            "annotations": dict(self.annotations),
        }
        if self.owner_references:
            metadata["ownerReferences"] = self.owner_references
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": self.type,
            "data": self.data,
        }


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def docker_config_key(host: str) -> str:
    """The `auths` key clients look up for a host (Docker Hub has its legacy URL)."""
    return DOCKER_HUB_KEY if host in DOCKER_HUB_HOSTS else host


def docker_config_entry(credential: Credential, endpoint: str | None = None) -> dict[str, str]:
    entry: dict[str, str] = {}
    password = credential.password_for(endpoint) if endpoint else credential.password
    if password is not None:
        user = credential.username or ""
        entry.update(username=user, password=password, auth=_b64(f"{user}:{password}"))
    if credential.identity_token:
        # What `docker login` stores for a token-server refresh token.
        entry.update(
            identitytoken=credential.identity_token,
            auth=_b64(f"{credential.username or '<token>'}:"),
        )
    if credential.registry_token:
        entry["registrytoken"] = credential.registry_token
    return entry


def docker_config_json(credential: Credential) -> bytes:
    auths = {
        docker_config_key(host): docker_config_entry(credential, host)
        for host in credential.endpoints
    }
    return json.dumps({"auths": auths}, sort_keys=True, separators=(",", ":")).encode()


def secret_names(targets: Targets, registry_name: str) -> dict[Format, str]:
    base = targets.secret_name or registry_name
    return {
        Format.dockerconfigjson: base,
        Format.basic_auth: f"{base}-basic-auth",
        Format.env: f"{base}-env",
    }


def desired_secrets(
    ref: RegistryRef, targets: Targets, credential: Credential, namespace: str
) -> list[DesiredSecret]:
    names = secret_names(targets, ref.name)
    annotations = ref.annotations()
    owners = _owner_references(ref, namespace)
    token = credential.identity_token or credential.registry_token or ""
    out = []
    for fmt in targets.formats:
        if fmt is Format.dockerconfigjson:
            kind, data = (
                "kubernetes.io/dockerconfigjson",
                {".dockerconfigjson": _b64(docker_config_json(credential))},
            )
        elif fmt is Format.basic_auth:
            kind, data = (
                "kubernetes.io/basic-auth",
                {
                    "username": _b64(credential.username or ""),
                    "password": _b64(credential.password or token),
                },
            )
        else:
            kind, data = (
                "Opaque",
                {
                    "OCI_REGISTRY_USERNAME": _b64(credential.username or ""),
                    "OCI_REGISTRY_PASSWORD": _b64(credential.password or ""),
                    "OCI_REGISTRY_TOKEN": _b64(token),
                },
            )
        out.append(
            DesiredSecret(namespace, names[fmt], kind, data, ref.labels(), annotations, owners, ref)
        )
    return out


def _owner_references(ref: RegistryRef, namespace: str) -> list[dict[str, Any]]:
    """An OCIRegistry owns its copies in its own namespace (the garbage collector removes them
    with it); elsewhere, and for the cluster kind, the finalizer's cleanup does."""
    if not (ref.namespaced and ref.uid and namespace == ref.namespace):
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": ref.kind,
            "name": ref.name,
            "uid": ref.uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]


def argocd_namespace(ref: RegistryRef, targets: Targets) -> str | None:
    """Where this object's Argo CD Secrets go (None: nowhere). An OCIRegistry writes them
    into its own namespace only, whatever its spec says (the CRD refuses the field too)."""
    if targets.argo_cd is None:
        return None
    if ref.namespaced:
        return ref.namespace
    return targets.argo_cd.namespace or ARGOCD_NAMESPACE


def argocd_url(endpoint: str, path: str | None) -> str:
    """A Helm OCI repository URL as Argo CD wants it: host[/path], no scheme (its repo-server
    runs `helm pull oci://<url>/<chart>` and logs in to the URL's host). Docker Hub's charts
    are served by registry-1.docker.io, the name Argo CD's documentation uses."""
    host = DOCKER_HUB_API_HOST if endpoint in DOCKER_HUB_HOSTS else endpoint
    return f"{host}/{path}" if path else host


def argocd_secret_names(targets: Targets, registry_name: str, count: int) -> list[str]:
    base = f"{targets.secret_name or registry_name}-argocd"
    return [base] + [f"{base}-{n}" for n in range(2, count + 1)]


def argocd_secret_name(targets: Targets, registry_name: str) -> str | None:
    """The first (often only) Argo CD Secret's name; None without targets.argoCD."""
    if targets.argo_cd is None:
        return None
    return argocd_secret_names(targets, registry_name, 1)[0]


def argocd_secrets(
    ref: RegistryRef, spec: RegistrySpec, credential: Credential, namespace: str
) -> list[DesiredSecret]:
    """The Argo CD repository credential Secrets of targets.argoCD, one per registry host:
    the keys Argo CD's util/db reads (secretToRepoCred / secretToRepository: url, type,
    enableOCI, username, password) and its secret-type label. Argo CD's repo-server logs in
    only when both username and password are set, so the providers' usernames go in as they
    are (AWS, 00000000-0000-0000-0000-000000000000, oauth2accesstoken)."""
    targets = spec.effective_targets
    argo = targets.argo_cd
    if argo is None:
        return []
    path = argo.path or spec.repository_prefix
    token = credential.identity_token or credential.registry_token or ""
    labels = {**ref.labels(), ARGOCD_SECRET_TYPE: argo.secret_type.value}
    names = argocd_secret_names(targets, ref.name, len(credential.endpoints))
    out = []
    for name, endpoint in zip(names, credential.endpoints, strict=True):
        data = {
            "type": _b64("helm"),
            "enableOCI": _b64("true"),
            "url": _b64(argocd_url(endpoint, path)),
            "username": _b64(credential.username or ""),
            "password": _b64(credential.password_for(endpoint) or token),
        }
        out.append(
            DesiredSecret(
                namespace,
                name,
                "Opaque",
                data,
                labels,
                ref.annotations(),
                _owner_references(ref, namespace),
                ref,
            )
        )
    return out


# The labels of a Secret the decisions read: the owner's, and Argo CD's secret type (written
# on the Argo CD Secrets, so a copy that lost it or has the other type is rewritten).
KEPT_LABELS = (*OWNER_LABELS, ARGOCD_SECRET_TYPE)


class Shape(NamedTuple):
    """What many Secrets share: the parts of SecretState that are not their own."""

    labels: tuple[tuple[str, str], ...]  # only KEPT_LABELS
    type: str | None
    annotations: tuple[tuple[str, str], ...]  # only ours: the owner


# Every shape seen, once, by number: a SecretState holds the number (shapes are few, the
# labels of a registry object's formats; none is dropped). Past SHAPES_MAX a state carries its
# shape itself: anyone who may write a Secret labelled as ocireg's could otherwise add a shape
# for good with each label change. Legitimate shapes are a few per registry object.
SHAPES_MAX = 50_000
_SHAPES: list[Shape] = []
_SHAPE_NUMBERS: dict[tuple[Any, ...], int] = {}  # by the plain tuple, equal to its Shape
_SHAPES_LOCK = threading.Lock()


def _shape_number(
    labels: tuple[tuple[str, str], ...],
    type: str | None,
    annotations: tuple[tuple[str, str], ...],
) -> int | None:
    """The shape's number; None once SHAPES_MAX shapes have numbers (and this one has none)."""
    key = (labels, type, annotations)
    number = _SHAPE_NUMBERS.get(key)
    if number is None:
        with _SHAPES_LOCK:
            number = _SHAPE_NUMBERS.get(key)
            if number is None:
                if len(_SHAPES) >= SHAPES_MAX:
                    return None
                number = len(_SHAPES)
                _SHAPES.append(Shape(*key))
                _SHAPE_NUMBERS[key] = number
    return number


# A SecretState's bytes: its shape's number, its data's digest and its form, then for the
# _COMPACT form the resourceVersion as 8 bytes and the uid's 16 (45 bytes in all), for the
# _TEXT form the two as text (each its length, -1 for None, and its UTF-8); with _OWN_SHAPE
# (no number: _UNNUMBERED) the shape follows as JSON text.
_NUMBER = struct.Struct("<I")
_number_of = _NUMBER.unpack_from  # (number,): read on every look at a Secret
_HEAD = struct.Struct("<I16sB")  # number, digest, form
_VERSION = struct.Struct("<Q")
_COMPACT_TAIL = struct.Struct("<Q16s")  # version, uid
_TEXT_LENGTH = struct.Struct("<i")
_DIGEST = slice(_NUMBER.size, _NUMBER.size + 16)
_FORM = _HEAD.size - 1
_UID = slice(_HEAD.size + _VERSION.size, _HEAD.size + _COMPACT_TAIL.size)
_COMPACT, _TEXT, _OWN_SHAPE = 0, 1, 2  # the form's bits
_UNNUMBERED = 0xFFFFFFFF  # past any index of _SHAPES


def _shape_text(shape: Shape) -> str:
    return json.dumps(shape)  # ASCII, lone surrogates escaped: read back exactly


def _shape_of_text(text: str) -> Shape:
    labels, type, annotations = json.loads(text)
    return Shape(tuple((k, v) for k, v in labels), type, tuple((k, v) for k, v in annotations))


def _packable_uid(uid: str | None) -> bytes | None:
    """The 16 bytes of a UUID as the API writes it (lowercase, with hyphens), else None."""
    if uid is None or len(uid) != 36:
        return None
    try:
        parsed = uuid.UUID(uid)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == uid else None


def _pack_text(text: str | None) -> bytes:
    if text is None:
        return _TEXT_LENGTH.pack(-1)
    raw = text.encode("utf-8", "surrogatepass")  # any str, and back exactly
    return _TEXT_LENGTH.pack(len(raw)) + raw


def _unpack_text(packed: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = _TEXT_LENGTH.unpack_from(packed, offset)
    offset += _TEXT_LENGTH.size
    if length < 0:
        return None, offset
    end = offset + length
    return packed[offset:end].decode("utf-8", "surrogatepass"), end


class SecretState(bytes):
    """What the decisions need of an existing Secret: its labels, type and owner annotation
    (a Shape many share), a digest of its data (never the data), its uid and resourceVersion.

    The watch-fed index keeps one per managed Secret (100,000 at 10,000 namespaces x 10
    ClusterOCIRegistry objects), so each is one bytes object of 45: the shape's number, the
    digest, the resourceVersion as a number and the uid's 16 bytes (a uid or resourceVersion
    the API might write otherwise is kept as text). Per Secret, bench/index_memory.py saw
    263 B of live Python and 303 B of process growth with a tuple of six fields (four
    objects of its own, many small ones among the fan-out's garbage), and 137 B and 142 B
    with this one object. The shared parts cost a number's read (_SHAPES) on each look.

    Equal states are the same observed state (equal bytes: shapes are numbered once)."""

    __slots__ = ()

    def __new__(
        cls,
        labels: tuple[tuple[str, str], ...],
        type: str | None,
        digest: bytes,
        annotations: tuple[tuple[str, str], ...],
        uid: str | None,
        resource_version: str | None,
    ) -> SecretState:
        if len(digest) != 16:
            raise ValueError("a SecretState's digest is data_digest's 16 bytes")
        shape = _shape_number(labels, type, annotations)
        own, form = b"", _COMPACT
        if shape is None:  # past SHAPES_MAX
            own = _pack_text(_shape_text(Shape(labels, type, annotations)))
            shape, form = _UNNUMBERED, _OWN_SHAPE
        head = (shape, digest)
        packed_uid, number = _packable_uid(uid), version_number(resource_version)
        if packed_uid is not None and number is not None and number < 1 << 64:
            tail = _COMPACT_TAIL.pack(number, packed_uid)
        else:
            form |= _TEXT
            tail = _pack_text(uid) + _pack_text(resource_version)
        return super().__new__(cls, _HEAD.pack(*head, form) + tail + own)

    def __reduce__(self) -> tuple[Any, ...]:  # copies and pickles rebuild it from its fields
        fields = (self.labels, self.type, self.digest, self.annotations)
        return SecretState, (*fields, self.uid, self.resource_version)

    def __repr__(self) -> str:
        return (
            f"SecretState(labels={self.labels!r}, type={self.type!r}, digest={self.digest!r}, "
            f"annotations={self.annotations!r}, uid={self.uid!r}, "
            f"resource_version={self.resource_version!r})"
        )

    __str__ = __repr__  # not the bytes

    def _shape(self) -> Shape:
        number: int = _number_of(self)[0]
        try:
            return _SHAPES[number]
        except IndexError:  # _UNNUMBERED: its own, after the uid and resourceVersion
            offset = _HEAD.size + _COMPACT_TAIL.size
            if self[_FORM] & _TEXT:
                offset = _unpack_text(self, _unpack_text(self, _HEAD.size)[1])[1]
            return _shape_of_text(_unpack_text(self, offset)[0] or "")

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        return self._shape().labels

    @property
    def type(self) -> str | None:
        return self._shape().type

    @property
    def annotations(self) -> tuple[tuple[str, str], ...]:
        return self._shape().annotations

    @property
    def digest(self) -> bytes:
        """data_digest(data)."""
        return self[_DIGEST]

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    @property
    def compact(self) -> bool:
        """Whether the uid and the resourceVersion are packed (else kept as text)."""
        return not self[_FORM] & _TEXT

    def _texts(self) -> tuple[str | None, str | None]:
        uid, offset = _unpack_text(self, _HEAD.size)
        return uid, _unpack_text(self, offset)[0]

    @property
    def uid(self) -> str | None:
        if not self[_FORM] & _TEXT:
            return str(uuid.UUID(bytes=self[_UID]))
        return self._texts()[0]

    @property
    def resource_version(self) -> str | None:
        """As the API wrote it, for an update's optimistic concurrency."""
        if not self[_FORM] & _TEXT:
            return str(_VERSION.unpack_from(self, _HEAD.size)[0])
        return self._texts()[1]

    @property
    def version(self) -> int | None:
        """The resourceVersion as a number (version_number), for ordering events."""
        if not self[_FORM] & _TEXT:
            number: int = _VERSION.unpack_from(self, _HEAD.size)[0]
            return number
        return version_number(self._texts()[1])


def version_number(text: str | None) -> int | None:
    """A resourceVersion as a number, when it is one: etcd's revisions are, written in
    decimal without leading zeros (which str() gives back exactly). Anything else (another
    storage's opaque string) is None: such versions are kept and sent back as they are, and
    are never compared."""
    if not (text and len(text) <= 20 and text.isascii() and text.isdigit()):
        return None
    return int(text) if text == "0" or text[0] != "0" else None


def data_digest(data: Mapping[str, str] | None) -> bytes:
    """A digest of a Secret's data (base64 values, as the API returns them)."""
    text = json.dumps(dict(data or {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()[:16]


# Label sets, owners, types and ServiceAccounts' pull Secret lists repeat across thousands of
# objects: one copy of each, up to SHARED_MAX values (past that, new ones are not shared:
# anyone may write a ServiceAccount's imagePullSecrets, and each new list would stay for good).
SHARED_MAX = 50_000
_SHARED: dict[Any, Any] = {}


def _shared(value: Any) -> Any:
    found = _SHARED.get(value, _SHARED)  # _SHARED itself: not there (None may be)
    if found is not _SHARED:
        return found
    if len(_SHARED) >= SHARED_MAX:
        return value
    return _SHARED.setdefault(value, value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def secret_state(body: Mapping[str, Any]) -> SecretState:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    owner = annotations.get(ANNOTATION_OWNER)
    return SecretState(
        _shared(tuple((k, labels[k]) for k in KEPT_LABELS if k in labels)),
        _shared(body.get("type")),
        data_digest(body.get("data")),
        _shared(((ANNOTATION_OWNER, owner),) if owner is not None else ()),
        _text(meta.get("uid")),
        _text(meta.get("resourceVersion")),
    )


def _as_state(observed: Mapping[str, Any] | SecretState) -> SecretState:
    return observed if isinstance(observed, SecretState) else secret_state(observed)


def secret_claim(
    ref: RegistryRef,
    namespace: str,
    observed: Mapping[str, Any] | SecretState,
    live: frozenset[str] = frozenset(),
) -> Claim:
    """Whose an existing Secret in ``namespace`` is, as seen by ``ref`` (ownership.claim)."""
    state = _as_state(observed)
    return claim(ref, namespace, dict(state.labels), dict(state.annotations), live)


def secret_decision(
    desired: DesiredSecret, observed: Mapping[str, Any] | SecretState | None
) -> str:
    """create | unchanged | update | conflict (a Secret we do not manage, or another
    registry object's). ``observed`` is the Secret's body or its SecretState. A Secret an
    older release wrote for this object, or one of a deleted predecessor of the same name,
    is taken over (update: relabelled)."""
    if observed is None:
        return "create"
    state = _as_state(observed)
    owner = desired.owner
    if owner is None:  # not built by desired_secrets: only an exact label match is ours
        labels = dict(state.labels)
        mine = all(labels.get(k) == v for k, v in desired.labels.items())
        found = Claim.OURS if mine else Claim.FOREIGN
    else:
        found = secret_claim(owner, desired.namespace, state, desired.live)
    if not found.mine:
        return "conflict"
    if state.type != desired.type:
        return "conflict"  # the type is immutable; replacing it is the user's decision
    if found is Claim.ADOPT:
        return "update"
    same_data = state.digest == data_digest(desired.data)
    annotations, labels = dict(state.annotations), dict(state.labels)
    same_meta = all(annotations.get(k) == v for k, v in desired.annotations.items()) and all(
        labels.get(k) == v for k, v in desired.labels.items()
    )
    return "unchanged" if same_data and same_meta else "update"


def secret_owner(observed: Mapping[str, Any] | SecretState) -> str | None:
    """The registry object an ocireg Secret says it belongs to (Kind/namespace/name), for a
    SecretConflict message; None for a Secret ocireg does not manage."""
    state = _as_state(observed)
    return recorded_owner(dict(state.labels), dict(state.annotations))


def secret_owned_by(
    ref: RegistryRef,
    namespace: str,
    state: Mapping[str, Any] | SecretState,
    live: frozenset[str] = frozenset(),
) -> bool:
    """Whether this registry object may delete this Secret (and our references to it): it
    wrote it, or takes it over (see ownership.claim)."""
    return secret_claim(ref, namespace, state, live).mine


def _selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present, value = req.key in labels, labels.get(req.key)
        ok = {
            "In": present and value in req.values,
            "NotIn": not present or value not in req.values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(req.operator, False)
        if not ok:
            return False
    return True


def namespace_selected(
    ref: RegistryRef,
    targets: Targets,
    namespace: str,
    labels: Mapping[str, str],
    phase: str = "Active",
) -> bool:
    if phase != "Active":
        return False
    if ref.namespaced:
        return namespace == ref.namespace
    if any(fnmatch.fnmatchcase(namespace, p) for p in targets.exclude_namespaces or []):
        return False
    by_name = any(fnmatch.fnmatchcase(namespace, p) for p in targets.namespaces or [])
    by_label = targets.namespace_selector is not None and _selector_matches(
        targets.namespace_selector, labels
    )
    return by_name or by_label


class Wanted(NamedTuple):
    """What a registry object writes into one namespace."""

    pull: bool  # its pull secret formats (and ServiceAccount references)
    argocd: bool  # its Argo CD Secrets

    def __bool__(self) -> bool:
        return self.pull or self.argocd


def namespace_wanted(
    ref: RegistryRef,
    targets: Targets,
    namespace: str,
    labels: Mapping[str, str],
    phase: str = "Active",
) -> Wanted:
    argocd = phase == "Active" and argocd_namespace(ref, targets) == namespace
    return Wanted(namespace_selected(ref, targets, namespace, labels, phase), argocd)


def service_account_selected(targets: Targets, name: str) -> bool:
    if Format.dockerconfigjson not in targets.formats:
        return False
    return "*" in targets.service_accounts or name in targets.service_accounts


class AccountState(NamedTuple):
    """What the decisions need of a ServiceAccount (the index keeps one per account)."""

    refs: tuple[str, ...]  # imagePullSecrets names, in order
    ours: str  # ANNOTATION_SA_REFS as written ("" when absent)
    resource_version: str | None

    @property
    def version(self) -> int | None:
        return version_number(self.resource_version)


def account_state(body: Mapping[str, Any]) -> AccountState:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return AccountState(
        _shared(tuple(r.get("name") or "" for r in body.get("imagePullSecrets") or [])),
        _shared(annotations.get(ANNOTATION_SA_REFS) or ""),
        _text(meta.get("resourceVersion")),
    )


def account_body(namespace: str, name: str, state: AccountState) -> dict[str, Any]:
    """The parts of a ServiceAccount service_account_patch reads, rebuilt from its state."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "resourceVersion": state.resource_version,
    }
    if state.ours:
        metadata["annotations"] = {ANNOTATION_SA_REFS: state.ours}
    return {"metadata": metadata, "imagePullSecrets": [{"name": n} for n in state.refs]}


def service_account_change(
    service_account: Mapping[str, Any], add: list[str], remove: list[str]
) -> dict[str, Any] | None:
    """One merge patch adding the missing names of ``add`` and removing the names of
    ``remove`` that we added, or None. Each step sees the previous one's result, so the
    patch carries the whole new list and annotation."""
    patch = None
    current: Mapping[str, Any] = service_account
    for name, want in [(n, True) for n in add] + [(n, False) for n in remove]:
        step = service_account_patch(current, name, want=want)
        if step:
            patch = step
            meta = {**(current.get("metadata") or {}), **step["metadata"]}
            current = {**current, **step, "metadata": meta}
    return patch


def account_changes(
    accounts: Mapping[str, AccountState],
    wanted: list[tuple[str, Targets]],
    unwanted: list[str],
) -> dict[str, tuple[list[str], list[str]]]:
    """For one namespace: which ServiceAccounts need a patch, and the names each gets added
    and removed. ``wanted``: (pull secret name, targets) of every registry whose Secret is in
    place there; ``unwanted``: names of Secrets being removed. Names someone else added are
    never claimed or removed (see service_account_patch)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name, state in sorted(accounts.items()):
        present, ours = set(state.refs), set(filter(None, state.ours.split(",")))
        add = [
            secret
            for secret, targets in wanted
            if service_account_selected(targets, name) and secret not in present
        ]
        remove = sorted(n for n in unwanted if n in ours)
        if add or remove:
            out[name] = (list(dict.fromkeys(add)), remove)
    return out


def _ours(service_account: Mapping[str, Any]) -> list[str]:
    annotations = (service_account.get("metadata") or {}).get("annotations") or {}
    return [n for n in (annotations.get(ANNOTATION_SA_REFS) or "").split(",") if n]


def service_account_patch(
    service_account: Mapping[str, Any], secret_name: str, want: bool
) -> dict[str, Any] | None:
    """A JSON merge patch adding or removing only our reference, or None if nothing changes.

    ServiceAccount.imagePullSecrets is an atomic list (a strategic merge patch would replace
    it whole), so the patch carries the complete new list plus the resourceVersion it was
    computed from: a concurrent change makes the API answer 409 instead of losing an entry."""
    refs = [dict(r) for r in service_account.get("imagePullSecrets") or []]
    present = {r.get("name") for r in refs}
    ours = _ours(service_account)
    if want:
        if secret_name in present:
            return None  # ours already, or added by someone else: theirs to keep or remove
        new_ours = sorted({*ours, secret_name})
        refs.append({"name": secret_name})
    else:
        if secret_name not in ours:
            return None  # not ours to remove, even if present
        new_ours = [n for n in ours if n != secret_name]
        refs = [r for r in refs if r.get("name") != secret_name]
    metadata = service_account.get("metadata") or {}
    return {
        "metadata": {
            "resourceVersion": metadata.get("resourceVersion"),
            "annotations": {ANNOTATION_SA_REFS: ",".join(new_ours) or None},
        },
        "imagePullSecrets": refs or None,
    }
