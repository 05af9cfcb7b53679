"""Operator settings: what `ocireg run` was started with. Read once, passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum


class LogFormat(StrEnum):
    plain = "plain"
    full = "full"
    json = "json"


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces whose OCIRegistry objects we serve; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    # Where ClusterOCIRegistry objects read their credential Secrets from.
    credentials_namespace: str = field(
        default_factory=lambda: os.environ.get("OCIREG_CREDENTIALS_NAMESPACE", "ocireg-system")
    )
    liveness_endpoint: str | None = None
    log_format: LogFormat = LogFormat.plain
    verbose: bool = False
    debug: bool = False
    # None: kopf peering if its CRDs exist, else standalone. True: never peer.
    standalone: bool | None = None
    peering_name: str | None = None
    # Cloud credentials. Tenants (OCIRegistry) never get the operator's own identity unless
    # this says so; endpoints are overridable here only, never from an object.
    allow_tenant_ambient_identity: bool = False
    webhook_allowed_cidrs: tuple[str, ...] = ()
    aws_endpoint_url: str | None = None
    azure_authority_host: str | None = None
    acr_exchange_url: str | None = None
    gcp_token_uris: tuple[str, ...] = ()
    # How many namespaces one registry object writes into at once.
    concurrency: int = 16
    # Re-list targets this often even without a signal (drift repair), seconds.
    resync_seconds: float = 300.0
    # Prometheus endpoint (none when 0).
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"  # noqa: S104 - inside a pod

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
