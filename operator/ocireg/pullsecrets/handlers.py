"""kopf wiring only: operator settings, the startup and cleanup of the Runtime, and the
handlers of the two kinds, each of which hands its object's work to the Runtime on that
object's pool. Decisions live in plan and schedule, the work in reconcile and fanout, I/O in
kube."""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections.abc import Callable
from typing import Any, TypeVar

import kopf

from ocireg.api.names import FINALIZER, GROUP, KINDS
from ocireg.api.ownership import RegistryRef
from ocireg.pullsecrets.runtime import MissingRights, Runtime, runtime
from ocireg.settings import OperatorConfig

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
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    memo.config = config  # the admission webhook reads its part from here
    # The API server ends each watch request after this; kopf resumes from the last seen
    # resourceVersion (or re-lists on 410 Gone). Under typical load-balancer idle timeouts.
    settings.watching.server_timeout = config.watch_timeout
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.posting.level = 30  # our own Events are posted explicitly; kopf's only warnings
    # Every handler that talks to a registry is async and runs its work on the Runtime's
    # pools (a tenant namespace holds at most its share of them); kopf's executor runs only
    # the sync startup and cleanup handlers, so its size is set, not left to min(32, cpus+4).
    settings.execution.max_workers = config.pools.kopf
    memo.runtime = Runtime.create(config)


@kopf.on.startup()
def watch_cluster(memo: kopf.Memo, **_: Any) -> None:
    try:
        runtime(memo).watch()
    except MissingRights as error:
        raise kopf.PermanentError(str(error)) from None


@kopf.on.cleanup()
def stop_watching(memo: kopf.Memo, **_: Any) -> None:
    if "runtime" in memo:
        runtime(memo).stop()


def _ref(body: kopf.Body, plural: str) -> RegistryRef:
    meta = body["metadata"]
    return RegistryRef(KINDS[plural], meta["name"], meta.get("namespace"), meta.get("uid"))


async def _on_pool(memo: kopf.Memo, ref: RegistryRef, run: Callable[[], T]) -> T:
    """Run one object's blocking work on its pool (one job per object at a time, a bounded
    share per tenant namespace) and wait for it without holding any kopf thread."""
    return await asyncio.wrap_future(runtime(memo).pools.reconcile(ref, run))


async def _tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, plural: str) -> None:
    ref, running = _ref(body, plural), runtime(memo)
    tracked = running.registries.get(ref)
    seen = tracked.body = copy.deepcopy(dict(body))
    tracked.context = contextvars.copy_context()  # kopf's, for Events from triggered runs
    status, events = await _on_pool(memo, ref, lambda: running.work(ref, tracked, seen))
    if status is not None:
        patch["status"] = status
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message)


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
        await _on_pool(memo, ref, lambda: runtime(memo).delete(ref))
