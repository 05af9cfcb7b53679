"""One reconcile of one registry object: resolve, verify, write, clean up, report.

Called from the kopf handlers; uses providers, registry and kube for I/O and plan for every
decision. Returns the status to write and the Events to post; raises nothing for problems a
user must fix (they become conditions).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from ocireg import providers
from ocireg.api.conditions import condition, set_conditions
from ocireg.api.credential import Credential
from ocireg.api.durations import parse_duration
from ocireg.api.errors import ReconcileError
from ocireg.api.names import REFRESH_HANDLED
from ocireg.api.reasons import Reason
from ocireg.api.spec import RegistrySpec, Targets
from ocireg.api.status import RegistryStatus
from ocireg.egress import UNRESTRICTED, EgressPolicy
from ocireg.kube.client import Kube
from ocireg.oci import RegistryClient, RegistryCredentials, RegistryError, TLSOptions
from ocireg.oci.ca_bundle import read_ca_bundle
from ocireg.providers import recall
from ocireg.providers.cache import MintCache, provider_failed
from ocireg.pullsecrets import plan, schedule
from ocireg.pullsecrets.index import Dependency
from ocireg.settings import OperatorConfig

log = logging.getLogger(__name__)
# Bases one object may extend through (each one GET per tick): without a cap a chain of N
# objects costs N(N-1)/2 reads every tick.
MAX_EXTENDS_DEPTH = 8


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_specs(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Fields set in ``override`` win; nested objects merge, except auth, which is a union
    and is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if key == "extends":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "auth":
            merged[key] = merge_specs(merged[key], value)
        else:
            merged[key] = value
    return merged


class Reads:
    """The reconcile's Kubernetes reads, recorded: what a run read is what it depends on,
    so a watch event on any of them runs it again (Runtime.changed). Recording the reads
    rather than parsing each provider's references keeps one mechanism for all of them,
    including a Secret that does not exist yet."""

    def __init__(self, kube: Kube, on_read: Callable[[Dependency], None] | None = None) -> None:
        self.kube = kube
        self.keys: set[Dependency] = set()
        self.on_read = on_read

    def _note(self, key: Dependency) -> None:
        # Before the read: a change that lands after it then runs the object again.
        self.keys.add(key)
        if self.on_read is not None:
            self.on_read(key)

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        self._note(("Secret", namespace, name))
        return self.kube.read_secret(namespace, name)

    def read_config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        self._note(("ConfigMap", namespace, name))
        return self.kube.read_config_map(namespace, name)

    def read_registry(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        self._note((kind, namespace or "", name))
        return self.kube.read_registry(kind, name, namespace)


class Reader(Protocol):
    """What resolving a spec reads: Kube, Reads, or `ocireg check --local`'s files."""

    def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]: ...

    def read_config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None: ...

    def read_registry(
        self, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None: ...


def effective_spec(kube: Reader, ref: plan.RegistryRef, spec: dict[str, Any]) -> RegistrySpec:
    chain = [ref.name]
    current = spec
    while current.get("extends"):
        base_name = current["extends"]
        if base_name in chain:
            raise ReconcileError(
                Reason.EXTENDS_LOOP, "extends forms a loop: " + " -> ".join([*chain, base_name])
            )
        if len(chain) > MAX_EXTENDS_DEPTH:
            raise ReconcileError(
                Reason.EXTENDS_TOO_DEEP,
                f"extends goes through more than {MAX_EXTENDS_DEPTH} bases ("
                + " -> ".join([*chain, base_name])
                + "); point this object at a base nearer the root",
            )
        base = kube.read_registry(ref.kind, base_name, ref.namespace)
        if base is None:
            raise ReconcileError(
                Reason.BASE_NOT_FOUND, f"{ref.kind} {base_name!r} named in extends does not exist"
            )
        chain.append(base_name)
        current = merge_specs(base.get("spec") or {}, current)
    try:
        return RegistrySpec.model_validate(current)
    except ValidationError as error:
        raise ReconcileError(Reason.INVALID_SPEC, str(error).splitlines()[0]) from None


def tls_options(
    kube: Reader, spec: RegistrySpec, default_namespace: str, namespaced: bool
) -> TLSOptions:
    tls = spec.effective_tls
    bundle = None
    if tls.ca_bundle_ref is not None:
        bundle = read_ca_bundle(
            tls.ca_bundle_ref, default_namespace, namespaced, kube.read_secret, kube.read_config_map
        )
    return TLSOptions(insecure=tls.insecure, skip_verify=tls.insecure_skip_verify, ca_bundle=bundle)


def verified_host(spec: RegistrySpec, credential: Credential) -> str:
    """The host verification talks to: the server, or for a `{region}`/`{account}` template
    the first host the provider expanded it to."""
    assert spec.server is not None
    if "{" in spec.server and credential.endpoints:
        return credential.endpoints[0]
    return spec.server


def verify(
    spec: RegistrySpec,
    credential: Credential,
    tls: TLSOptions,
    egress_policy: EgressPolicy = UNRESTRICTED,
) -> None:
    host = verified_host(spec, credential)
    creds = RegistryCredentials(
        username=credential.username,
        password=credential.password_for(host),
        identity_token=credential.identity_token,
        registry_token=credential.registry_token,
    )
    repository = None
    if spec.verify and spec.verify.repository:
        prefix = f"{spec.repository_prefix}/" if spec.repository_prefix else ""
        repository = prefix + spec.verify.repository
    try:
        with RegistryClient(host, creds, tls, egress_policy=egress_policy) as client:
            client.verify(repository, push=bool(spec.verify and spec.verify.push))
    except RegistryError as error:
        raise ReconcileError(
            error.reason, error.message, transient=error.transient, retry_after=error.retry_after
        ) from None


def _condition(
    kind: str, ok: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return condition(kind, ok, reason, message, generation, _now())


def removing(names: set[str]) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """One patch removing every name in ``names`` that we added (and only those)."""
    return lambda sa: plan.service_account_change(sa, [], sorted(names))


# How a reconcile brings the targets up to date: (kube, ref, spec, credential, concurrency)
# -> (status.targets, Events).
Sync = Callable[
    [Kube, plan.RegistryRef, RegistrySpec, Credential, int],
    tuple[dict[str, Any], list[tuple[str, str, str]]],
]


def cleanup(kube: Kube, ref: plan.RegistryRef, keep: set[str] | None = None) -> int:
    """Delete this object's Secrets (and only our ServiceAccount references to them) outside
    ``keep``. Listed by name, then each checked for this exact object
    (ownership.claim): another object of the same name keeps its own."""
    keep = keep or set()
    namespaces: dict[str, list[dict[str, Any]]] = {}
    for secret in kube.managed_secrets(ref, ref.namespace if ref.namespaced else None):
        namespace = secret["metadata"]["namespace"]
        if namespace not in keep and plan.secret_owned_by(ref, namespace, secret):
            namespaces.setdefault(namespace, []).append(secret)
    for namespace, found in namespaces.items():
        _remove(kube, namespace, found)
    return len(namespaces)


def _remove(kube: Kube, namespace: str, found: list[dict[str, Any]]) -> None:
    names = {s["metadata"]["name"] for s in found}
    for sa in kube.service_accounts(namespace):
        if any(plan.service_account_patch(sa, name, want=False) for name in names):
            kube.update_service_account(namespace, sa, removing(names))
    for secret in found:
        # The uid precondition: only the Secret we listed, never one re-created since.
        kube.delete_secret(namespace, secret["metadata"]["name"], secret["metadata"]["uid"])


# The last run's spec, credential and TLS options, for a run whose inputs did not change.
Known = tuple[RegistrySpec, Credential, TLSOptions]


@dataclass
class Outcome:
    """What one tick decided: the status to write (None: leave it), Events to post, and
    what to remember until the next tick."""

    memory: schedule.Memory
    status: dict[str, Any] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    spec: RegistrySpec | None = None
    credential: Credential | None = None
    tls: TLSOptions | None = None
    # What it read (a change runs it again); None: it read nothing, what it depends on stays.
    reads: frozenset[Dependency] | None = frozenset()
    wake_in: float = schedule.MIN_WAKE_SECONDS  # seconds until it is due by time alone


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _since(refreshed_at: str, seconds: float) -> dt.datetime:
    """``seconds`` after ``refreshed_at`` (a status time), or after now if it is none."""
    moment = recall.parse_time(refreshed_at) or dt.datetime.now(dt.UTC)
    return moment + dt.timedelta(seconds=seconds)


# The conditions this reconcile writes; others (ChartsSynced) belong to other handlers.
def _failure_status(
    error: ReconcileError, generation: int | None, old: dict[str, Any], retry_in: float
) -> dict[str, Any]:
    stalled = error.stalls
    retry = f"retrying in {int(retry_in)}s"
    conditions = [
        _condition("Ready", False, error.reason, error.message, generation),
        _condition("CredentialsReady", False, error.reason, error.message, generation),
        # Retrying on its own (Reconciling) or waiting for a change (Stalled); the one set
        # False is removed (abnormal-true: api.conditions.ABNORMAL_TRUE).
        _condition("Reconciling", not stalled, "Retrying", retry, generation),
        _condition(
            "Stalled",
            stalled,
            error.reason,
            f"{error.message}; {retry} or when an input changes",
            generation,
        ),
    ]
    # TargetsSynced is not set: it still says how the last good Secrets were written.
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": set_conditions(old.get("conditions") or [], conditions),
    }
    for kept in ("credentials", "targets"):
        if kept in old:
            status[kept] = old[kept]
    return status


def secrets_written(targets: Targets) -> str:
    """What a registry object writes, as its conditions name it."""
    return "pull secrets" if targets.argo_cd is None else "pull secrets and Argo CD Secrets"


def _success_status(
    spec: RegistrySpec,
    credential: Credential,
    generation: int | None,
    old: dict[str, Any],
    targets_status: dict[str, Any],
    refreshed_at: str,
    next_refresh_at: str,
    record: dict[str, str] | None = None,
) -> dict[str, Any]:
    failed = targets_status.get("failed") or []
    written = secrets_written(spec.effective_targets)
    if credential.anonymous:
        synced = (True, "AnonymousAccess", "anonymous registries need no pull secret")
    elif failed:
        names = ", ".join(f["namespace"] for f in failed[:5])
        synced = (
            False,
            failed[0]["reason"],
            f"{targets_status.get('failedCount', len(failed))} namespace(s) failed: {names}",
        )
    else:
        synced = (True, "Synced", f"{written} in {targets_status['namespaces']} namespace(s)")
    ok, reason, message = synced
    again = "looked at again at each resync or when a Secret there changes"
    stalled = (False, "Reconciled", "") if ok else (True, reason, f"{message}; {again}")
    conditions = [
        _condition(
            "Ready",
            ok,
            "Ready" if ok else reason,
            f"credentials verified and {written} written" if ok else message,
            generation,
        ),
        _condition(
            "CredentialsReady",
            True,
            "Verified",
            f"{credential.provider} credentials accepted by {verified_host(spec, credential)}"
            + (f"; {credential.note}" if credential.note else ""),
            generation,
        ),
        _condition("TargetsSynced", *synced, generation),
        # Not retrying: a failed namespace is looked at again each resync, and in kopf's terms
        # nothing is wrong. Stalled while a namespace failed (a Secret in the way, which only
        # its owner's change mends), so kstatus' readers (Flux's health checks) see Failed, not
        # Current; else removed, as Reconciling is (api.conditions.ABNORMAL_TRUE).
        _condition("Reconciling", False, "Reconciled", "", generation),
        _condition("Stalled", *stalled, generation),
    ]
    credentials = {
        "provider": credential.provider,
        "endpoints": list(credential.endpoints),
        "refreshedAt": refreshed_at,
        "nextRefreshAt": next_refresh_at,
    }
    if credential.expires_at is not None:
        credentials["expiresAt"] = credential.expires_at.isoformat().replace("+00:00", "Z")
    credentials.update(record or {})  # issuedAt and the seal (providers/recall.py)
    return RegistryStatus.model_validate(
        {
            "observedGeneration": generation,
            "conditions": set_conditions(old.get("conditions") or [], conditions),
            "credentials": credentials,
            "targets": targets_status,
        }
    ).to_api()


def resolve_credential(spec: RegistrySpec, ctx: providers.ResolveContext) -> Credential:
    """providers.resolve with every exception turned into a condition: what a tenant writes
    (a Secret, an answer her endpoint sends) must never reach kopf as an exception, which
    kopf retries every 10 s with no condition and no backoff."""
    try:
        return providers.resolve(spec, ctx)
    except ReconcileError:
        raise
    except Exception as error:
        method = spec.auth.method if spec.auth is not None else "auth"
        raise provider_failed(method, error) from None


def reconcile(
    kube: Kube,
    ref: plan.RegistryRef,
    body: dict[str, Any],
    config: OperatorConfig,
    memory: schedule.Memory,
    now: float,
    sync: Sync,
    cache: MintCache | None = None,
    on_read: Callable[[Dependency], None] | None = None,
    known: Known | None = None,
    copies: recall.CopyReader | None = None,
    quiet: Callable[[], bool] | None = None,
) -> Outcome:
    """One run of one registry object. Cheap when nothing changed: it reads the
    referenced Secrets, compares a fingerprint, and returns without writing anything.
    ``sync`` writes the targets (the namespace jobs' Fanout.resync). The outcome says what
    the run read (each also handed to ``on_read`` as it is read) and when the object is
    next due by time. ``known``: the last run's spec, credential and TLS options, when
    nothing it read has changed since (the caller follows the watches); used unless the
    inputs are due to be read anyway (schedule.inputs_due). ``quiet``: whether nothing the
    targets' last complete resync looked at has changed since (Fanout.quiet); with ``known``
    a resync then has nothing to find, and the run costs no work at all."""
    cache = cache if cache is not None else MintCache()
    reads = Reads(kube, on_read)
    requests = schedule.refresh_requests(
        (body.get("metadata") or {}).get("annotations"), body.get("status")
    )
    if requests:
        known = None  # rotate now: read everything and mint again
    if known is not None:
        verify_every, renew_in = _due_in(known[0], known[1], cache)
        renewal_due = renew_in is not None and renew_in <= 0
        if schedule.inputs_due(memory, now, verify_every, renewal_due):
            known = None
    if known is not None and quiet is not None and quiet():
        # The same inputs (so the same fingerprint) and the same targets: a resync's answer
        # would be the last one's, which its status already shows.
        resync = config.resync_seconds
        work = schedule.work_due(memory, memory.fingerprint or "", now, verify_every, resync)
        after = schedule.after_targets(memory, now) if work is schedule.Work.targets else memory
        outcome = Outcome(after, spec=known[0], credential=known[1], tls=known[2])
    else:
        outcome = _reconcile(
            kube, reads, ref, body, config, memory, now, sync, cache, known, copies, requests
        )
    outcome.reads = frozenset(reads.keys) if known is None else None
    interval, renew_in = None, None
    if outcome.spec is not None:
        interval, renew_in = _due_in(outcome.spec, outcome.credential, cache)
    outcome.wake_in = schedule.next_wake(
        outcome.memory, now, interval, config.resync_seconds, renew_in
    )
    return outcome


def _due_in(
    spec: RegistrySpec, credential: Credential | None, cache: MintCache
) -> tuple[float, float | None]:
    """Seconds between verifications, and until the credential's renewal (None: none)."""
    refresh = spec.effective_refresh
    interval = parse_duration(refresh.interval).total_seconds()
    renewal = cache.next_renewal(credential, refresh.renew_before) if credential else None
    if renewal is None:
        return interval, None
    return interval, (renewal - dt.datetime.now(dt.UTC)).total_seconds()


def _reconcile(
    kube: Kube,
    reads: Reads,
    ref: plan.RegistryRef,
    body: dict[str, Any],
    config: OperatorConfig,
    memory: schedule.Memory,
    now: float,
    sync: Sync,
    cache: MintCache,
    known: Known | None,
    copies: recall.CopyReader | None,
    requests: dict[str, str] | None = None,
) -> Outcome:
    """``requests``: refreshes asked for (schedule.refresh_requests): mint again, verify and
    write every copy whatever is due, and record them as handled in status."""
    requests = requests or {}
    generation = body.get("metadata", {}).get("generation")
    old = body.get("status") or {}
    default_ns = (ref.namespace if ref.namespaced else config.credentials_namespace) or ""
    spec: RegistrySpec | None = None
    current = schedule.fingerprint("spec", body.get("spec"), generation)
    try:
        if known is not None:
            spec, credential, tls = known
        else:
            spec = effective_spec(reads, ref, body.get("spec") or {})
            tls = tls_options(reads, spec, default_ns, ref.namespaced)

        def fingerprint(credential: Credential, spec: RegistrySpec = spec) -> str:
            return schedule.fingerprint(
                spec.to_api(), credential.fingerprint_parts(), tls.ca_bundle, generation
            )

        if known is None:
            ctx = providers.ResolveContext(
                reads.read_secret,
                default_ns,
                ref.namespaced,
                kube.request_token,
                config,
                cache,
                spec.effective_refresh.renew_before,
                parse_duration(spec.effective_refresh.interval),
                tls,
                fresh=bool(requests),
                recall=recall.recaller(  # restart reuse (providers/recall.py)
                    ref,
                    old,
                    generation,
                    spec.effective_targets.formats,
                    plan.secret_names(spec.effective_targets, ref.name),
                    copies,
                    fingerprint,
                    cache.sealer,
                    argocd=plan.argocd_secret_name(spec.effective_targets, ref.name),
                ),
            )
            credential = resolve_credential(spec, ctx)
        current = fingerprint(credential)
        if memory == schedule.Memory():  # restart reuse: resume what the status proves
            now_wall = dt.datetime.now(dt.UTC)
            age = recall.verified_age(
                ref, old, generation, current, credential, cache.sealer, now_wall
            )
            if age is not None:
                memory = schedule.Memory(fingerprint=current, verified_at=now - age)
        interval = parse_duration(spec.effective_refresh.interval).total_seconds()
        work = (
            schedule.Work.verify
            if requests
            else schedule.work_due(memory, current, now, interval, config.resync_seconds)
        )
        if work is schedule.Work.none:
            return Outcome(memory, spec=spec, credential=credential, tls=tls)
        if work is schedule.Work.verify:
            # A tenant's registry (and its realm, redirects) is reached under the egress policy.
            policy = EgressPolicy.for_object(ref.namespaced, config.egress_allowed_cidrs)
            verify(spec, credential, tls, policy)
    except ReconcileError as error:
        if not memory.failures or current != memory.failed_fingerprint or requests:
            pass  # a new failure (or one a person asked to retry): report it now
        elif now < memory.retry_at:
            return Outcome(memory, spec=spec)
        failure = f"{error.reason}: {error.message}"
        if schedule.failure_is_news(memory, failure):
            # Once per failure, not per retry: the condition and Event say it too.
            log.warning("%s failed: %s (retrying with backoff)", ref.display, failure)
        memory = schedule.after_failure(memory, current, now, error.retry_after, failure)
        status = {
            **_failure_status(error, generation, old, memory.retry_at - now),
            "failures": memory.failures,
            **requests,
        }
        previous: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == "CredentialsReady"), {}
        )
        events: list[tuple[str, str, str]] = []
        if (previous.get("reason"), previous.get("message")) != (error.reason, error.message):
            events.append(("Warning", error.reason, error.message))
        return Outcome(memory, status, events, spec=spec)

    targets_status, events = (
        ({"namespaces": 0, "serviceAccounts": 0}, [])
        if credential.anonymous
        else sync(kube, ref, spec, credential, config.concurrency)
    )
    if work is schedule.Work.verify:
        if credential.expires_at is not None and memory.fingerprint not in (None, current):
            events.append(
                ("Normal", "CredentialsRenewed", f"renewed {credential.provider} credentials")
            )
        if memory.failures:
            log.info("%s works again after %d failed attempt(s)", ref.display, memory.failures)
        memory = schedule.after_success(memory, current, now)
        refreshed_at = _now()
    else:
        memory = schedule.after_targets(memory, now)
        refreshed_at = (old.get("credentials") or {}).get("refreshedAt") or _now()
    renewal = cache.next_renewal(credential, spec.effective_refresh.renew_before)
    # Verified again `interval` after refreshedAt: the same status on runs that do not
    # verify (a new time each resync would cost a status write per object per resync).
    verify_at = _since(refreshed_at, interval)
    next_at = _iso(verify_at if renewal is None else min(renewal, verify_at))
    record = recall.status_record(cache.sealer, ref.uid, current, credential, refreshed_at)
    status = _success_status(
        spec, credential, generation, old, targets_status, refreshed_at, next_at, record
    )
    if work is schedule.Work.verify and not old.get("conditions"):
        host = verified_host(spec, credential)
        events.append(("Normal", "Verified", f"credentials accepted by {host}"))
    if old.get("failures"):
        status["failures"] = None  # merge-patched away: it works again
    if requests:
        status.update(requests)
        what = "minted again" if credential.issued_at is not None else "read again"
        asked = ", ".join(a for a, field in REFRESH_HANDLED.items() if field in requests)
        events.append(
            (
                "Normal",
                "Refreshed",
                f"{credential.provider} credentials {what}, verified and written to every "
                f"copy, as {asked} asked",
            )
        )
        log.info("%s refreshed on request (%s)", ref.display, asked)
    return Outcome(memory, status, events, spec, credential, tls)
