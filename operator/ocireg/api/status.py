"""The status the operator writes. Also generated into the CRDs, so `kubectl explain
clusterociregistry.status` documents it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ApiModel
from .charts import ChartsStatus

# The longest refresh request recorded as it is; a longer one is recorded as its digest
# (pullsecrets.schedule.refresh_requests).
REQUEST_RECORD_LENGTH = 128


class Condition(ApiModel):
    """One observation of the object's state (the metav1.Condition fields)."""

    type: Annotated[
        str,
        Field(
            description="Ready, CredentialsReady, TargetsSynced, ChartsSynced, Reconciling or "
            "Stalled."
        ),
    ]
    status: Annotated[
        str,
        Field(
            description="True, False or Unknown. Reconciling and Stalled are only ever True: "
            "they are removed when their problem is gone."
        ),
    ]
    reason: Annotated[str, Field(description="A CamelCase reason, e.g. AuthenticationFailed.")]
    message: Annotated[str, Field(description="What happened and what to do about it.")] = ""
    observed_generation: Annotated[
        int | None, Field(description="The metadata.generation this condition describes.")
    ] = None
    last_transition_time: Annotated[
        str | None, Field(description="When status last changed (RFC 3339, UTC).")
    ] = None


class CredentialsStatus(ApiModel):
    provider: Annotated[str, Field(description="The auth method that produced the credentials.")]
    endpoints: Annotated[
        list[str], Field(description="Registry hosts the pull secret has entries for.")
    ] = []
    refreshed_at: Annotated[
        str | None, Field(description="When the credentials were last resolved and verified.")
    ] = None
    expires_at: Annotated[
        str | None, Field(description="When the current credentials expire (if they do).")
    ] = None
    next_refresh_at: Annotated[
        str | None, Field(description="When they will next be renewed or re-verified.")
    ] = None
    issued_at: Annotated[
        str | None,
        Field(description="When the current credentials were minted (providers that mint)."),
    ] = None
    seal: Annotated[
        str | None,
        Field(
            description="A keyed digest (HMAC-SHA256 under the operator's key, Secret "
            "ocireg-seal-key) binding these credentials to this object (uid), its spec and the "
            "inputs they were minted from, and to issuedAt and refreshedAt: a restarted "
            "operator reuses the credentials the copies hold, without minting, writing or "
            "verifying them again, only when it matches. Not the credentials, nor a digest "
            "anyone without the key can check a guess against.",
            max_length=64,
        ),
    ] = None


class FailedNamespace(ApiModel):
    """A selected namespace that does not hold the pull secret."""

    namespace: Annotated[str, Field(description="The namespace.")]
    reason: Annotated[str, Field(description="Why, e.g. SecretConflict.")]
    message: Annotated[str, Field(description="What happened and what to do about it.")] = ""


class TargetsStatus(ApiModel):
    namespaces: Annotated[int, Field(description="Namespaces holding the pull secret.")] = 0
    service_accounts: Annotated[
        int, Field(description="ServiceAccounts referencing the pull secret.")
    ] = 0
    failed: Annotated[
        list[FailedNamespace],
        Field(description="Namespaces that could not be written (at most 20 listed)."),
    ] = []
    failed_count: Annotated[int, Field(description="How many namespaces failed in all.")] = 0


class RegistryStatus(ApiModel):
    observed_generation: Annotated[
        int | None, Field(description="The spec generation last acted upon.")
    ] = None
    conditions: Annotated[
        list[Condition],
        Field(
            description="The object's state, one condition per type, as Flux and kstatus read "
            "them. Ready: credentials verified and pull secrets written. CredentialsReady: the "
            "credentials resolved and the registry accepted them. TargetsSynced: every selected "
            "namespace holds the pull secret. ChartsSynced (with spec.charts): the chart index "
            "is published. Reconciling (retrying a transient problem with backoff) and Stalled "
            "(a problem only a change can fix, a Secret in the way among them; the reason says "
            "which) are present only while True.",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
    credentials: Annotated[
        CredentialsStatus | None,
        Field(
            description="The credentials last verified: provider, registry hosts, when they "
            "expire and are next renewed or re-verified. Never the credentials themselves."
        ),
    ] = None
    targets: Annotated[
        TargetsStatus | None,
        Field(description="Where the pull secret is written, as of the last sync."),
    ] = None
    charts: Annotated[
        ChartsStatus | None, Field(description="Helm charts found in the registry (spec.charts).")
    ] = None
    failures: Annotated[
        int | None,
        Field(
            description="Attempts that failed in a row since the credentials last worked "
            "(counted by the running operator; absent once they work)."
        ),
    ] = None
    last_handled_refresh_at: Annotated[
        str | None,
        Field(
            description="The value of the annotation ocireg.dev/refresh-requested-at last "
            "handled: a new value re-mints the credentials and rewrites every copy once.",
            max_length=REQUEST_RECORD_LENGTH,
        ),
    ] = None
    last_handled_reconcile_at: Annotated[
        str | None,
        Field(
            description="The value of the annotation reconcile.fluxcd.io/requestedAt last "
            "handled (Flux's convention, as `flux reconcile` sets and waits for it); it does "
            "what ocireg.dev/refresh-requested-at does.",
            max_length=REQUEST_RECORD_LENGTH,
        ),
    ] = None
