"""kopf wiring only: settings, watches, timers. Decisions live in plan and schedule, the work
in reconcile, I/O in kube."""

from __future__ import annotations

import contextlib
import threading
import time
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
    # Re-establish watches well before typical load-balancer idle timeouts close them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = 30  # our own Events are posted explicitly; kopf's only warnings
    if "config" not in memo:
        memo.config = OperatorConfig()
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
    with tracked.lock:
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

    @kopf.on.resume(GROUP, _plural)
    @kopf.on.create(GROUP, _plural)
    @kopf.on.update(GROUP, _plural, field="spec")
    def on_change(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        _tick(body, patch, memo, _plural)

    @kopf.timer(GROUP, _plural, interval=TICK_SECONDS, initial_delay=TICK_SECONDS)
    def tick(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        _tick(body, patch, memo, _plural)

    @kopf.on.delete(GROUP, _plural)
    def on_delete(body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any) -> None:
        ref = _ref(body, _plural)
        tracked = memo.registries.forget(ref) or Tracked()
        with tracked.lock:
            # Nothing may re-add a reference while (or after) we remove them.
            tracked.spec, tracked.credential = None, None
            tracked.placed.clear()
            cleanup(memo.kube, ref)


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
    with tracked.lock:
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
    name, labels = meta["name"], meta.get("labels") or {}
    phase = (body.get("status") or {}).get("phase", "Active")
    if event.get("type") == "DELETED" or meta.get("deletionTimestamp"):
        phase = "Terminating"
    work = [
        (ref, tracked)
        for ref, tracked in memo.registries.ready()
        if not (ref.namespaced and ref.namespace != name)
    ]
    futures = [
        _NAMESPACE_POOL.submit(_namespace_changed, memo, ref, tracked, name, labels, phase)
        for ref, tracked in work
    ]
    for future in futures:
        future.result()  # errors surface to kopf, which logs them


@kopf.on.event("serviceaccounts")
def on_service_account(event: dict, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """ServiceAccounts created after the pull secret (like `default` in a new namespace),
    or whose list of pull secrets was replaced without ours. All registries' references go
    in one patch."""
    if event.get("type") not in ("ADDED", "MODIFIED") or "registries" not in memo:
        return
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    candidates = sorted(
        ((ref, t) for ref, t in memo.registries.ready() if namespace in t.placed),
        key=lambda item: (item[0].kind, item[0].namespace or "", item[0].name),
    )
    if not candidates:
        return
    # Every involved registry's lock, in one order (no deadlock), so no removal can run
    # between deciding and patching: it would otherwise be undone.
    with contextlib.ExitStack() as locks:
        wanted = []
        for ref, tracked in candidates:
            locks.enter_context(tracked.lock)
            if namespace not in tracked.placed or tracked.spec is None:
                continue
            targets = tracked.spec.effective_targets
            if plan.service_account_selected(targets, name):
                wanted.append(plan.secret_names(targets, ref.name)[plan.Format.dockerconfigjson])
        missing = [n for n in wanted if plan.service_account_patch(dict(body), n, want=True)]
        if missing:
            memo.kube.update_service_account(namespace, dict(body), adding_all(missing))


from . import chart_handlers  # noqa: E402, F401 - registers the chart sync handlers
