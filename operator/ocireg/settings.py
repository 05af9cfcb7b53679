"""Operator settings: what `ocireg run` was started with. Read once, passed down. The
defaults live here only: the command line (cli.py) and its environment variables start from
them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class LogFormat(StrEnum):
    plain = "plain"
    full = "full"
    json = "json"


# Namespaces the admission webhook is never called for: the control plane's own.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class AdmissionConfig:
    """The optional mutating webhook that adds pull secret references to ServiceAccounts as
    they are created (admission.py, docs/admission.md)."""

    enabled: bool = False
    address: str = ""  # every address, IPv4 and IPv6
    port: int = 9443
    # Host or IP the API server calls (in a pod: its IP); default: the listen address, or
    # 127.0.0.1 when listening on every address.
    host: str | None = None
    # The serving certificate; without these, a self-signed one is made in memory at start.
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None  # the CA to publish in caBundle (default: cert_file)
    # The MutatingWebhookConfiguration ocireg keeps pointing at itself; None: someone else
    # installs it (then cert_file and ca_file are needed).
    configuration: str | None = "ocireg"
    timeout_seconds: int = 3
    exclude_namespaces: tuple[str, ...] = SYSTEM_NAMESPACES


@dataclass(frozen=True)
class PoolSizes:
    """Threads of each worker pool (workers.py, docs/architecture.md) and the most of a tenant
    pool one namespace may hold at once. Defaults fit 2 cores: the threads mostly wait on the
    network, and a namespace's stuck registries hold at most `namespace_share` of them."""

    tenant_reconciles: int = 16
    # Platform objects are trusted and few. A reconcile holds its thread while its first
    # fan-out is written, so with fewer threads than objects the fan-outs go in rounds:
    # 10 objects x 1,000 namespaces (bench/scale_bench.py, one run each) took 29 s with 4
    # or 8 threads, 22 s with 10 or 16.
    cluster_reconciles: int = 16
    tenant_charts: int = 4
    cluster_charts: int = 2
    namespace_share: int = 2
    kopf: int = 4  # kopf's own executor: only its sync startup and cleanup handlers


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces whose OCIRegistry objects we serve; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    # Where ClusterOCIRegistry objects read their credential Secrets from.
    credentials_namespace: str = "ocireg-system"
    liveness_endpoint: str | None = None
    log_format: LogFormat = LogFormat.plain
    verbose: bool = False
    debug: bool = False
    # Active/standby through a Lease (see leader.py); kopf itself always runs standalone.
    leader_elect: bool = False
    leader_election_namespace: str = "ocireg-system"
    leader_election_id: str = "ocireg-leader"
    # Cloud credentials. Tenants (OCIRegistry) never get the operator's own identity unless
    # this says so; endpoints are overridable here only, never from an object.
    allow_tenant_ambient_identity: bool = False
    # Private, loopback or link-local ranges a tenant's (OCIRegistry's) requests may reach
    # anyway: registry, token realm, redirects, ACR exchange, webhook (egress.py).
    egress_allowed_cidrs: tuple[str, ...] = ()
    aws_endpoint_url: str | None = None
    azure_authority_host: str | None = None
    acr_exchange_url: str | None = None
    gcp_token_uris: tuple[str, ...] = ()
    # Hosts a credential of the operator's own identity may be sent to, per cloud; empty:
    # that cloud's own registries (providers/destinations.py).
    ambient_acr_hosts: tuple[str, ...] = ()
    ambient_gcp_hosts: tuple[str, ...] = ()
    ambient_ecr_hosts: tuple[str, ...] = ()
    # How many namespaces are written into at once (one job per namespace, all registries).
    concurrency: int = 16
    # Server-side timeout of each watch request, seconds.
    watch_timeout: int = 300
    # Re-list targets this often even without a signal (drift repair), seconds.
    resync_seconds: float = 300.0
    # Prometheus endpoint (none when 0).
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"  # loopback unless told: never every address by default
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    pools: PoolSizes = field(default_factory=PoolSizes)

    def ambient_hosts(self, cloud: str) -> tuple[str, ...]:
        return {
            "acr": self.ambient_acr_hosts,
            "gcp": self.ambient_gcp_hosts,
            "ecr": self.ambient_ecr_hosts,
        }[cloud]

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
