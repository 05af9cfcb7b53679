"""The commands for people at a terminal (and `kubectl ocireg ...`, the same entry point):

- `ocireg check -f registry.yaml`: would this registry object work? Resolves its credentials
  as the operator would (the cluster's Secrets, ConfigMaps and base objects through the
  kubeconfig, or with --local the other objects in the same files), tries them against the
  registry, and prints what the operator would write. It writes nothing to the cluster.
- `ocireg status`: a table of every registry object of both kinds.

Both use the operator's own code for every step (reconcile's spec, TLS, provider and
verification functions, the egress policy), never a second implementation; neither prints a
credential (the messages are the ones status conditions carry)."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ocireg.api.errors import ReconcileError
from ocireg.api.names import API_VERSION, CLUSTER_KIND, NAMESPACED_KIND, PLURALS
from ocireg.api.reasons import Reason
from ocireg.settings import OperatorConfig

KINDS = (NAMESPACED_KIND, CLUSTER_KIND)
# Seconds a command waits for the API server before it says it cannot reach it.
CONNECT_TIMEOUT = 15.0
# At most this many namespaces are named in check's "would write" line.
NAMES_SHOWN = 10


def add_commands(
    sub: Any, formatter: type[argparse.HelpFormatter], credentials_namespace: str
) -> None:
    """The `check` and `status` subcommands (cli.build_parser)."""
    check = sub.add_parser(
        "check",
        help="try a registry object's credentials against its registry before applying it",
        description="Resolve the credentials of every OCIRegistry and ClusterOCIRegistry in "
        "the files as the operator would, try them against the registry, and print what the "
        "operator would write. Nothing is written to the cluster. Exit status 1 when any "
        "object would fail (the reason is printed; a credential never is).",
        formatter_class=formatter,
    )
    check.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file with the object(s); '-' reads standard input (repeatable; "
        "default: none, required)",
    )
    check.add_argument(
        "--local",
        action="store_true",
        help="read the Secrets, ConfigMaps and base objects the registry objects name from the "
        "same files, not from a cluster (no kubeconfig needed; ServiceAccount tokens, for cloud "
        "web identity, are then not available)",
    )
    check.add_argument(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        help="namespace of an OCIRegistry whose metadata names none (default: the kubeconfig "
        "context's, else default)",
    )
    check.add_argument(
        "--credentials-namespace",
        default=credentials_namespace,
        metavar="NAMESPACE",
        help="where the operator reads ClusterOCIRegistry Secrets from, as its own "
        "--credentials-namespace",
    )
    check.add_argument(
        "--egress-allowed-cidr",
        dest="egress_allowed_cidrs",
        action="append",
        metavar="CIDR",
        help="ranges an OCIRegistry may reach although private or loopback, as the operator's "
        "own flag (repeatable; default: none)",
    )
    _cluster_flags(check)

    status = sub.add_parser(
        "status",
        help="a table of every OCIRegistry and ClusterOCIRegistry: ready, reason, expiry, failures",
        description="Every registry object the kubeconfig's identity may list, both kinds: "
        "READY and REASON are the Ready condition's, EXPIRES when the current credentials "
        "expire, FAILURES the attempts that failed in a row, NS-FAILED the namespaces whose "
        "pull secret could not be written, REFRESHED when the credentials were last verified.",
        formatter_class=formatter,
    )
    status.add_argument(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        help="OCIRegistry objects of this namespace only (ClusterOCIRegistry objects are "
        "always listed; default: every namespace)",
    )
    _cluster_flags(status)


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig to use (default: $KUBECONFIG, else ~/.kube/config)",
    )
    parser.add_argument(
        "--context", metavar="NAME", help="kubeconfig context (default: its current context)"
    )


def main(args: argparse.Namespace) -> int:
    from ocireg.kube.client import ApiError

    try:
        if args.command == "check":
            return check(args)
        if args.command == "status":
            return status(args)
    except CommandError as error:
        print(f"ocireg {args.command}: error: {error}", file=sys.stderr)
        return 1
    except ApiError as error:  # a read the kubeconfig's identity may not make, say
        where = f" ({error.reason})" if error.reason else ""
        print(
            f"ocireg {args.command}: error: the API server answered {error.status}{where}",
            file=sys.stderr,
        )
        return 1
    return 2


class CommandError(Exception):
    """A problem with the command's input or the cluster: printed as one line."""


# -- reading -------------------------------------------------------------------------------


def _documents(files: Iterable[str]) -> list[dict[str, Any]]:
    """Every object in the files (lists flattened), in order."""
    found: list[dict[str, Any]] = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
            loaded = list(yaml.safe_load_all(text))
        except (OSError, yaml.YAMLError) as error:
            raise CommandError(f"{name}: {str(error).splitlines()[0]}") from None
        for document in loaded:
            if isinstance(document, dict) and document.get("kind") == "List":
                found.extend(i for i in document.get("items") or [] if isinstance(i, dict))
            elif isinstance(document, dict):
                found.append(document)
            elif document is not None:
                raise CommandError(f"{name}: not a Kubernetes object: {type(document).__name__}")
    return found


class LocalObjects:
    """The Secrets, ConfigMaps and registry objects of the files, read as the operator reads
    them from the API (`Kube`'s read_secret, read_config_map, read_registry)."""

    def __init__(self, documents: Iterable[Mapping[str, Any]], namespace: str) -> None:
        self.objects: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        for body in documents:
            meta = body.get("metadata") or {}
            kind = str(body.get("kind"))
            where = "" if kind == CLUSTER_KIND else str(meta.get("namespace") or namespace)
            self.objects[(kind, where, str(meta.get("name")))] = body

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        body = self.objects.get(("Secret", namespace, name))
        if body is None:
            raise ReconcileError(
                Reason.SECRET_NOT_FOUND, f"Secret {namespace}/{name} is not in the files"
            )
        data = {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
        data.update({k: str(v).encode() for k, v in (body.get("stringData") or {}).items()})
        return data

    def read_config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        body = self.objects.get(("ConfigMap", namespace, name))
        if body is None:
            return None
        return {k: str(v).encode() for k, v in (body.get("data") or {}).items()}

    def read_registry(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace or "", name))
        return dict(found) if found is not None else None


def _kube(args: argparse.Namespace) -> Any:
    """The operator's Kubernetes client on the kubeconfig's identity, once the API server
    has answered; a CommandError saying why not."""
    from ocireg.kube.client import ClusterUnreachable, Kube, connect

    try:
        connect(CONNECT_TIMEOUT, args.kubeconfig, args.context)
    except ClusterUnreachable as error:
        raise CommandError(str(error)) from None
    return Kube()


def _context_namespace(args: argparse.Namespace) -> str:
    """The namespace of the kubeconfig's context, as kubectl would use it."""
    if args.namespace:
        return str(args.namespace)
    if args.command == "check" and args.local:
        return "default"
    from ocireg.kube.client import context_namespace

    return context_namespace(args.kubeconfig, args.context) or "default"


# -- check ---------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    from ocireg.egress import parse_cidrs

    documents = _documents(args.files)
    registries = [d for d in documents if d.get("kind") in KINDS]
    if not registries:
        raise CommandError(f"no {NAMESPACED_KIND} or {CLUSTER_KIND} in {', '.join(args.files)}")
    cidrs = tuple(args.egress_allowed_cidrs or ())
    try:
        parse_cidrs(cidrs)
    except ValueError as error:
        raise CommandError(str(error)) from None
    config = OperatorConfig(
        credentials_namespace=args.credentials_namespace, egress_allowed_cidrs=cidrs
    )
    namespace = _context_namespace(args)
    kube = None if args.local else _kube(args)
    reader = LocalObjects(documents, namespace) if kube is None else kube
    failed = 0
    for body in registries:
        failed += not _check_one(body, reader, kube, config, namespace)
    return 1 if failed else 0


def _check_one(
    body: Mapping[str, Any], reader: Any, kube: Any, config: OperatorConfig, namespace: str
) -> bool:
    """Check one object; print what would happen (stdout) or why not (stderr)."""
    from ocireg import providers
    from ocireg.api.durations import parse_duration
    from ocireg.api.ownership import RegistryRef
    from ocireg.egress import EgressPolicy
    from ocireg.providers.cache import MintCache
    from ocireg.pullsecrets.reconcile import (
        effective_spec,
        resolve_credential,
        tls_options,
        verified_host,
        verify,
    )

    kind = str(body["kind"])
    meta = body.get("metadata") or {}
    namespaced = kind == NAMESPACED_KIND
    own = str(meta.get("namespace") or namespace) if namespaced else None
    ref = RegistryRef(kind, str(meta.get("name") or ""), own, None)
    shown = f"{kind} {ref.namespace}/{ref.name}" if namespaced else f"{kind} {ref.name}"
    if body.get("apiVersion") != API_VERSION:
        print(
            f"{shown}: apiVersion {body.get('apiVersion')!r} is not {API_VERSION}", file=sys.stderr
        )
        return False
    default_namespace = (ref.namespace if namespaced else config.credentials_namespace) or ""
    try:
        spec = effective_spec(reader, ref, dict(body.get("spec") or {}))
        tls = tls_options(reader, spec, default_namespace, namespaced)
        refresh = spec.effective_refresh
        ctx = providers.ResolveContext(
            reader.read_secret,
            default_namespace,
            namespaced,
            config=config,
            cache=MintCache(),
            renew_before=refresh.renew_before,
            refresh_interval=parse_duration(refresh.interval),
            registry_tls=tls,
            **({"request_token": kube.request_token} if kube is not None else {}),
        )
        credential = resolve_credential(spec, ctx)
        verify(
            spec, credential, tls, EgressPolicy.for_object(namespaced, config.egress_allowed_cidrs)
        )
    except ReconcileError as error:
        hint = (
            " (ocireg check reads as the kubeconfig's identity)"
            if error.reason == "Forbidden"
            else ""
        )
        print(f"{shown}: {error.reason}: {error.message}{hint}", file=sys.stderr)
        return False
    host = verified_host(spec, credential)
    expiry = ""
    if credential.expires_at is not None:
        expiry = f"; they expire at {_iso(credential.expires_at)} ({_left(credential.expires_at)})"
    print(f"{shown}: OK")
    print(f"  credentials: {credential.provider}, accepted by {host}{expiry}")
    if credential.anonymous:
        print("  would write: nothing (anonymous registries need no pull secret)")
        return True
    print(f"  would write: {_targets(kube, ref, spec)}")
    return True


def _targets(kube: Any, ref: Any, spec: Any) -> str:
    """What the operator would write, in words."""
    from ocireg.pullsecrets import plan

    targets = spec.effective_targets
    names = plan.secret_names(targets, ref.name)
    secrets = ", ".join(f"Secret {names[f]} ({f.value})" for f in targets.formats)
    accounts = ""
    if any(plan.service_account_selected(targets, n) for n in [*targets.service_accounts, "*"]):
        accounts = f", referenced by ServiceAccounts {', '.join(targets.service_accounts)}"
    if ref.namespaced:
        return f"{secrets} in {ref.namespace}{accounts}"
    if kube is None:
        return f"{secrets} in the namespaces spec.targets selects{accounts}"
    from ocireg.kube.client import ApiError

    try:
        namespaces = kube.namespaces()
    except ApiError as error:
        return (
            f"{secrets} in the namespaces spec.targets selects{accounts} (not listed: the API "
            f"server answered {error.status} to listing namespaces)"
        )
    chosen = [
        n["metadata"]["name"]
        for n in namespaces
        if plan.namespace_selected(
            ref,
            targets,
            n["metadata"]["name"],
            n["metadata"].get("labels") or {},
            (n.get("status") or {}).get("phase", "Active"),
        )
    ]
    listed = ", ".join(chosen[:NAMES_SHOWN]) + (", ..." if len(chosen) > NAMES_SHOWN else "")
    where = f"{len(chosen)} namespace(s)" + (f": {listed}" if chosen else "")
    return f"{secrets} in {where}{accounts}"


# -- status --------------------------------------------------------------------------------

COLUMNS = ("KIND", "NAME", "READY", "REASON", "EXPIRES", "FAILURES", "NS-FAILED", "REFRESHED")


def status(args: argparse.Namespace) -> int:
    from ocireg.kube.client import ApiError

    kube = _kube(args)
    rows: list[tuple[str, ...]] = []
    for kind in KINDS:
        try:
            found = kube.registries(kind, args.namespace if kind == NAMESPACED_KIND else None)
        except ApiError as error:
            if error.status == 404:
                raise CommandError(
                    f"the API server does not know {PLURALS[kind]}: are the ocireg CRDs installed?"
                ) from None
            raise CommandError(f"listing {PLURALS[kind]}: {error.status} {error.reason}") from None
        rows.extend(status_row(kind, body, _now()) for body in found)
    if not rows:
        print("No registry objects found.", file=sys.stderr)
        return 0
    print(table([COLUMNS, *sorted(rows, key=lambda r: (r[0], r[1]))]), end="")
    return 0


def status_row(kind: str, body: Mapping[str, Any], now: dt.datetime) -> tuple[str, ...]:
    """One object's row of the status table (pure)."""
    meta = body.get("metadata") or {}
    name = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else meta["name"]
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    credentials = status.get("credentials") or {}
    targets = status.get("targets") or {}
    expires = _parse(credentials.get("expiresAt"))
    refreshed = _parse(credentials.get("refreshedAt"))
    return (
        kind,
        str(name),
        str(ready.get("status")) if ready else "Unknown",
        str(ready.get("reason")) if ready else "NotReconciled",
        _left(expires, now) if expires else "-",
        str(status.get("failures") or 0),
        str(targets.get("failedCount") or 0),
        f"{_ago(refreshed, now)} ago" if refreshed else "-",
    )


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )


# -- times ---------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _span(seconds: float) -> str:
    """kubectl's way: 45s, 12m, 3h20m, 5d."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{seconds // 86400}d"


def _left(moment: dt.datetime, now: dt.datetime | None = None) -> str:
    seconds = (moment - (now or _now())).total_seconds()
    return f"in {_span(seconds)}" if seconds >= 0 else f"expired {_span(-seconds)} ago"


def _ago(moment: dt.datetime, now: dt.datetime) -> str:
    return _span(max(0.0, (now - moment).total_seconds()))
