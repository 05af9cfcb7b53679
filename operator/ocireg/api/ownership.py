"""What ocireg owns: the one definition of "ours" for every object it writes (pull Secrets,
the chart index ConfigMap), used by every overwrite, every delete and every ServiceAccount
edit, by the watch-fed index's selector, the namespace jobs and the admission webhook. Pure: no I/O.

An owner is one registry object, named exactly: kind, namespace (none for a
ClusterOCIRegistry), name and uid. What is written on each object we own:

- label ``app.kubernetes.io/managed-by=ocireg``: the watch's selector (everything ocireg
  writes, whoever it is for);
- label ``ocireg.dev/registry-kind``: the owner's kind;
- label ``ocireg.dev/registry-uid``: the owner's uid. This is what ownership is decided by:
  exact, short (36 characters, within a label value's 63) and never reused, so two
  tenants' ``OCIRegistry ghcr`` (same name, two namespaces) or an object deleted and
  re-created under the same name never share it;
- label ``ocireg.dev/registry``: the owner's name (hashed past 63 characters), for
  ``kubectl get -l`` and as the coarse selector cleanup lists by; it never decides alone;
- annotation ``ocireg.dev/owner``: ``Kind/namespace/name`` (or ``Kind/name``), the owner in
  full for people (names may be 253 characters, more than a label holds) and for
  recognising a re-created owner.

`claim` decides, for one registry object and one existing object:

- not managed by ocireg: never ours (a conflict, never overwritten or deleted);
- an OCIRegistry owns nothing outside its own namespace, whatever the labels say (it never
  writes elsewhere, so such labels were copied or forged);
- the recorded uid is the object's: ours;
- written by a release before the uid label (kind and name labels only): it belongs to the
  object of that kind and name that writes into this namespace: for an OCIRegistry the one
  in the Secret's namespace, for a ClusterOCIRegistry the one of that name. That object
  takes it over (relabels it); no other object ever does;
- recorded for the same kind/namespace/name under another uid (deleted and re-created, say
  by GitOps): the old owner cannot exist any more (names are unique while an object
  lives), so the new object takes it over, unless that uid is a live object we know of
  (labels copied by hand);
- anything else is another object's.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ocireg.api.names import (
    ANNOTATION_OWNER,
    LABEL_KIND,
    LABEL_REGISTRY,
    LABEL_UID,
    MANAGED_BY,
    MANAGER,
    NAMESPACED_KIND,
)

# The labels a decision reads (the watch-fed index keeps only these).
OWNER_LABELS = (MANAGED_BY, LABEL_REGISTRY, LABEL_KIND, LABEL_UID)
# Everything ocireg writes (the Secret watch), and everything else (the credentials watch).
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGER}"
UNMANAGED_SELECTOR = f"{MANAGED_BY}!={MANAGER}"
# A recorded owner as shown in a message: Kind/namespace/name of DNS-style names only (the
# annotation is only ocireg's where ocireg wrote it; anything else is not repeated).
_SHOWN_OWNER = re.compile(r"(Cluster)?OCIRegistry(/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?){1,2}")


@dataclass(frozen=True)
class RegistryRef:
    """One registry object, exactly."""

    kind: str  # OCIRegistry | ClusterOCIRegistry
    name: str
    namespace: str | None = None
    uid: str | None = None

    @property
    def namespaced(self) -> bool:
        return self.kind == NAMESPACED_KIND

    @property
    def label_value(self) -> str:
        return name_label(self.name)

    @property
    def display(self) -> str:
        return (
            f"{self.kind}/{self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind}/{self.name}"
        )

    def labels(self) -> dict[str, str]:
        """The labels of everything written for this object."""
        labels = {MANAGED_BY: MANAGER, LABEL_REGISTRY: self.label_value, LABEL_KIND: self.kind}
        if self.uid:
            labels[LABEL_UID] = self.uid
        return labels

    def annotations(self) -> dict[str, str]:
        return {ANNOTATION_OWNER: self.display}

    def selector(self) -> str:
        """A label selector finding everything this object may own: its own objects, those
        an older release wrote for it and those of a predecessor of the same name; and
        other objects' of the same name (of the other kind, or in another namespace), which
        `claim` tells apart and a conflict names."""
        return f"{MANAGED_SELECTOR},{LABEL_REGISTRY}={self.label_value}"


def name_label(name: str) -> str:
    # Label values are limited to 63 characters; object names are not.
    if len(name) <= 63:
        return name
    return name[:50] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


class Claim(enum.Enum):
    OURS = "ours"  # written for this object
    ADOPT = "adopt"  # this object's to take over: an older release's, or a predecessor's
    FOREIGN = "foreign"  # another registry object's
    UNMANAGED = "unmanaged"  # not ocireg's at all

    @property
    def mine(self) -> bool:
        """Whether this object may overwrite or delete it and edit references to it."""
        return self in (Claim.OURS, Claim.ADOPT)


def _same_identity(
    ref: RegistryRef, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> bool:
    """Whether what is recorded names this object's kind/namespace/name (the uid aside)."""
    name, owner = labels.get(LABEL_REGISTRY), annotations.get(ANNOTATION_OWNER)
    if name is None and owner is None:
        return False
    return name in (None, ref.label_value) and owner in (None, ref.display)


def claim(
    ref: RegistryRef,
    namespace: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    live: Collection[str] = (),
) -> Claim:
    """Whose the object in ``namespace`` with these labels and annotations is, as seen by
    ``ref`` (see the module text). ``live``: uids of registry objects known to exist."""
    if labels.get(MANAGED_BY) != MANAGER:
        return Claim.UNMANAGED
    if labels.get(LABEL_KIND) != ref.kind or (ref.namespaced and namespace != ref.namespace):
        return Claim.FOREIGN
    uid = labels.get(LABEL_UID)
    if uid is not None and uid == ref.uid:
        return Claim.OURS
    if not _same_identity(ref, labels, annotations):
        return Claim.FOREIGN
    if uid == ref.uid:  # neither has a uid: an object known by name only (tests, tools)
        return Claim.OURS
    if uid is None:
        return Claim.ADOPT  # written before the uid label: relabel it
    if uid in live:
        return Claim.FOREIGN
    return Claim.ADOPT  # the same kind/namespace/name re-created: its predecessor is gone


def recorded_owner(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str | None:
    """Who an ocireg object says it belongs to, as Kind/namespace/name, for a message; None
    when it is not ocireg's or the record is not a plain object name."""
    if labels.get(MANAGED_BY) != MANAGER:
        return None
    owner = annotations.get(ANNOTATION_OWNER) or ""
    return owner if _SHOWN_OWNER.fullmatch(owner) else None
