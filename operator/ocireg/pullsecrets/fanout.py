"""Writing into namespaces, from the watch-fed index (pullsecrets/index.py).

All writes into a namespace go through one job per namespace (`Fanout.namespace`): it
brings that namespace right for every registry this process serves, deciding from the
index (plan.py decides) and writing only the differences: each registry's Secrets, then one
patch per ServiceAccount with every reference to add or remove, then the deletions. One job
per namespace runs at a time (`KeyedQueue`), so two writers never fight over a Secret or a
ServiceAccount; jobs for namespace, ServiceAccount and Secret events go before the bulk of
a registry's resync, and a bounded number of them (--concurrency) run at once.

A registry's resync (`Fanout.resync`) decides under its own lock which namespaces differ
from what it wants, queues jobs for those only, and waits for them without holding up any
event: namespace events never wait behind a whole-registry resync.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ocireg import metrics
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.api.spec import Format, RegistrySpec
from ocireg.backoff import Backoff
from ocireg.kube.client import Conflict, Kube
from ocireg.oci import TLSOptions
from ocireg.pullsecrets import plan, schedule
from ocireg.pullsecrets.index import ClusterIndex
from ocireg.pullsecrets.report import NamespaceResult, conflict, report
from ocireg.workers import KeyedQueue

log = logging.getLogger(__name__)
# A failed namespace job is retried after 2, 4, 8 ... seconds, at most 5 minutes.
JOB_BACKOFF = Backoff(base=2.0, cap=300.0, jitter=0.0)
# How long a reconcile waits for the watches' first complete lists (the namespace jobs decide
# from them only, so nothing is written before); then it fails and kopf retries it.
SYNC_WAIT_SECONDS = 60.0


@dataclass(frozen=True, eq=False)
class SyncStamp:
    """What a registry's resync decides from: the part of the index it reads, as change
    counts say (Fanout.stamp), the registry objects served, and the spec and credential it
    wrote. The spec and credential are compared by identity: each is replaced whole, never
    changed in place. The objects served by their count of changes, not their uids: one set
    of 5,000 uids kept by each stamp made as tenants came was 10 MB at 1,000 tenants."""

    index: tuple[object, ...]
    served: int  # Registries.served
    spec: RegistrySpec
    credential: Credential

    def same(self, other: SyncStamp | None) -> bool:
        return (
            other is not None
            and self.index == other.index
            and self.served == other.served
            and self.spec is other.spec
            and self.credential is other.credential
        )


@dataclass
class Tracked:
    """What the operator remembers about one registry object between ticks."""

    # Serializes this object's reconciles (kopf's handlers, and runs triggered by a
    # credentials change). Namespace jobs never take it.
    lock: threading.Lock = field(default_factory=threading.Lock)
    memory: schedule.Memory = field(default_factory=schedule.Memory)
    spec: RegistrySpec | None = None
    credential: Credential | None = None
    tls: TLSOptions | None = None  # how to connect, for other work on the same registry
    body: dict[str, Any] | None = None  # as kopf last handed it over, for triggered runs
    deleted: bool = False
    # Something it read changed since its last run (or kopf handed it over): read again.
    changed: bool = True
    mutex: threading.Lock = field(default_factory=threading.Lock)  # spec and credential
    # see desired(): (spec, credential, pull secret templates, Argo CD Secret templates)
    templates: tuple[Any, Any, list[plan.DesiredSecret], list[plan.DesiredSecret]] | None = None
    # What its status last said, for the metrics: Ready, and status.targets.failedCount.
    ready: bool = False
    failed_namespaces: int = 0
    status_noted: bool = False  # note_status has run once
    # What the last complete resync looked at, when it found every namespace as wanted.
    resynced: SyncStamp | None = None

    def note_status(self, status: dict[str, Any]) -> None:
        """Remember what ``status`` (the one written, or the object's own when nothing was
        written) says for the metrics."""
        conditions = status.get("conditions") or []
        self.ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        self.failed_namespaces = int((status.get("targets") or {}).get("failedCount") or 0)
        self.status_noted = True

    def publish(self, spec: RegistrySpec | None, credential: Credential | None) -> None:
        """What namespace jobs write from now on (None: nothing)."""
        with self.mutex:
            self.spec, self.credential = spec, credential

    def serving(self) -> tuple[RegistrySpec, Credential] | None:
        with self.mutex:
            spec, credential = self.spec, self.credential
        if spec is None or credential is None or credential.anonymous or self.deleted:
            return None
        return spec, credential

    def desired(
        self,
        ref: plan.RegistryRef,
        spec: RegistrySpec,
        credential: Credential,
        namespace: str,
        live: frozenset[str],
        wanted: plan.Wanted,
    ) -> list[plan.DesiredSecret]:
        """What this registry writes into ``namespace``: its pull secret formats
        (plan.desired_secrets) and its Argo CD Secrets (plan.argocd_secrets), as ``wanted``
        says; built once per published credential for a cluster-scoped registry, whose copies
        differ only in their namespace. ``live``: the uids of the registry objects served
        (whose copies are never taken over, see ownership.claim)."""
        targets = spec.effective_targets
        if ref.namespaced:
            pull = plan.desired_secrets(ref, targets, credential, namespace)
            argocd = plan.argocd_secrets(ref, spec, credential, namespace)
        else:
            built = self.templates
            if built is None or built[0] is not spec or built[1] is not credential:
                built = self.templates = (
                    spec,
                    credential,
                    plan.desired_secrets(ref, targets, credential, ""),
                    plan.argocd_secrets(ref, spec, credential, ""),
                )
            pull, argocd = built[2], built[3]
        templates = (pull if wanted.pull else []) + (argocd if wanted.argocd else [])
        return [dataclasses.replace(t, namespace=namespace, live=live) for t in templates]


class Registries:
    """The registry objects this operator serves, for the namespace jobs, the admission
    webhook and the chart sync to consult without calling the API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracked: dict[plan.RegistryRef, Tracked] = {}
        # Tenant objects by namespace ("" holds the cluster ones, which may select any): a
        # namespace job looks at the objects that can select its namespace, not at all.
        self._by_namespace: dict[str, dict[plan.RegistryRef, Tracked]] = {}
        self._live: frozenset[str] | None = None  # uids, made again after a change
        self._served = 0  # counts the changes to the objects served (a SyncStamp keeps it)

    def get(self, ref: plan.RegistryRef) -> Tracked:
        with self._lock:
            tracked = self._tracked.get(ref)
            if tracked is None:
                tracked = self._tracked[ref] = Tracked()
                self._by_namespace.setdefault(self._group(ref), {})[ref] = tracked
                self._live, self._served = None, self._served + 1
            return tracked

    def find(self, ref: plan.RegistryRef) -> Tracked | None:
        with self._lock:
            return self._tracked.get(ref)

    def forget(self, ref: plan.RegistryRef) -> Tracked | None:
        with self._lock:
            tracked = self._tracked.pop(ref, None)
            if tracked is not None:
                group = self._by_namespace.get(self._group(ref), {})
                group.pop(ref, None)
                if not group:
                    self._by_namespace.pop(self._group(ref), None)
                self._live, self._served = None, self._served + 1
            return tracked

    @staticmethod
    def _group(ref: plan.RegistryRef) -> str:
        return (ref.namespace or "") if ref.namespaced else ""

    def refs(self) -> list[plan.RegistryRef]:
        with self._lock:
            return list(self._tracked)

    def live(self) -> frozenset[str]:
        """The uids of the registry objects known to exist (being served or reconciled)."""
        with self._lock:
            if self._live is None:
                self._live = frozenset(ref.uid for ref in self._tracked if ref.uid)
            return self._live

    def served(self) -> int:
        """Changes with every object added or forgotten: equal, the same objects."""
        with self._lock:
            return self._served

    def samples(self, managed: Callable[[plan.RegistryRef], int]) -> list[metrics.RegistrySample]:
        """Per-object figures for the metrics endpoint; ``managed``: how many Secrets an
        object has now."""
        with self._lock:
            items = list(self._tracked.items())
        out = []
        for ref, t in items:
            with t.mutex:
                credential = t.credential
            out.append(
                metrics.RegistrySample(
                    kind=ref.kind,
                    namespace=ref.namespace or "",
                    name=ref.name,
                    ready=t.ready,
                    expires_at=credential.expires_at if credential else None,
                    managed_secrets=managed(ref),
                    failed_namespaces=t.failed_namespaces,
                )
            )
        return out

    def ready(self, namespace: str | None = None) -> list[tuple[plan.RegistryRef, Tracked]]:
        """Registries with verified credentials and a pull secret to place, in one order:
        all of them, or those that can select ``namespace`` (the cluster objects and the
        namespace's own)."""
        with self._lock:
            if namespace is None:
                items = list(self._tracked.items())
            else:
                items = list(self._by_namespace.get("", {}).items())
                if namespace:
                    items += self._by_namespace.get(namespace, {}).items()
        return sorted(
            ((ref, t) for ref, t in items if t.serving() is not None),
            key=lambda item: (item[0].kind, item[0].namespace or "", item[0].name),
        )


def apply_secret(
    kube: Kube,
    desired: plan.DesiredSecret,
    observed: plan.SecretState | None,
    written: Callable[[dict[str, Any]], None],
) -> str:
    """Write one Secret if it needs it: created | updated | unchanged | conflict | gone (its
    namespace is going away). ``observed`` is the Secret as indexed (None: absent); a write
    that raced with another writer (409) reads it again and decides again, once. ``written``
    gets the API's answer, so the index knows it before its watch event arrives."""
    for _attempt in range(2):
        decision = plan.secret_decision(desired, observed)
        if decision not in ("create", "update"):
            return decision
        version = observed.resource_version if decision == "update" and observed else None
        try:
            answer = kube.write_secret(desired.body(), version)
        except Conflict:
            body = kube.read_secret_body(desired.namespace, desired.name)
            observed = None if body is None else plan.secret_state(body)
            continue
        if answer is None:
            return "gone"
        written(answer)
        return decision + "d"
    return "conflict"


Results = dict[plan.RegistryRef, NamespaceResult]


class Fanout:
    """Namespace jobs and registry resyncs against one index (see the module text)."""

    def __init__(
        self, kube: Kube, index: ClusterIndex, registries: Registries, workers: int
    ) -> None:
        self.kube = kube
        self.index = index
        self.registries = registries
        self.queue: KeyedQueue[str, Results] = KeyedQueue(
            self.namespace, workers, "ocireg-fanout", JOB_BACKOFF
        )

    # -- events ----------------------------------------------------------------------------

    def changed(self, namespace: str) -> Future[Results] | None:
        """Something in or about this namespace changed (a watch event): look at it soon.
        Nothing is done before the index is complete (None)."""
        if not self.index.synced:
            return None
        return self.queue.submit(namespace, urgent=True)

    # -- one namespace -----------------------------------------------------------------------

    def namespace(self, namespace: str) -> Results:
        """Bring one namespace right for every registry served (runs as its queue job)."""
        found = self.index.namespaces.get("", namespace)
        observed = self.index.secrets.in_namespace(namespace)
        accounts = self.index.accounts.in_namespace(namespace)
        results: Results = {}
        wanted_refs: list[tuple[str, Any]] = []
        unwanted: list[str] = []
        removals: list[tuple[str, plan.SecretState]] = []
        live = self.registries.live()
        for ref, tracked in self.registries.ready(namespace):
            served = tracked.serving()
            if served is None or (ref.namespaced and ref.namespace != namespace):
                continue
            spec, credential = served
            targets = spec.effective_targets
            result = results[ref] = NamespaceResult(namespace)
            wanted = (
                plan.namespace_wanted(ref, targets, namespace, found.labels, found.phase)
                if found is not None
                else plan.Wanted(pull=False, argocd=False)
            )
            desired = tracked.desired(ref, spec, credential, namespace, live, wanted)
            if wanted:
                outcomes = [
                    apply_secret(self.kube, d, observed.get(d.name), self._written) for d in desired
                ]
                if "conflict" in outcomes:
                    taken = [
                        observed.get(d.name)
                        for d, o in zip(desired, outcomes, strict=True)
                        if o == "conflict"
                    ]
                    owner = plan.secret_owner(taken[0]) if taken[0] is not None else None
                    result.failure = conflict(namespace, owner)
                elif "gone" not in outcomes:
                    result.written = sum(o in ("created", "updated") for o in outcomes)
                    if wanted.pull:
                        result.service_accounts = sum(
                            plan.service_account_selected(targets, n) for n in accounts
                        )
                        pull = plan.secret_names(targets, ref.name)[Format.dockerconfigjson]
                        wanted_refs.append((pull, targets))
            # What it wrote here before and no longer wants: all of it in a namespace it left,
            # a format or an Argo CD Secret dropped from its targets, an old secretName.
            keep = {d.name for d in desired}
            stale = [
                (name, state)
                for name, state in observed.items()
                if name not in keep and plan.secret_owned_by(ref, namespace, state, live)
            ]
            if stale and found is not None and found.phase == "Active":
                removals.extend(stale)  # a terminating namespace takes them with it
                unwanted.extend(n for n, _ in stale)
                result.removed = True
        for account, (add, remove) in plan.account_changes(accounts, wanted_refs, unwanted).items():

            def change(
                sa: dict[str, Any], add: list[str] = add, remove: list[str] = remove
            ) -> dict[str, Any] | None:
                return plan.service_account_change(sa, add, remove)

            self.kube.update_service_account(
                namespace,
                plan.account_body(namespace, account, accounts[account]),
                change,
                self._written_account,
            )
        for name, state in removals:
            # The uid precondition: only the Secret we saw, never one re-created since.
            self.kube.delete_secret(namespace, name, state.uid)
            self.index.secrets.forget(namespace, name)
        return results

    def _written(self, body: dict[str, Any]) -> None:
        self.index.secrets.apply("MODIFIED", body)

    def _written_account(self, body: dict[str, Any]) -> None:
        self.index.accounts.apply("MODIFIED", body)

    # -- one registry --------------------------------------------------------------------------

    def holds(self, ref: plan.RegistryRef, namespace: str, name: str) -> bool:
        """Whether ``namespace`` holds ``ref``'s Secret ``name`` (labelled with its uid), as
        the index knows it."""
        state = self.index.secrets.get(namespace, name)
        return bool(ref.uid) and state is not None and state.label(plan.LABEL_UID) == ref.uid

    def managed(self, ref: plan.RegistryRef) -> int:
        """How many Secrets ``ref`` has now, as the index knows them (its uid label). A
        tenant's object counts only its own namespace: another tenant could label her
        Secrets with its uid, and would inflate its count."""
        if not ref.uid:
            return 0
        if ref.namespaced:
            held = self.index.secrets.in_namespace(ref.namespace or "").values()
            return sum(s.label(plan.LABEL_UID) == ref.uid for s in held)
        return self.index.secrets.count(ref.uid)

    def stamp(self, ref: plan.RegistryRef, spec: RegistrySpec, credential: Credential) -> SyncStamp:
        """A tenant's object reads its own namespace only: that namespace, and the change
        counts of its ServiceAccounts and Secrets (a busy cluster elsewhere leaves it
        quiet). A cluster object reads them all: the stores' whole counts."""
        index = self.index
        seen: tuple[object, ...]
        if ref.namespaced:
            own = ref.namespace or ""
            found = index.namespaces.get("", own)
            seen = (found, index.accounts.changes_in(own), index.secrets.changes_in(own))
        else:
            seen = (index.namespaces.changes, index.accounts.changes, index.secrets.changes)
        return SyncStamp(seen, self.registries.served(), spec, credential)

    def quiet(self, ref: plan.RegistryRef) -> bool:
        """Whether a resync of ``ref`` would find what its last one did: that one found every
        namespace as wanted, and nothing it decided from has changed since (stamp: what it
        reads of the index, the objects served, its spec and credential). A resync is then
        reads of the index and no write; at 5,000 tenant objects those reads were most of
        the operator's idle CPU."""
        tracked = self.registries.find(ref)
        served = None if tracked is None else tracked.serving()
        if tracked is None or served is None:
            return False
        return self.stamp(ref, *served).same(tracked.resynced)

    def in_sync(
        self,
        ref: plan.RegistryRef,
        spec: RegistrySpec,
        credential: Credential,
        namespace: str,
        wanted: plan.Wanted,
    ) -> bool:
        """Whether a namespace already holds what this registry wants there (its Secrets and
        its references, none it no longer wants), as far as the index knows."""
        targets = spec.effective_targets
        observed = self.index.secrets.in_namespace(namespace)
        live = self.registries.live()
        desired = self.registries.get(ref).desired(ref, spec, credential, namespace, live, wanted)
        if any(plan.secret_decision(d, observed.get(d.name)) != "unchanged" for d in desired):
            return False
        keep = {d.name for d in desired}
        if any(
            name not in keep and plan.secret_owned_by(ref, namespace, state, live)
            for name, state in observed.items()
        ):
            return False
        if not wanted.pull:
            return True
        pull = plan.secret_names(targets, ref.name)[Format.dockerconfigjson]
        accounts = self.index.accounts.in_namespace(namespace)
        return not plan.account_changes(accounts, [(pull, targets)], [])

    def resync(
        self,
        kube: Kube,
        ref: plan.RegistryRef,
        spec: RegistrySpec,
        credential: Credential,
        concurrency: int,
    ) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
        """A reconcile's sync of every target (reconcile.Sync): publish what the registry
        wants, queue jobs for the namespaces that differ, wait for them, report."""
        if not self.index.wait_synced(SYNC_WAIT_SECONDS):
            raise ReconcileError(
                Reason.WATCHES_NOT_SYNCED,
                "the watches of namespaces, ServiceAccounts and ocireg's Secrets have not "
                "completed their first list yet",
                transient=True,
            )
        tracked = self.registries.get(ref)
        tracked.publish(spec, credential)
        tracked.resynced, stamp = None, self.stamp(ref, spec, credential)  # before it reads
        targets = spec.effective_targets
        selected: list[str] = []
        secrets: Iterable[tuple[str, str, plan.SecretState]]
        if ref.namespaced:  # its own namespace only: no need to look through the others
            own = ref.namespace or ""
            secrets = [(own, n, s) for n, s in self.index.secrets.in_namespace(own).items()]
            found = self.index.namespaces.get("", own)
            namespaces = [("", own, found)] if found is not None else []
        else:
            secrets = self.index.secrets.scan()
            namespaces = self.index.namespaces.items()
        live = self.registries.live()
        holding = {n for n, _, s in secrets if plan.secret_owned_by(ref, n, s, live)}
        results: dict[str, NamespaceResult] = {}
        futures: dict[str, Future[Results]] = {}
        for _, name, found in namespaces:
            wanted = plan.namespace_wanted(ref, targets, name, found.labels, found.phase)
            if not wanted:
                continue
            selected.append(name)
            if self.in_sync(ref, spec, credential, name, wanted):
                accounts = self.index.accounts.in_namespace(name) if wanted.pull else {}
                count = sum(plan.service_account_selected(targets, n) for n in accounts)
                results[name] = NamespaceResult(name, service_accounts=count)
            else:
                futures[name] = self.queue.submit(name)
        chosen = set(selected)
        for namespace in sorted(holding - chosen):
            futures[namespace] = self.queue.submit(namespace)
        removed, error = 0, None
        for namespace, future in futures.items():
            try:
                result = future.result().get(ref, NamespaceResult(namespace))
            except Exception as failure:  # the queue retries it; this resync reports it
                error = error or failure
                continue
            if namespace in chosen:
                results[namespace] = result
            elif result.removed:
                removed += 1
        if error is not None:
            raise error
        status, events = report(list(results.values()), len(selected), removed)
        if all(r.failure is None for r in results.values()):
            # A namespace that failed (a foreign Secret in the way) is looked at again by
            # the next resync: what would mend it (its removal) is not in the index.
            tracked.resynced = stamp
        return status, events
