"""kopf wiring only: settings, watches, timers. Decisions live in plan and schedule, the work
in reconcile, I/O in kube."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import metrics, plan, schedule
from .config import OperatorConfig
from .credential import Credential
from .kube import Kube, load_config
from .models.spec import RegistrySpec
from .providers.cache import MintCache
from .reconcile import adding_all, cleanup, reconcile, remove_from_namespace, sync_namespace
from .registry import TLSOptions

log = logging.getLogger(__name__)
GROUP = "ocireg.dev"
KINDS = {"ociregistries": "OCIRegistry", "clusterociregistries": "ClusterOCIRegistry"}
# Every registry object ticks this often. A tick re-reads the referenced Secrets and does
# real work only when they changed or something is due (see schedule.work_due), so a changed
# password reaches every copy within about this time.
TICK_SECONDS = 10


@dataclass
class Tracked:
    """What the operator remembers about one registry object between ticks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    memory: schedule.Memory = field(default_factory=schedule.Memory)
    spec: RegistrySpec | None = None
    credential: Credential | None = None
    placed: set[str] = field(default_factory=set)  # namespaces holding our Secrets
    tls: TLSOptions | None = None  # how to connect, for other work on the same registry
    # Namespace and ServiceAccount work that arrived while `lock` was held (a reconcile can
    # hold it for seconds at scale): the holder runs it before letting go, so events never
    # wait behind a resync. Keyed, so repeated events for one object collapse into one job.
    deferred: dict[tuple[str, ...], Callable[[], None]] = field(default_factory=dict)
    mutex: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        """Run deferred jobs (holding ``lock``), then release it."""
        while True:
            while True:
                with self.mutex:
                    jobs = list(self.deferred.values())
                    self.deferred.clear()
                if not jobs:
                    break
                for job in jobs:
                    try:
                        job()
                    except Exception:  # one failed namespace must not strand the others
                        log.exception("deferred namespace work failed")
            self.lock.release()
            # A job deferred between our last look and the release would wait for the next
            # holder: take the lock back if nobody else did, and run it.
            with self.mutex:
                waiting = bool(self.deferred)
            if not (waiting and self.lock.acquire(blocking=False)):
                return

    def run_or_defer(self, key: tuple[str, ...], job: Callable[[], None]) -> None:
        """Run ``job`` under ``lock`` now if it is free, else leave it to the holder."""
        if self.lock.acquire(blocking=False):
            try:
                job()
            finally:
                self.release()
            return
        with self.mutex:
            self.deferred[key] = job
        if self.lock.acquire(blocking=False):  # the holder may have just let go
            self.release()


class Registries:
    """The registry objects this operator serves, for the namespace and ServiceAccount
    watches to consult without calling the API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracked: dict[plan.RegistryRef, Tracked] = {}

    def get(self, ref: plan.RegistryRef) -> Tracked:
        with self._lock:
            return self._tracked.setdefault(ref, Tracked())

    def forget(self, ref: plan.RegistryRef) -> Tracked | None:
        with self._lock:
            return self._tracked.pop(ref, None)

    def samples(self) -> list[metrics.RegistrySample]:
        """Per-object figures for the metrics endpoint."""
        with self._lock:
            items = list(self._tracked.items())
        out = []
        for ref, t in items:
            expires = t.credential.expires_at if t.credential else None
            formats = len(t.spec.effective_targets.formats) if t.spec else 0
            out.append(
                (
                    ref.kind,
                    ref.namespace or "",
                    ref.name,
                    metrics.seconds_until(expires),
                    len(t.placed) * formats,
                )
            )
        return out

    def ready(self) -> list[tuple[plan.RegistryRef, Tracked]]:
        """Registries with verified credentials and a pull secret to place."""
        with self._lock:
            items = list(self._tracked.items())
        return [
            (ref, t)
            for ref, t in items
            if t.spec is not None and t.credential is not None and not t.credential.anonymous
        ]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own annotation and finalizer names, so nothing of ours looks like another operator's.
    settings.persistence.finalizer = f"{GROUP}/cleanup"
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
    load_config()
    memo.kube = Kube()
    memo.registries = Registries()
    memo.mint_cache = MintCache()  # one mint per cloud identity, shared by all objects
    metrics.watch_registries(memo.registries.samples)
    if memo.config.metrics_port:
        metrics.serve(memo.config.metrics_port, memo.config.metrics_address)


def _ref(body: kopf.Body, plural: str) -> plan.RegistryRef:
    meta = body["metadata"]
    return plan.RegistryRef(KINDS[plural], meta["name"], meta.get("namespace"), meta.get("uid"))


def _tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, plural: str) -> None:
    ref = _ref(body, plural)
    tracked = memo.registries.get(ref)
    started = time.monotonic()
    tracked.lock.acquire()
    try:
        outcome = reconcile(
            memo.kube,
            ref,
            dict(body),
            memo.config,
            tracked.memory,
            time.monotonic(),
            memo.mint_cache,
        )
        tracked.memory = outcome.memory
        if outcome.spec is not None:
            tracked.spec = outcome.spec
        if outcome.credential is not None:
            tracked.credential = outcome.credential
        if outcome.placed is not None:
            tracked.placed = outcome.placed
        if outcome.tls is not None:
            tracked.tls = outcome.tls
    finally:
        tracked.release()
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
        patch["status"] = outcome.status
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


for _plural in KINDS:
    # backoff: an exception (the API server away) is retried at the next tick, not kopf's
    # default of a minute later; problems a user must fix never raise (they are conditions).
    @kopf.on.resume(GROUP, _plural, backoff=TICK_SECONDS)
    @kopf.on.create(GROUP, _plural, backoff=TICK_SECONDS)
    @kopf.on.update(GROUP, _plural, field="spec", backoff=TICK_SECONDS)
    def on_change(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        _tick(body, patch, memo, _plural)

    @kopf.timer(
        GROUP, _plural, interval=TICK_SECONDS, initial_delay=TICK_SECONDS, backoff=TICK_SECONDS
    )
    def tick(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        _tick(body, patch, memo, _plural)

    @kopf.on.delete(GROUP, _plural)
    def on_delete(body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any) -> None:
        ref = _ref(body, _plural)
        tracked = memo.registries.forget(ref) or Tracked()
        tracked.lock.acquire()
        try:
            # Nothing may re-add a reference while (or after) we remove them.
            tracked.spec, tracked.credential = None, None
            tracked.placed.clear()
            cleanup(memo.kube, ref)
        finally:
            tracked.release()


# Namespace events fan out to every registry at once: a new namespace waits for the slowest
# registry, not for the sum of them.
_NAMESPACE_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ocireg-ns")


def _namespace_changed(
    memo: kopf.Memo,
    ref: plan.RegistryRef,
    tracked: Tracked,
    name: str,
    labels: dict[str, str],
    phase: str,
) -> None:
    """Runs holding tracked.lock (directly or deferred)."""
    if tracked.spec is None or tracked.credential is None:
        return
    targets = tracked.spec.effective_targets
    selected = plan.namespace_selected(ref, targets, name, labels, phase)
    if selected and name not in tracked.placed:
        result = sync_namespace(memo.kube, ref, targets, tracked.credential, name)
        if result.failure is None:
            tracked.placed.add(name)
    elif not selected and name in tracked.placed:
        if phase == "Active":  # a terminating namespace takes our Secrets with it
            remove_from_namespace(memo.kube, ref, name)
        tracked.placed.discard(name)


@kopf.on.event("namespaces")
def on_namespace(event: dict, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new or relabelled namespace gets (or loses) the pull secrets at once."""
    if "registries" not in memo:
        return
    meta = body["metadata"]
    name, labels = meta["name"], dict(meta.get("labels") or {})
    phase = (body.get("status") or {}).get("phase", "Active")
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        phase = "Terminating"
    futures = []
    for ref, tracked in memo.registries.ready():
        if ref.namespaced and ref.namespace != name:
            continue

        def job(ref: plan.RegistryRef = ref, tracked: Tracked = tracked) -> None:
            _namespace_changed(memo, ref, tracked, name, labels, phase)

        futures.append(_NAMESPACE_POOL.submit(tracked.run_or_defer, ("namespace", name), job))
    for future in futures:
        future.result()  # errors surface to kopf, which logs them


@kopf.on.event("serviceaccounts")
def on_service_account(event: dict, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """ServiceAccounts created after the pull secret (like `default` in a new namespace),
    or whose list of pull secrets was replaced without ours. The registries that are free
    add their references in one patch; a busy one adds its own when it is done."""
    # type None: listed (at start, or again after a watch's 410 Gone), where a change made
    # while the watch was down shows up; handled like ADDED.
    if event.get("type") == "DELETED" or "registries" not in memo:
        return
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    account = dict(body)
    candidates = sorted(
        ((ref, t) for ref, t in memo.registries.ready() if namespace in t.placed),
        key=lambda item: (item[0].kind, item[0].namespace or "", item[0].name),
    )
    held: list[tuple[plan.RegistryRef, Tracked]] = []
    busy: list[tuple[plan.RegistryRef, Tracked]] = []
    for ref, tracked in candidates:  # one order, and never waiting: no deadlock
        (held if tracked.lock.acquire(blocking=False) else busy).append((ref, tracked))
    try:
        wanted = [n for n in (_wanted(ref, t, namespace, name) for ref, t in held) if n]
        missing = [n for n in wanted if plan.service_account_patch(account, n, want=True)]
        if missing:
            memo.kube.update_service_account(namespace, account, adding_all(missing))
    finally:
        for _, tracked in held:
            tracked.release()
    for ref, tracked in busy:

        def job(ref: plan.RegistryRef = ref, tracked: Tracked = tracked) -> None:
            secret_name = _wanted(ref, tracked, namespace, name)
            if secret_name and plan.service_account_patch(account, secret_name, want=True):
                memo.kube.update_service_account(namespace, account, adding_all([secret_name]))

        tracked.run_or_defer(("serviceaccount", namespace, name), job)


def _wanted(ref: plan.RegistryRef, tracked: Tracked, namespace: str, account: str) -> str | None:
    """The pull secret this registry wants referenced from the ServiceAccount, if any
    (called holding tracked.lock)."""
    if namespace not in tracked.placed or tracked.spec is None:
        return None
    targets = tracked.spec.effective_targets
    if not plan.service_account_selected(targets, account):
        return None
    return plan.secret_names(targets, ref.name)[plan.Format.dockerconfigjson]


from . import chart_handlers  # noqa: E402, F401 - registers the chart sync handlers
