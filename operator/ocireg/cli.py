"""The `ocireg` command (also `kubectl-ocireg`, a kubectl plugin): run the operator, check a
registry object before applying it, show every object's state, print the version, write the
CRDs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ocireg import __version__, console
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
# Seconds `ocireg run` waits for the API server at start before it gives up with a message.
CONNECT_TIMEOUT = 15.0


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


def _shown(value: object) -> str:
    """A default as --help prints it."""
    if value is None or value == () or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return str(value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (the settings' own, not whatever an
    environment variable makes it today) and names the variable that overrides it, with the
    value it has now when it is set: --help never passes an override off as the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return text
        env: str | None = getattr(action, "env", None)
        base = getattr(action, "base_default", action.default)
        said = "default:" in text  # the help says what the default means in words
        notes = [] if said else [f"default: {_shown(base)}"]
        if env is not None:
            now = os.environ.get(env)
            notes.append(f"env {env}" + (f", set now: {now}" if now else ""))
        text = text.replace("%", "%%")
        if not notes:
            return text
        if said and text.endswith(")"):  # "(...; default: ...)" gets the variable inside
            return f"{text[:-1]}; {'; '.join(notes)})"
        return f"{text} ({'; '.join(notes)})"


_T = TypeVar("_T")


def _option(
    group: argparse._ActionsContainer,
    *flags: str,
    env: str | None = None,
    default: _T | None = None,
    convert: Callable[[str], _T] | None = None,
    **options: Any,
) -> argparse.Action:
    """An option whose default is the settings' ``default`` unless the environment variable
    ``env`` is set (read now, converted with ``convert``); --help shows both (HelpFormatter)."""
    value: object = default
    given = os.environ.get(env) if env else None
    if given and options.get("action") == "store_true":
        value = given == "true"
    elif given and options.get("action") != "append":
        value = convert(given) if convert is not None else given
    if convert is not None:
        options.setdefault("type", convert)
    action = group.add_argument(*flags, default=value, **options)
    action.env = env  # type: ignore[attr-defined]
    action.base_default = default  # type: ignore[attr-defined]
    return action


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocireg",
        description="Run the ocireg operator, check a registry object, show every object's "
        "state. Also installed as kubectl-ocireg: `kubectl ocireg status`.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocireg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the operator against the current kubeconfig (or in-cluster identity)",
        description="Run the operator. Every option can also be set by the environment "
        "variable named in its help; a flag wins over the variable.",
        formatter_class=HelpFormatter,
    )
    scope = run.add_mutually_exclusive_group()
    _option(
        scope,
        "-n",
        "--namespace",
        env="OCIREG_NAMESPACES",
        dest="namespaces",
        action="append",
        metavar="NAMESPACE",
        help="serve OCIRegistry objects only in this namespace (repeatable; "
        "default: all namespaces)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="serve the whole cluster, whatever OCIREG_NAMESPACES says (default: the whole "
        "cluster unless -n or OCIREG_NAMESPACES)",
    )
    _option(
        run,
        "--credentials-namespace",
        env="OCIREG_CREDENTIALS_NAMESPACE",
        default=DEFAULTS.credentials_namespace,
        metavar="NAMESPACE",
        help="namespace ClusterOCIRegistry credential Secrets are read from",
    )
    _option(
        run,
        "--liveness",
        env="OCIREG_LIVENESS",
        metavar="URL",
        help="serve a health endpoint, e.g. http://0.0.0.0:8080/healthz (default: none)",
    )
    _option(
        run,
        "--log-format",
        env="OCIREG_LOG_FORMAT",
        default=DEFAULTS.log_format.value,
        choices=[f.value for f in LogFormat],
        help="plain: the message; full: with time, logger and level; json: one object a line",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log at debug level: each handler kopf runs, each timer tick, kopf's own "
        "progress (default: off; info and above, failures once each)",
    )
    run.add_argument(
        "--debug",
        action="store_true",
        help="--verbose, and asyncio's debug logs too (the HTTP clients and the cloud SDKs "
        "stay at warning: they would log credentials) (default: off)",
    )
    # Accepted and ignored: kopf always runs standalone now (replicas use the Lease).
    run.add_argument("--standalone", action="store_true", help=argparse.SUPPRESS)
    ha = run.add_argument_group("high availability")
    _option(
        ha,
        "--leader-elect",
        env="OCIREG_LEADER_ELECT",
        default=False,
        action="store_true",
        help="run as one of several replicas: only the holder of a Lease works, the others "
        "stand by and take over (the variable: true)",
    )
    _option(
        ha,
        "--leader-election-namespace",
        env="OCIREG_LEADER_ELECTION_NAMESPACE",
        metavar="NAMESPACE",
        help="namespace of the Lease (default: the credentials namespace)",
    )
    _option(
        ha,
        "--leader-election-id",
        env="OCIREG_LEADER_ELECTION_ID",
        default=DEFAULTS.leader_election_id,
        metavar="NAME",
        help="name of the Lease",
    )

    _option(
        run,
        "--concurrency",
        env="OCIREG_CONCURRENCY",
        default=DEFAULTS.concurrency,
        convert=int,
        metavar="N",
        help="namespaces written into at once, all registry objects together",
    )
    pools = run.add_argument_group(
        "worker pools",
        "threads that talk to registries; one namespace holds at most --namespace-workers of "
        "each tenant pool (docs/architecture.md)",
    )
    for flag, env, default, what in POOL_FLAGS:
        _option(pools, flag, env=env, default=default, convert=int, metavar="N", help=what)
    _option(
        run,
        "--resync",
        env="OCIREG_RESYNC_SECONDS",
        default=DEFAULTS.resync_seconds,
        convert=float,
        metavar="SECONDS",
        help="re-list targets this often to repair drift (at least 10)",
    )
    _option(
        run,
        "--watch-timeout",
        env="OCIREG_WATCH_TIMEOUT_SECONDS",
        default=DEFAULTS.watch_timeout,
        convert=int,
        metavar="SECONDS",
        help="the API server ends each watch request after this and ocireg resumes it; lower "
        "it behind proxies that cut quiet connections sooner",
    )
    _option(
        run,
        "--metrics-port",
        env="OCIREG_METRICS_PORT",
        default=DEFAULTS.metrics_port,
        convert=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port; 0: none",
    )
    _option(
        run,
        "--metrics-address",
        env="OCIREG_METRICS_ADDRESS",
        default=DEFAULTS.metrics_address,
        metavar="ADDRESS",
        help="address the metrics endpoint listens on (the chart sets the pod's IP, where "
        "Prometheus scrapes)",
    )
    cloud = run.add_argument_group("cloud credentials and egress")
    _option(
        cloud,
        "--allow-tenant-ambient-identity",
        env="OCIREG_ALLOW_TENANT_AMBIENT_IDENTITY",
        default=False,
        action="store_true",
        help="let OCIRegistry objects (tenants) use the operator's own cloud identity; "
        "otherwise only ClusterOCIRegistry may (the variable: true)",
    )
    _option(
        cloud,
        "--egress-allowed-cidr",
        env="OCIREG_EGRESS_ALLOWED_CIDRS",
        dest="egress_allowed_cidrs",
        action="append",
        metavar="CIDR",
        help="private/loopback/link-local ranges an OCIRegistry (a tenant's registry, token "
        "server, redirects, ACR exchange, webhook) may reach (repeatable; default: none)",
    )
    _option(
        cloud,
        "--webhook-allowed-cidr",
        env="OCIREG_WEBHOOK_ALLOWED_CIDRS",
        dest="egress_allowed_cidrs",
        action="append",
        metavar="CIDR",
        help="deprecated name of --egress-allowed-cidr (default: none)",
    )
    _option(
        cloud,
        "--aws-endpoint-url",
        env="OCIREG_AWS_ENDPOINT_URL",
        metavar="URL",
        help="send ECR and STS calls here (a test stand-in); objects can never override it "
        "(default: AWS's own endpoints)",
    )
    _option(
        cloud,
        "--azure-authority-host",
        env="OCIREG_AZURE_AUTHORITY_HOST",
        metavar="URL",
        help="Entra ID authority, for sovereign clouds and test stand-ins (default: the "
        "Azure SDK's, login.microsoftonline.com)",
    )
    _option(
        cloud,
        "--acr-exchange-url",
        env="OCIREG_ACR_EXCHANGE_URL",
        metavar="URL",
        help="ACR token exchange endpoint, for test stand-ins (default: "
        "https://<registry>/oauth2/exchange)",
    )
    _option(
        cloud,
        "--gcp-token-uri",
        env="OCIREG_GCP_TOKEN_URIS",
        dest="gcp_token_uris",
        action="append",
        metavar="URL",
        help="also accept this token_uri in GCP service-account keys (repeatable; default: "
        "only Google's own)",
    )
    # Where a credential of the operator's own identity may go (providers/destinations.py).
    for provider, defaults in (
        ("acr", "*.azurecr.io *.azurecr.cn *.azurecr.us"),
        ("gcp", "gcr.io *.gcr.io *.pkg.dev"),
        ("ecr", "ECR's endpoints (*.dkr.ecr.*.amazonaws.com, ...) and public.ecr.aws"),
    ):
        _option(
            cloud,
            f"--ambient-{provider}-host",
            env=f"OCIREG_AMBIENT_{provider.upper()}_HOSTS",
            dest=f"ambient_{provider}_hosts",
            action="append",
            metavar="HOST",
            help=f"a registry host the operator's own identity may log in to with "
            f"auth.{provider} ('*' is one DNS label; repeatable; replaces the default; "
            f"default: {defaults})",
        )

    hook = run.add_argument_group(
        "admission webhook",
        "add the pull secrets to ServiceAccounts in the request that creates them "
        "(docs/admission.md)",
    )
    _option(
        hook,
        "--admission-webhook",
        env="OCIREG_ADMISSION_WEBHOOK",
        default=False,
        action="store_true",
        help="serve the mutating webhook (the variable: true)",
    )
    hook.add_argument(
        "--admission-address",
        default=ADMISSION.address,
        metavar="ADDRESS",
        help="address the webhook listens on (default: all, IPv4 and IPv6)",
    )
    hook.add_argument(
        "--admission-port", type=int, default=ADMISSION.port, metavar="PORT", help="its port"
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
    hook.add_argument(
        "--admission-key-file",
        metavar="PATH",
        help="its private key (PEM; default: none, with the self-signed certificate)",
    )
    hook.add_argument(
        "--admission-ca-file",
        metavar="PATH",
        help="CA bundle the API server should trust (default: the certificate itself)",
    )
    hook.add_argument(
        "--admission-configuration",
        default=ADMISSION.configuration,
        metavar="NAME",
        help="MutatingWebhookConfiguration ocireg keeps pointing at itself; "
        "'' if you install it yourself (then give the certificate files)",
    )
    hook.add_argument(
        "--admission-timeout",
        type=int,
        default=ADMISSION.timeout_seconds,
        metavar="SECONDS",
        help="the webhook's timeoutSeconds, 1-30; failurePolicy is always Ignore",
    )
    hook.add_argument(
        "--admission-exclude-namespace",
        dest="admission_exclude_namespaces",
        action="append",
        metavar="NAMESPACE",
        help="never called for ServiceAccounts in this namespace (repeatable; '' for none; "
        f"default: {', '.join(ADMISSION.exclude_namespaces)})",
    )

    console.add_commands(sub, HelpFormatter, DEFAULTS.credentials_namespace)

    sub.add_parser("version", help="print the version", formatter_class=HelpFormatter)

    crds = sub.add_parser(
        "crds", help="write the CRDs generated from the models", formatter_class=HelpFormatter
    )
    crds.add_argument("--out", default="crds", metavar="DIR", help="directory to write into")

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


class _KopfChatter(logging.Filter):
    """kopf's lines at info ("Handler 'on_change' succeeded" for every run, "Timer ...
    succeeded" every tick, "Activity 'configure' succeeded") are about kopf, not the
    registries: they go to debug, shown with --verbose. Its warnings and errors pass as they
    are; ocireg logs its own objects' failures once each, with the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        kopf = record.name == "kopf" or record.name.startswith("kopf.")
        if kopf and record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure_logging(config: OperatorConfig) -> None:
    import kopf

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
    for handler in logging.getLogger().handlers:  # kopf.configure's: it sees every logger's
        if not any(isinstance(f, _KopfChatter) for f in handler.filters):
            handler.addFilter(_KopfChatter())
    # One line per liveness probe (kopf's aiohttp server) says nothing; errors still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_operator(config: OperatorConfig) -> int:
    # First, while the main thread is the only one: every thread started later shares two
    # malloc arenas (allocator.py: 3 to 5 MB less, measured), and what they hold freed after
    # a burst goes back to the system.
    from ocireg.allocator import limit_arenas, start_trimming

    limit_arenas()
    start_trimming()
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

    configure_logging(config)
    logging.getLogger("ocireg").info(
        "ocireg %s starting; scope: %s",
        __version__,
        "cluster" if config.clusterwide else ", ".join(config.namespaces),
    )
    from ocireg.kube.client import ClusterUnreachable, connect

    # No cluster, no operator: one line and a non-zero exit (the pod restarts with backoff),
    # rather than kopf's startup handlers failing with tracebacks and retrying for ever.
    try:
        connect(CONNECT_TIMEOUT)
    except ClusterUnreachable as error:
        print(f"ocireg run: error: {error}", file=sys.stderr)
        return 1

    def operate() -> None:
        kopf.run(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness_endpoint,
            standalone=True,  # replicas coordinate through the Lease, never kopf peering
            memo=kopf.Memo(config=config),
        )

    from ocireg import metrics

    # Every replica serves /metrics from its start, a standby too (ocireg_leader 0): the
    # chart's Service and pod annotations have Prometheus scrape each pod.
    if config.metrics_port:
        try:
            metrics.serve(config.metrics_port, config.metrics_address)
        except OSError as error:
            where = f"{config.metrics_address}:{config.metrics_port}"
            raise SystemExit(
                f"ocireg run: error: cannot serve metrics on {where}: {error.strerror}"
            ) from None
    if not config.leader_elect:
        metrics.report_leader(lambda: True)
        operate()
        return 0
    from ocireg.kube.leader import LeaderElection, run_while_leading

    # Leadership changes are always logged, whatever the operator's own level.
    logging.getLogger("ocireg.kube.leader").setLevel(logging.INFO)
    election = LeaderElection(config.leader_election_namespace, config.leader_election_id)
    metrics.report_leader(lambda: election.leading)
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
    return console.main(args)


if __name__ == "__main__":
    sys.exit(main())
