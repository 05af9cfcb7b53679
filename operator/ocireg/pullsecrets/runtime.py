"""What the pull-secret handlers run on, as one typed object made at start and kept in kopf's
memo under one key (`memo.runtime`): the settings, the Kubernetes client, the worker pools,
the registry objects being served, the mint cache, and once watching, the watch-fed index and
the namespace jobs it feeds. Its methods are the blocking work the handlers hand to the
pools; the kopf handlers themselves (pullsecrets.handlers) only translate kopf's calls.

A registry object runs when kopf hands it over (created, spec changed, resumed), when
something its last run read changes (the metadata watches of Secrets and ConfigMaps, and
its `extends` bases: `Dependents`), and at the one time it is next due (`Alarms`): nothing
polls.

The chart handlers and the admission webhook read the same object (`runtime(memo)`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ocireg import metrics
from ocireg.allocator import trim_soon
from ocireg.api import ownership
from ocireg.api.ownership import RegistryRef
from ocireg.kube.cache import Store, Watcher
from ocireg.kube.client import Kube, load_config
from ocireg.kube.events import EventRecorder
from ocireg.providers import recall, seal
from ocireg.providers.cache import MintCache
from ocireg.pullsecrets.fanout import SYNC_WAIT_SECONDS, Fanout, Registries, Tracked
from ocireg.pullsecrets.index import ClusterIndex, Dependents
from ocireg.pullsecrets.plan import version_number
from ocireg.pullsecrets.reconcile import cleanup, reconcile
from ocireg.settings import OperatorConfig
from ocireg.workers import Alarms, Pools, retry_on_failure

log = logging.getLogger(__name__)

# What the watches list and watch, cluster-wide (checked once at start).
WATCHED = [
    (verb, r)
    for r in ("namespaces", "serviceaccounts", "secrets", "configmaps")
    for verb in ("list", "watch")
]
# A triggered run that raised (the API server away) is tried again after this.
RETRY_SECONDS = 10
# Connections kept to the API server besides one per namespace job (--concurrency): the
# reconciles' reads and status work and the Event poster seldom call at once.
API_CONNECTIONS_BESIDE_JOBS = 4


class MissingRights(Exception):
    """The operator's identity may not list or watch what the index needs."""


@dataclass
class Runtime:
    config: OperatorConfig
    kube: Kube
    pools: Pools
    registries: Registries
    mint_cache: MintCache  # one mint per cloud identity, shared by all objects
    events: EventRecorder  # every Event about a registry object (the pull secrets' and charts')
    index: ClusterIndex | None = None  # once watching (watch)
    fanout: Fanout | None = None
    watchers: list[Watcher] = field(default_factory=list)
    dependents: Dependents = field(default_factory=Dependents)
    alarms: Alarms[RegistryRef] | None = None  # each object's next due time (create)
    # The exception type each object's triggered runs last failed with (logged once).
    run_failures: dict[RegistryRef, str] = field(default_factory=dict)
    # What follows each run of an object, outside its lock (the chart sync: charts.handlers).
    followers: list[Callable[[RegistryRef], None]] = field(default_factory=list)

    @classmethod
    def create(cls, config: OperatorConfig) -> Runtime:
        load_config()
        # Every namespace job may call at once, and a few others (reconciles, Events).
        kube = Kube(connections=config.concurrency + API_CONNECTIONS_BESIDE_JOBS)
        # Restart reuse: the operator's key (providers/seal.py), the same in every replica.
        cache = MintCache(sealer=seal.Sealer(seal.load_key(config.credentials_namespace, kube)))
        events = EventRecorder(kube.api)
        events.start()
        runtime = cls(config, kube, Pools(config.pools), Registries(), cache, events)
        runtime.alarms = Alarms(runtime.poke)
        # Served from the start (cli); Secrets counted once the index is there.
        metrics.watch_registries(lambda: runtime.registries.samples(runtime.managed_secrets))
        return runtime

    def managed_secrets(self, ref: RegistryRef) -> int:
        return self.fanout.managed(ref) if self.fanout is not None else 0

    # -- watching ------------------------------------------------------------------------------

    def watch(self) -> None:
        """The watch-fed index of namespaces, ServiceAccounts and our Secrets, the namespace
        jobs fed by it, and the watch on the credentials namespace. Raises MissingRights
        when the identity may not list and watch them: without that the index never
        completes and nothing would ever be written."""
        config = self.config
        missing = [f"{verb} {r}" for verb, r in WATCHED if not self.kube.may(verb, r)]
        if missing:
            raise MissingRights(
                f"ocireg may not {', '.join(missing)} cluster-wide: the pull secrets are "
                "written from watches of namespaces, ServiceAccounts and ocireg's Secrets; "
                "grant the ClusterRole in manifests/rbac/clusterrole.yaml (or the chart's)"
            )
        self.index = index = ClusterIndex()
        self.fanout = fanout = Fanout(self.kube, index, self.registries, config.concurrency)
        watching = Kube()  # its own connections: long watches never hold up writes

        def namespace_changed(_: str, name: str) -> None:
            fanout.changed(name)

        def in_namespace_changed(namespace: str, _: str) -> None:
            fanout.changed(namespace)

        def managed_secret_changed(namespace: str, name: str) -> None:
            fanout.changed(namespace)
            self.changed("Secret", namespace, name)  # one of ours another object reads

        def read_changed(kind: str) -> Any:
            def changed(namespace: str, name: str) -> None:
                self.changed(kind, namespace, name)

            return changed

        def version(body: Any) -> str:
            return str(body["metadata"].get("resourceVersion") or "")

        # Of the Secrets and ConfigMaps not ours, in every namespace, only the metadata and
        # of that only the resourceVersion: what registry objects read, never its data.
        secrets = Store("read-secrets", version, version_number)
        config_maps = Store("read-configmaps", version, version_number)

        def watcher(source: Any, store: Store[Any], changed: Any) -> Watcher:
            return Watcher(source, store, changed, timeout=config.watch_timeout)

        ours, theirs = ownership.MANAGED_SELECTOR, ownership.UNMANAGED_SELECTOR
        self.watchers = [
            watcher(watching.watch_source("namespaces"), index.namespaces, namespace_changed),
            watcher(watching.watch_source("serviceaccounts"), index.accounts, in_namespace_changed),
            watcher(
                watching.watch_source("secrets", label_selector=ours),
                index.secrets,
                managed_secret_changed,
            ),
            watcher(watching.metadata_source("secrets", theirs), secrets, read_changed("Secret")),
            watcher(
                watching.metadata_source("configmaps", theirs),
                config_maps,
                read_changed("ConfigMap"),
            ),
        ]
        for started in self.watchers:
            started.start()
        # kopf hands objects over once the startup handlers are done: a read Secret that
        # changes between an object's first run and these lists would otherwise go unseen.
        for store in (secrets, config_maps):
            if not store.synced.wait(SYNC_WAIT_SECONDS):
                log.warning("the %s watch has not listed after %ds", store.kind, SYNC_WAIT_SECONDS)

    def changed(self, kind: str, namespace: str, name: str) -> None:
        """Something registry objects may have read changed (a Secret, a ConfigMap, or a
        registry object named in `extends`): run the ones whose last run read it."""
        for ref in self.dependents.of(kind, namespace, name):
            tracked = self.registries.find(ref)
            if tracked is not None:
                tracked.changed = True
            self.poke(ref)

    def stop(self) -> None:
        if self.alarms is not None:
            self.alarms.stop()
        for watcher in self.watchers:
            watcher.stop.set()
        if self.fanout is not None:
            self.fanout.queue.stop()
        self.pools.stop()
        self.events.stop()  # after the pools: what their last runs posted goes out

    # -- the work the handlers hand to the pools -------------------------------------------

    def work(self, ref: RegistryRef, tracked: Tracked, body: dict[str, Any]) -> None:
        """One reconcile of one object: its status written if it changed (here, under the
        object's lock, whether kopf or a watch event started the run, so that every status
        write of an object is ordered: see update_status), its Events posted, then its
        followers told."""
        fanout = self.fanout
        if fanout is None:
            raise RuntimeError("reconciling before the watches started")
        started = time.monotonic()
        with tracked.lock:
            if tracked.deleted:
                return
            # Nothing it read changed since its last run (a watch event would have marked it,
            # and one arriving from now on runs it again): the resync needs no reads.
            known = None
            if not tracked.changed and tracked.spec and tracked.credential and tracked.tls:
                known = (tracked.spec, tracked.credential, tracked.tls)
            tracked.changed = False
            before = tracked.memory
            outcome = reconcile(
                self.kube,
                ref,
                body,
                self.config,
                tracked.memory,
                time.monotonic(),
                fanout.resync,
                self.mint_cache,
                lambda key: self.dependents.add(ref, key),
                known,
                copies=self.copy_of,  # restart reuse (providers/recall.py)
                quiet=lambda: fanout.quiet(ref),
            )
            tracked.memory = outcome.memory
            if outcome.reads is not None:
                self.dependents.record(ref, outcome.reads)
            if self.alarms is not None:
                self.alarms.set(ref, outcome.wake_in)
            if outcome.spec is not None or outcome.credential is not None:
                tracked.publish(
                    outcome.spec or tracked.spec, outcome.credential or tracked.credential
                )
            if outcome.tls is not None:
                tracked.tls = outcome.tls
            current = dict(body.get("status") or {})
            # Only the fields this loop owns are compared (and merge-patched): status.charts
            # belongs to the chart sync, and an unchanged status must cost no write.
            if outcome.status is not None and any(
                current.get(key) != value for key, value in outcome.status.items()
            ):
                try:
                    self.kube.patch_registry_status(ref, outcome.status)
                except Exception:
                    # Not written: the next run does it again, and not as a quiet resync,
                    # which would write nothing.
                    tracked.memory, tracked.resynced = before, None
                    raise
                body["status"] = merge_patch(current, outcome.status)
        for kind, reason, message in outcome.events:
            self.events.post(ref, kind, reason, message)
        if outcome.status is not None:  # the tick did work
            result = "success" if outcome.credential is not None else "failure"
            metrics.RECONCILES.labels(ref.kind, result).inc()
            metrics.RECONCILE_SECONDS.labels(ref.kind).observe(time.monotonic() - started)
            tracked.note_status(outcome.status)
        elif not tracked.status_noted:  # after a restart: what the object says until a run writes
            tracked.note_status(current)
        for follow in self.followers:
            follow(ref)
        if outcome.status is not None:  # it may have written thousands of Secrets: what
            trim_soon()  # they used goes back (a quiet resync used next to nothing)

    def update_status(
        self,
        ref: RegistryRef,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> bool:
        """Merge-patch what ``change`` makes of the object's status as this process last
        wrote or read it, for work besides the reconcile (the chart sync). Under the
        object's lock: a reconcile's write and this one never interleave, so neither puts
        back what the other just replaced (both write the whole conditions list). False:
        the object is gone or not handed over yet."""
        tracked = self.registries.find(ref)
        if tracked is None:
            return False
        with tracked.lock:
            body = tracked.body
            if tracked.deleted or body is None:
                return False
            current = dict(body.get("status") or {})
            fields = change(current)
            if fields:
                self.kube.patch_registry_status(ref, fields)
                body["status"] = merge_patch(current, fields)
        return True

    def copy_of(self, ref: RegistryRef, name: str) -> tuple[str, dict[str, Any]] | None:
        """Restart reuse (providers/recall.py): one copy of ``ref``'s Secret ``name`` as the
        API has it, from a namespace whose copy most of its copies agree with (the index)."""
        index = self.index
        if index is None or not index.wait_synced(SYNC_WAIT_SECONDS):
            return None
        if ref.namespaced:  # it writes into its own namespace only
            own = ref.namespace or ""
            held = [(own, name, s) for s in [index.secrets.get(own, name)] if s is not None]
        else:
            held = [(n, k, s) for n, k, s in index.secrets.scan() if k == name]
        found = [(n, dict(s.labels), dict(s.annotations), s.digest) for n, _, s in held]
        namespace = recall.choose_copy(ref, found)
        body = None if namespace is None else self.kube.read_secret_body(namespace, name)
        return None if namespace is None or body is None else (namespace, body)

    def poke(self, ref: RegistryRef) -> None:
        """Queue a triggered run of `ref` on its pool (a watch event, its alarm); pokes
        that arrive before it starts share it. Its errors are logged and it is tried again
        after RETRY_SECONDS."""
        future = self.pools.reconcile(ref, lambda: self._poked(ref), coalesce=True)
        retry_on_failure(
            future,
            ref,
            "triggered reconcile",
            self.run_failures,
            self.alarms,
            RETRY_SECONDS,
            lambda: self.registries.find(ref) is not None,
        )

    def _poked(self, ref: RegistryRef) -> None:
        """Run now, outside a kopf handler."""
        tracked = self.registries.find(ref)
        if tracked is None or tracked.body is None:
            return  # kopf has not handed it over yet; its first handler runs soon anyway
        self.work(ref, tracked, tracked.body)

    def delete(self, ref: RegistryRef) -> None:
        tracked = self.registries.forget(ref) or Tracked()
        with tracked.lock:
            # Nothing may re-add a Secret or reference while (or after) we remove them:
            # no job starts writing for it from now on, and the ones writing finish first.
            tracked.deleted = True
            self.dependents.forget(ref)  # under the lock: no run records them again
            if self.alarms is not None:
                self.alarms.cancel(ref)
            tracked.publish(None, None)
            if self.fanout is not None:
                self.fanout.queue.barrier()
            cleanup(self.kube, ref)


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``target`` as a JSON merge patch (RFC 7386) of ``patch`` leaves it: None removes a
    key, a mapping merges into a mapping, anything else replaces. What the API server makes
    of our status patches, so the copy kept here compares equal to the object."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            below = merged.get(key)
            merged[key] = merge_patch(below if isinstance(below, Mapping) else {}, value)
        else:
            merged[key] = value
    return merged


def runtime(memo: Mapping[str, Any]) -> Runtime:
    """The handlers' Runtime, made by pullsecrets.handlers.configure at start."""
    found = memo.get("runtime")
    if not isinstance(found, Runtime):
        raise RuntimeError("the operator's runtime is not made yet")
    return found
