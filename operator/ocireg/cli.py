"""The `ocireg` command: run the operator, print the version, write the CRDs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ocireg import __version__
from ocireg.settings import AdmissionConfig, LogFormat, OperatorConfig, PoolSizes

# Libraries whose debug logs can carry credentials.
QUIET_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "azure",
    "msal",
    "google",
    "google.auth",
    "requests_oauthlib",
    "kubernetes.client.rest",
)


def _env_list(name: str) -> list[str]:
    return [item for item in os.environ.get(name, "").replace(",", " ").split() if item]


def _hosts(given: list[str] | None, env: str) -> tuple[str, ...]:
    return tuple(given or _env_list(env))


# (flag, environment variable, default, help) of each worker pool's size (config.PoolSizes).
POOL_FLAGS = (
    (
        "--reconcile-workers",
        "OCIREG_RECONCILE_WORKERS",
        PoolSizes.tenant_reconciles,
        "threads reconciling OCIRegistry (tenant) objects",
    ),
    (
        "--cluster-reconcile-workers",
        "OCIREG_CLUSTER_RECONCILE_WORKERS",
        PoolSizes.cluster_reconciles,
        "threads reconciling ClusterOCIRegistry objects",
    ),
    (
        "--chart-workers",
        "OCIREG_CHART_WORKERS",
        PoolSizes.tenant_charts,
        "threads syncing OCIRegistry charts",
    ),
    (
        "--cluster-chart-workers",
        "OCIREG_CLUSTER_CHART_WORKERS",
        PoolSizes.cluster_charts,
        "threads syncing ClusterOCIRegistry charts",
    ),
    (
        "--namespace-workers",
        "OCIREG_NAMESPACE_WORKERS",
        PoolSizes.namespace_share,
        "most threads of each tenant pool one namespace's objects hold at once",
    ),
    (
        "--kopf-workers",
        "OCIREG_KOPF_WORKERS",
        PoolSizes.kopf,
        "kopf's executor (its startup and cleanup handlers)",
    ),
)


# Every default is the settings' own (settings.py), never written here again.
DEFAULTS = OperatorConfig()
ADMISSION = AdmissionConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocireg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        help="serve OCIRegistry objects only in this namespace (repeatable; "
        "env OCIREG_NAMESPACES); default: all namespaces",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="serve the whole cluster (the default)"
    )
    run.add_argument(
        "--credentials-namespace",
        default=os.environ.get("OCIREG_CREDENTIALS_NAMESPACE", DEFAULTS.credentials_namespace),
        help="namespace ClusterOCIRegistry credential Secrets are read from",
    )
    run.add_argument(
        "--liveness",
        default=os.environ.get("OCIREG_LIVENESS"),
        metavar="URL",
        help="serve a health endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=os.environ.get("OCIREG_LOG_FORMAT", DEFAULTS.log_format.value),
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--debug", action="store_true")
    # Accepted and ignored: kopf always runs standalone now (replicas use the Lease).
    run.add_argument("--standalone", action="store_true", help=argparse.SUPPRESS)
    ha = run.add_argument_group("high availability")
    ha.add_argument(
        "--leader-elect",
        action="store_true",
        default=os.environ.get("OCIREG_LEADER_ELECT", "") == "true",
        help="run as one of several replicas: only the holder of a Lease works, the others "
        "stand by and take over (env OCIREG_LEADER_ELECT=true)",
    )
    ha.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("OCIREG_LEADER_ELECTION_NAMESPACE"),
        metavar="NAMESPACE",
        help="namespace of the Lease (default: the credentials namespace)",
    )
    ha.add_argument(
        "--leader-election-id",
        default=os.environ.get("OCIREG_LEADER_ELECTION_ID", DEFAULTS.leader_election_id),
        metavar="NAME",
        help=f"name of the Lease (default: {DEFAULTS.leader_election_id})",
    )

    run.add_argument(
        "--concurrency",
        type=int,
        default=int(os.environ.get("OCIREG_CONCURRENCY") or DEFAULTS.concurrency),
        help="namespaces written into at once, all registry objects together "
        "(env OCIREG_CONCURRENCY)",
    )
    pools = run.add_argument_group(
        "worker pools",
        "threads that talk to registries; one namespace holds at most --namespace-workers of "
        "each tenant pool (docs/architecture.md)",
    )
    for flag, env, default, what in POOL_FLAGS:
        pools.add_argument(
            flag,
            type=int,
            default=int(os.environ.get(env) or default),
            metavar="N",
            help=f"{what} (default: {default}; env {env})",
        )
    run.add_argument(
        "--resync",
        type=float,
        default=float(os.environ.get("OCIREG_RESYNC_SECONDS") or DEFAULTS.resync_seconds),
        metavar="SECONDS",
        help="re-list targets this often to repair drift (env OCIREG_RESYNC_SECONDS)",
    )
    run.add_argument(
        "--watch-timeout",
        type=int,
        default=int(os.environ.get("OCIREG_WATCH_TIMEOUT_SECONDS") or DEFAULTS.watch_timeout),
        metavar="SECONDS",
        help="the API server ends each watch request after this and ocireg resumes it; lower "
        "it behind proxies that cut quiet connections sooner (env OCIREG_WATCH_TIMEOUT_SECONDS)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("OCIREG_METRICS_PORT") or DEFAULTS.metrics_port),
        help="serve Prometheus metrics on this port (env OCIREG_METRICS_PORT); off by default",
    )
    run.add_argument(
        "--metrics-address",
        default=os.environ.get("OCIREG_METRICS_ADDRESS") or DEFAULTS.metrics_address,
        help="address the metrics endpoint listens on (env OCIREG_METRICS_ADDRESS; default "
        "loopback; the chart sets the pod's IP, where Prometheus scrapes)",
    )
    cloud = run.add_argument_group("cloud credentials")
    cloud.add_argument(
        "--allow-tenant-ambient-identity",
        action="store_true",
        default=os.environ.get("OCIREG_ALLOW_TENANT_AMBIENT_IDENTITY", "") == "true",
        help="let OCIRegistry objects (tenants) use the operator's own cloud identity; "
        "off by default: only ClusterOCIRegistry may",
    )
    cloud.add_argument(
        "--egress-allowed-cidr",
        dest="egress_allowed_cidrs",
        action="append",
        metavar="CIDR",
        help="private/loopback/link-local ranges an OCIRegistry (a tenant's registry, token "
        "server, redirects, ACR exchange, webhook) may reach (repeatable; env "
        "OCIREG_EGRESS_ALLOWED_CIDRS); by default none",
    )
    cloud.add_argument(
        "--webhook-allowed-cidr",
        dest="egress_allowed_cidrs",
        action="append",
        metavar="CIDR",
        help="deprecated name of --egress-allowed-cidr (env OCIREG_WEBHOOK_ALLOWED_CIDRS)",
    )
    cloud.add_argument(
        "--aws-endpoint-url",
        default=os.environ.get("OCIREG_AWS_ENDPOINT_URL"),
        metavar="URL",
        help="send ECR and STS calls here (a test stand-in); objects can never override it",
    )
    cloud.add_argument(
        "--azure-authority-host",
        default=os.environ.get("OCIREG_AZURE_AUTHORITY_HOST"),
        metavar="URL",
        help="Entra ID authority (sovereign clouds, test stand-ins)",
    )
    cloud.add_argument(
        "--acr-exchange-url",
        default=os.environ.get("OCIREG_ACR_EXCHANGE_URL"),
        metavar="URL",
        help="ACR token exchange endpoint instead of https://<registry>/oauth2/exchange "
        "(test stand-ins)",
    )
    cloud.add_argument(
        "--gcp-token-uri",
        dest="gcp_token_uris",
        action="append",
        metavar="URL",
        help="also accept this token_uri in GCP service-account keys (repeatable; env "
        "OCIREG_GCP_TOKEN_URIS); Google's own are always accepted",
    )
    # Where a credential of the operator's own identity may go (providers/destinations.py).
    for provider, defaults in (
        ("acr", "*.azurecr.io *.azurecr.cn *.azurecr.us"),
        ("gcp", "gcr.io *.gcr.io *.pkg.dev"),
        ("ecr", "ECR's endpoints (*.dkr.ecr.*.amazonaws.com, ...) and public.ecr.aws"),
    ):
        cloud.add_argument(
            f"--ambient-{provider}-host",
            dest=f"ambient_{provider}_hosts",
            action="append",
            metavar="HOST",
            help=f"a registry host the operator's own identity may log in to with "
            f"auth.{provider} ('*' is one DNS label; repeatable; replaces the default: "
            f"{defaults}; env OCIREG_AMBIENT_{provider.upper()}_HOSTS)",
        )

    hook = run.add_argument_group(
        "admission webhook",
        "add the pull secrets to ServiceAccounts in the request that creates them "
        "(docs/admission.md)",
    )
    hook.add_argument(
        "--admission-webhook",
        action="store_true",
        default=os.environ.get("OCIREG_ADMISSION_WEBHOOK", "") == "true",
        help="serve the mutating webhook (env OCIREG_ADMISSION_WEBHOOK=true); off by default",
    )
    hook.add_argument(
        "--admission-address",
        default=ADMISSION.address,
        metavar="ADDRESS",
        help="address the webhook listens on (default: all, IPv4 and IPv6)",
    )
    hook.add_argument(
        "--admission-port",
        type=int,
        default=ADMISSION.port,
        help=f"default: {ADMISSION.port}",
    )
    hook.add_argument(
        "--admission-host",
        metavar="HOST",
        help="host name or IP the API server calls, and the self-signed certificate names "
        "(in a pod: its IP); default: the listen address, 127.0.0.1 for all addresses",
    )
    hook.add_argument(
        "--admission-cert-file",
        metavar="PATH",
        help="serving certificate (PEM, reloaded when it changes); default: a self-signed "
        "one made in memory at start",
    )
    hook.add_argument("--admission-key-file", metavar="PATH", help="its private key (PEM)")
    hook.add_argument(
        "--admission-ca-file",
        metavar="PATH",
        help="CA bundle the API server should trust (default: the certificate itself)",
    )
    hook.add_argument(
        "--admission-configuration",
        default=ADMISSION.configuration,
        metavar="NAME",
        help="MutatingWebhookConfiguration ocireg keeps pointing at itself (default: "
        f"{ADMISSION.configuration}); "
        "'' if you install it yourself (then give the certificate files)",
    )
    hook.add_argument(
        "--admission-timeout",
        type=int,
        default=ADMISSION.timeout_seconds,
        metavar="SECONDS",
        help=f"the webhook's timeoutSeconds, 1-30 (default: {ADMISSION.timeout_seconds}); "
        "failurePolicy is always Ignore",
    )
    hook.add_argument(
        "--admission-exclude-namespace",
        dest="admission_exclude_namespaces",
        action="append",
        metavar="NAMESPACE",
        help="never called for ServiceAccounts in this namespace (repeatable; '' for none; "
        f"default: {', '.join(ADMISSION.exclude_namespaces)})",
    )

    sub.add_parser("version", help="print the version")

    crds = sub.add_parser("crds", help="write the CRDs generated from the models")
    crds.add_argument("--out", default="crds", help="directory to write into (default: crds)")

    return parser


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    chosen = args.namespaces or _env_list("OCIREG_NAMESPACES")
    namespaces = () if args.all_namespaces else tuple(dict.fromkeys(chosen))
    return OperatorConfig(
        namespaces=namespaces,
        credentials_namespace=args.credentials_namespace,
        liveness_endpoint=args.liveness,
        log_format=LogFormat(args.log_format),
        verbose=args.verbose,
        debug=args.debug,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace or args.credentials_namespace,
        leader_election_id=args.leader_election_id,
        allow_tenant_ambient_identity=args.allow_tenant_ambient_identity,
        egress_allowed_cidrs=_egress_allowed(args.egress_allowed_cidrs),
        aws_endpoint_url=args.aws_endpoint_url,
        azure_authority_host=args.azure_authority_host,
        acr_exchange_url=args.acr_exchange_url,
        gcp_token_uris=tuple(args.gcp_token_uris or _env_list("OCIREG_GCP_TOKEN_URIS")),
        ambient_acr_hosts=_hosts(args.ambient_acr_hosts, "OCIREG_AMBIENT_ACR_HOSTS"),
        ambient_gcp_hosts=_hosts(args.ambient_gcp_hosts, "OCIREG_AMBIENT_GCP_HOSTS"),
        ambient_ecr_hosts=_hosts(args.ambient_ecr_hosts, "OCIREG_AMBIENT_ECR_HOSTS"),
        metrics_port=args.metrics_port,
        concurrency=max(1, args.concurrency),
        resync_seconds=max(10.0, args.resync),
        watch_timeout=max(1, args.watch_timeout),
        metrics_address=args.metrics_address,
        admission=admission_from_args(args),
        pools=PoolSizes(
            tenant_reconciles=max(1, args.reconcile_workers),
            cluster_reconciles=max(1, args.cluster_reconcile_workers),
            tenant_charts=max(1, args.chart_workers),
            cluster_charts=max(1, args.cluster_chart_workers),
            namespace_share=max(1, args.namespace_workers),
            kopf=max(1, args.kopf_workers),
        ),
    )


def _egress_allowed(given: list[str] | None) -> tuple[str, ...]:
    """The flags, else both environment variables (the webhook's is the deprecated name);
    a malformed range stops the start rather than failing every tenant's request later."""
    from ocireg.egress import parse_cidrs

    from_env = _env_list("OCIREG_EGRESS_ALLOWED_CIDRS") + _env_list("OCIREG_WEBHOOK_ALLOWED_CIDRS")
    cidrs = tuple(given or from_env)
    try:
        parse_cidrs(cidrs)
    except ValueError as error:
        raise SystemExit(f"ocireg run: error: {error}") from None
    return cidrs


def admission_from_args(args: argparse.Namespace) -> AdmissionConfig:
    """The webhook settings; an impossible combination stops the start with a message."""
    config = AdmissionConfig(
        enabled=args.admission_webhook,
        address=args.admission_address,
        port=args.admission_port,
        host=args.admission_host or None,
        cert_file=args.admission_cert_file or None,
        key_file=args.admission_key_file or None,
        ca_file=args.admission_ca_file or None,
        configuration=args.admission_configuration or None,
        timeout_seconds=args.admission_timeout,
        exclude_namespaces=ADMISSION.exclude_namespaces
        if args.admission_exclude_namespaces is None
        else tuple(dict.fromkeys(n for n in args.admission_exclude_namespaces if n)),
    )
    if not config.enabled:
        return config
    problem = None
    if bool(config.cert_file) != bool(config.key_file):
        problem = "--admission-cert-file and --admission-key-file go together"
    elif config.configuration is None and not config.cert_file:
        problem = (
            "--admission-configuration '' (installed by someone else) needs "
            "--admission-cert-file and --admission-key-file: a self-signed certificate's CA "
            "would be known to nobody"
        )
    elif not 1 <= config.timeout_seconds <= 30:
        problem = "--admission-timeout must be 1-30 seconds (the API server's limit is 30)"
    elif not 1 <= config.port <= 65535:
        problem = "--admission-port must be 1-65535"
    if problem:
        raise SystemExit(f"ocireg run: error: {problem}")
    return config


def run_operator(config: OperatorConfig) -> int:
    # First, while the main thread is the only one: every thread started later shares two
    # malloc arenas (allocator.py: 3 to 5 MB less, measured).
    from ocireg.allocator import limit_arenas

    limit_arenas()
    # Before kopf, which imports the Kubernetes client: the client's package __init__ files wait
    # until something reads a name only they bind (kube/lazy.py: about 13 MB less in a pod).
    from ocireg.kube.lazy import defer_client_inits

    defer_client_inits()

    import kopf

    if config.admission.enabled:
        # Imported only for --admission-webhook: its server and certificate code (cryptography's
        # x509) are memory every other operator would hold for nothing (docs/performance.md).
        # Before the handler modules, as it always was: in the other order the same modules
        # leave the process 1.3 MB larger (where the allocator's free space falls).
        from ocireg.admission import server as admission

    # Importing the handler modules registers their handlers with kopf, in this order (pull
    # secrets first: its startup handlers build what the chart handlers use, and its delete
    # handler runs before the chart index's).
    from ocireg.pullsecrets import handlers as _pullsecrets  # noqa: F401

    # isort: split
    from ocireg.charts import handlers as _charts  # noqa: F401

    if config.admission.enabled:
        admission.register(config.admission)

    log_format = {
        LogFormat.plain: kopf.LogFormat.PLAIN,
        LogFormat.full: kopf.LogFormat.FULL,
        LogFormat.json: kopf.LogFormat.JSON,
    }[config.log_format]
    kopf.configure(verbose=config.verbose, debug=config.debug, log_format=log_format)
    # kopf's verbose/debug modes lower the root logger; the SDKs would then log whole HTTP
    # bodies, tokens and keys included (botocore logs GetAuthorizationToken's answer). They
    # stay at WARNING whatever the operator's own level.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("ocireg").info(
        "ocireg %s starting; scope: %s",
        __version__,
        "cluster" if config.clusterwide else ", ".join(config.namespaces),
    )

    def operate() -> None:
        kopf.run(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness_endpoint,
            standalone=True,  # replicas coordinate through the Lease, never kopf peering
            memo=kopf.Memo(config=config),
        )

    if not config.leader_elect:
        operate()
        return 0
    from ocireg.kube.client import load_config
    from ocireg.kube.leader import LeaderElection, run_while_leading

    load_config()
    # Leadership changes are always logged, whatever the operator's own level.
    logging.getLogger("ocireg.kube.leader").setLevel(logging.INFO)
    election = LeaderElection(config.leader_election_namespace, config.leader_election_id)
    run_while_leading(election, operate, config.liveness_endpoint)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"ocireg {__version__}")
        return 0
    if args.command == "crds":
        from pathlib import Path

        from ocireg.api.crd import write_crds

        for path in write_crds(Path(args.out)):
            print(path)
        return 0
    if args.command == "run":
        return run_operator(config_from_args(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
