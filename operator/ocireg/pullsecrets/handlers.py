"""kopf wiring only: settings, watches, timers. Decisions live in plan and schedule, the work
in reconcile, I/O in kube."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import kopf

from ocireg import metrics
from ocireg.api import ownership
from ocireg.api.names import FINALIZER, GROUP, KINDS
from ocireg.kube.cache import Store, Watcher
from ocireg.kube.client import Kube, load_config
from ocireg.providers.cache import MintCache
from ocireg.pullsecrets import plan
from ocireg.pullsecrets.fanout import Fanout, Registries, Tracked
from ocireg.pullsecrets.index import ClusterIndex
from ocireg.pullsecrets.reconcile import cleanup, reconcile
from ocireg.settings import OperatorConfig
from ocireg.workers import Pools

log = logging.getLogger(__name__)
T = TypeVar("T")
# Every registry object ticks this often. A tick re-reads the referenced Secrets and does
# real work only when they changed or something is due (see schedule.work_due), so a changed
# password reaches every copy within about this time.
TICK_SECONDS = 10


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own annotation and finalizer names, so nothing of ours looks like another operator's.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # The API server ends each watch request after this; kopf resumes from the last seen
    # resourceVersion (or re-lists on 410 Gone). Under typical load-balancer idle timeouts.
    if "config" not in memo:
        memo.config = OperatorConfig()
    settings.watching.server_timeout = memo.config.watch_timeout
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.posting.level = 30  # our own Events are posted explicitly; kopf's only warnings
    # Every handler that talks to a registry is async and runs its work on memo.pools (a
    # tenant namespace holds at most its share of them); kopf's executor runs only the sync
    # startup and cleanup handlers, so its size is set, not left to min(32, cpus + 4).
    settings.execution.max_workers = memo.config.pools.kopf
    memo.pools = Pools(memo.config.pools)
    load_config()
    memo.kube = Kube()
    memo.registries = Registries()
    memo.mint_cache = MintCache()  # one mint per cloud identity, shared by all objects
    metrics.watch_registries(memo.registries.samples)
    if memo.config.metrics_port:
        metrics.serve(memo.config.metrics_port, memo.config.metrics_address)


# What the watch-fed index lists and watches, cluster-wide (checked once at start).
WATCHED = [
    (verb, r) for r in ("namespaces", "serviceaccounts", "secrets") for verb in ("list", "watch")
]


@kopf.on.startup()
def watch_cluster(memo: kopf.Memo, **_: Any) -> None:
    """The watch-fed index of namespaces, ServiceAccounts and our Secrets, the namespace
    jobs fed by it, and the watch on the credentials namespace."""
    config: OperatorConfig = memo.config
    missing = [
        f"{verb} {resource}" for verb, resource in WATCHED if not memo.kube.may(verb, resource)
    ]
    if missing:
        # Without them the index never completes and nothing would ever be written.
        raise kopf.PermanentError(
            f"ocireg may not {', '.join(missing)} cluster-wide: the pull secrets are written "
            "from watches of namespaces, ServiceAccounts and ocireg's Secrets; grant the "
            "ClusterRole in manifests/rbac/clusterrole.yaml (or the chart's)"
        )
    memo.index = index = ClusterIndex()
    memo.fanout = fanout = Fanout(memo.kube, index, memo.registries, config.concurrency)
    watching = Kube()  # its own connections: long watches never hold up writes
    ours = ownership.MANAGED_SELECTOR

    def namespace_changed(_: str, name: str) -> None:
        fanout.changed(name)

    def in_namespace_changed(namespace: str, _: str) -> None:
        fanout.changed(namespace)

    def credentials_changed(namespace: str, _: str) -> None:
        for ref in memo.registries.refs():
            if not ref.namespaced or ref.namespace == namespace:
                _poke(memo, ref)

    # Of the credentials namespace's Secrets only the resourceVersions, and not our own.
    credentials = Store("credentials", lambda body: body["metadata"]["resourceVersion"])
    theirs = ownership.UNMANAGED_SELECTOR

    def watcher(source: Any, store: Store[Any], changed: Any) -> Watcher:
        return Watcher(source, store, changed, timeout=config.watch_timeout)

    memo.watchers = [
        watcher(watching.watch_source("namespaces"), index.namespaces, namespace_changed),
        watcher(watching.watch_source("serviceaccounts"), index.accounts, in_namespace_changed),
        watcher(
            watching.watch_source("secrets", label_selector=ours),
            index.secrets,
            in_namespace_changed,
        ),
        watcher(
            watching.watch_source(
                "secrets", namespace=config.credentials_namespace, label_selector=theirs
            ),
            credentials,
            credentials_changed,
        ),
    ]
    for started in memo.watchers:
        started.start()


@kopf.on.cleanup()
def stop_watching(memo: kopf.Memo, **_: Any) -> None:
    for watcher in memo.get("watchers") or []:
        watcher.stop.set()
    if memo.get("fanout"):
        memo.fanout.queue.stop()
    if memo.get("pools"):
        memo.pools.stop()


def _ref(body: kopf.Body, plural: str) -> plan.RegistryRef:
    meta = body["metadata"]
    return plan.RegistryRef(KINDS[plural], meta["name"], meta.get("namespace"), meta.get("uid"))


def _work(
    ref: plan.RegistryRef, tracked: Tracked, body: dict[str, Any], memo: kopf.Memo
) -> tuple[dict[str, Any] | None, list[tuple[str, str, str]]]:
    """One reconcile of one object: the status fields to merge (None: unchanged) and the
    Events to post."""
    started = time.monotonic()
    with tracked.lock:
        if tracked.deleted:
            return None, []
        outcome = reconcile(
            memo.kube,
            ref,
            body,
            memo.config,
            tracked.memory,
            time.monotonic(),
            memo.fanout.resync,
            memo.mint_cache,
        )
        tracked.memory = outcome.memory
        if outcome.spec is not None or outcome.credential is not None:
            tracked.publish(outcome.spec or tracked.spec, outcome.credential or tracked.credential)
        if outcome.placed is not None:
            with tracked.mutex:
                tracked.placed = outcome.placed
        if outcome.tls is not None:
            tracked.tls = outcome.tls
    if outcome.status is not None:  # the tick did work
        result = "success" if outcome.credential is not None else "failure"
        metrics.RECONCILES.labels(ref.kind, result).inc()
        metrics.RECONCILE_SECONDS.labels(ref.kind).observe(time.monotonic() - started)
    current = dict(body.get("status") or {})
    # Only the fields this loop owns are compared (and merge-patched): status.charts belongs
    # to the chart sync, and an unchanged status must cost no write.
    if outcome.status is not None and any(
        current.get(key) != value for key, value in outcome.status.items()
    ):
        return outcome.status, outcome.events
    return None, outcome.events


async def _on_pool(memo: kopf.Memo, ref: plan.RegistryRef, run: Callable[[], T]) -> T:
    """Run one object's blocking work on its pool (one job per object at a time, a bounded
    share per tenant namespace) and wait for it without holding any kopf thread."""
    pools: Pools = memo.pools
    return await asyncio.wrap_future(pools.reconcile(ref, run))


async def _tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, plural: str) -> None:
    ref = _ref(body, plural)
    tracked = memo.registries.get(ref)
    seen = tracked.body = copy.deepcopy(dict(body))
    tracked.context = contextvars.copy_context()  # kopf's, for Events from triggered runs
    status, events = await _on_pool(memo, ref, lambda: _work(ref, tracked, seen, memo))
    if status is not None:
        patch["status"] = status
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _poke(memo: kopf.Memo, ref: plan.RegistryRef) -> None:
    """Queue a triggered run of `ref` on its pool; pokes that arrive before it starts share
    it. Its errors are logged; the next tick retries."""
    pools: Pools = memo.pools
    future = pools.reconcile(ref, lambda: _poked(memo, ref), coalesce=True)

    def failed(done: Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if error is not None:
            log.warning("triggered reconcile of %s failed: %s", ref.display, type(error).__name__)

    future.add_done_callback(failed)


def _poked(memo: kopf.Memo, ref: plan.RegistryRef) -> None:
    """A Secret in the credentials namespace changed: reconcile now rather than at the next
    tick, writing the status (which kopf would write after a tick) ourselves."""
    tracked = memo.registries.find(ref)
    if tracked is None or tracked.body is None:
        return  # kopf has not handed it over yet; its first handler runs soon anyway
    body = tracked.body
    status, events = _work(ref, tracked, body, memo)
    if status is not None:
        memo.kube.patch_registry_status(ref, status)
        body["status"] = {**(body.get("status") or {}), **status}
    for kind, reason, message in events:
        if tracked.context is not None:
            tracked.context.copy().run(kopf.event, body, type=kind, reason=reason, message=message)


def _delete(memo: kopf.Memo, ref: plan.RegistryRef) -> None:
    tracked = memo.registries.forget(ref) or Tracked()
    with tracked.lock:
        # Nothing may re-add a Secret or reference while (or after) we remove them:
        # no job starts writing for it from now on, and the ones writing finish first.
        tracked.deleted = True
        tracked.publish(None, None)
        with tracked.mutex:
            tracked.placed.clear()
        if "fanout" in memo:
            memo.fanout.queue.barrier()
        cleanup(memo.kube, ref)


for _plural in KINDS:
    # backoff: an exception (the API server away) is retried at the next tick, not kopf's
    # default of a minute later; problems a user must fix never raise (they are conditions).
    @kopf.on.resume(GROUP, _plural, backoff=TICK_SECONDS)
    @kopf.on.create(GROUP, _plural, backoff=TICK_SECONDS)
    @kopf.on.update(GROUP, _plural, field="spec", backoff=TICK_SECONDS)
    async def on_change(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        await _tick(body, patch, memo, _plural)

    @kopf.timer(
        GROUP, _plural, interval=TICK_SECONDS, initial_delay=TICK_SECONDS, backoff=TICK_SECONDS
    )
    async def tick(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        await _tick(body, patch, memo, _plural)

    @kopf.on.delete(GROUP, _plural)
    async def on_delete(body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any) -> None:
        ref = _ref(body, _plural)
        # On the object's own pool, after any run of it: it waits behind its own work only.
        await _on_pool(memo, ref, lambda: _delete(memo, ref))
