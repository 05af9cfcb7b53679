"""The API's names in one place: group, version, kinds, and every label and annotation ocireg
writes or reads on the objects it manages. Anything that spells one of these imports it
from here."""

from __future__ import annotations

from typing import Final

GROUP: Final = "ocireg.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "ocireg"

NAMESPACED_KIND: Final = "OCIRegistry"
CLUSTER_KIND: Final = "ClusterOCIRegistry"
# kind -> plural, the resource name in API paths and in kopf's handler registrations.
PLURALS: Final = {NAMESPACED_KIND: "ociregistries", CLUSTER_KIND: "clusterociregistries"}
KINDS: Final = {plural: kind for kind, plural in PLURALS.items()}

# Ownership of what ocireg writes (api/ownership.py says how each decides).
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "ocireg"
LABEL_REGISTRY: Final = f"{GROUP}/registry"
LABEL_KIND: Final = f"{GROUP}/registry-kind"
LABEL_UID: Final = f"{GROUP}/registry-uid"
ANNOTATION_OWNER: Final = f"{GROUP}/owner"

# Argo CD's repository credential Secrets (targets.argoCD): the label Argo CD lists them by,
# its two values ocireg writes (never `cluster`), and where Argo CD runs unless told.
ARGOCD_SECRET_TYPE: Final = "argocd.argoproj.io/secret-type"  # noqa: S105 - a label key
ARGOCD_SECRET_TYPES: Final = ("repo-creds", "repository")
ARGOCD_NAMESPACE: Final = "argocd"

# A ServiceAccount's record of the pull Secret references ocireg added to it.
ANNOTATION_SA_REFS: Final = f"{GROUP}/image-pull-secrets"
# The chart index ConfigMap: its label, and the digest of the index it holds.
LABEL_CHARTS: Final = f"{GROUP}/charts"
ANNOTATION_DIGEST: Final = f"{GROUP}/index-digest"

# The operator's own key (providers/seal.py): a Secret in its credentials namespace.
SEAL_KEY_SECRET: Final = "ocireg-seal-key"  # noqa: S105 - a Secret's name
SEAL_KEY_FIELD: Final = "key"

# Rotate now: a new value of either annotation on a registry object makes it resolve (mint)
# its credentials again and rewrite every copy, once per value; the value handled last is
# recorded in status (Flux's convention: `flux reconcile` sets its annotation and waits for
# status.lastHandledReconcileAt to equal it).
ANNOTATION_REFRESH: Final = f"{GROUP}/refresh-requested-at"
ANNOTATION_FLUX_RECONCILE: Final = "reconcile.fluxcd.io/requestedAt"
# annotation -> the status field holding the value last handled
REFRESH_HANDLED: Final = {
    ANNOTATION_REFRESH: "lastHandledRefreshAt",
    ANNOTATION_FLUX_RECONCILE: "lastHandledReconcileAt",
}

# kopf's bookkeeping on our objects.
FINALIZER: Final = f"{GROUP}/cleanup"

# Docker Hub by every name users write in `server`: the kubelet's keyring knows it under its
# legacy key, and its registry API answers on registry-1.docker.io.
DOCKER_HUB_HOSTS: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_KEY: Final = "https://index.docker.io/v1/"
DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"
