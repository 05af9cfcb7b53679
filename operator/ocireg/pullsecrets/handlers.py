"""kopf wiring only: operator settings, the startup and cleanup of the Runtime, and the
handlers of the two kinds, each of which hands its object's work to the Runtime on that
object's pool. Decisions live in plan and schedule, the work in reconcile and fanout, I/O in
kube."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import kopf

from ocireg.api.names import (
    ANNOTATION_FLUX_RECONCILE,
    ANNOTATION_REFRESH,
    FINALIZER,
    GROUP,
    KINDS,
)
from ocireg.api.ownership import RegistryRef
from ocireg.pullsecrets.runtime import RETRY_SECONDS, MissingRights, Runtime, runtime
from ocireg.settings import OperatorConfig

T = TypeVar("T")
REFRESH_ANNOTATIONS = (ANNOTATION_REFRESH, ANNOTATION_FLUX_RECONCILE)  # what a run reads of them
# kopf's own requests (its watches, status patches, Events) share one aiohttp session, which
# kopf makes without a connection limit: a burst of handlers (a thousand tenant objects created
# at once) opened a TLS connection each and kept them, and asyncio holds a 256 KiB read buffer
# per TLS connection (about 190 KB per tenant object, measured). At most this many for
# requests, besides one per watch; a request beyond them waits for one to be free.
API_CONNECTIONS = 16
# kopf's watches besides those of the two kinds: its observers of CRDs and namespaces.
KOPF_OBSERVERS = 2


def connection_limit(namespaces: tuple[str, ...]) -> int:
    """The session's connection limit: API_CONNECTIONS and one per watch kopf may hold open
    (each kind cluster-wide or in each namespace served), which a request must never wait
    behind. 0, no limit, where the namespaces are patterns: kopf watches as many as match."""
    if any(c in name for name in namespaces for c in "*?[!"):
        return 0
    return API_CONNECTIONS + len(KINDS) * max(1, len(namespaces)) + KOPF_OBSERVERS


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (the client's in-cluster or kubeconfig configuration), with the
    session built as kopf builds it but for the connection limit."""
    info = await asyncio.to_thread(functools.partial(kopf.login_via_client, **kwargs))
    if info is None:
        return None
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    limit = connection_limit(config.namespaces)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
    )


class ProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations under our prefix. Its clear() drops every annotation of
    that prefix from the essence kopf compares to find changes, which would hide the
    refresh request (ocireg.dev/refresh-requested-at) from the handler that waits for it."""

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        found: Any = essence
        requested = ((found.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REFRESH)
        cleared: Any = super().clear(essence=essence)
        if requested is not None:
            metadata = cleared.setdefault("metadata", {})
            metadata.setdefault("annotations", {})[ANNOTATION_REFRESH] = requested
        result: kopf.BodyEssence = cleared
        return result


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own annotation and finalizer names, so nothing of ours looks like another operator's.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = ProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    memo.config = config  # the admission webhook reads its part from here
    # The API server ends each watch request after this; kopf resumes from the last seen
    # resourceVersion (or re-lists on 410 Gone). Under typical load-balancer idle timeouts.
    settings.watching.server_timeout = config.watch_timeout
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    # Events are ours alone (kube.events: where kubectl describe finds them for both kinds,
    # from `ocireg`, counted); kopf would post its log lines about an object as Events too.
    settings.posting.enabled = False
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


def kept(body: kopf.Body) -> dict[str, Any]:
    """What a run needs of the object as kopf last handed it over: what reconcile reads
    (generation, spec, status, the rotate-now annotations) and what an Event names
    (apiVersion, kind, name, namespace, uid). A copy: kopf changes its body in place. Not the
    rest: its managedFields and kopf's annotations were most of a whole body's copy, kept for
    every object."""
    meta = body["metadata"]
    fields = ("name", "namespace", "uid", "generation")
    annotations = meta.get("annotations") or {}
    requests = {key: annotations[key] for key in REFRESH_ANNOTATIONS if key in annotations}
    return copy.deepcopy(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": {
                **{key: meta[key] for key in fields if key in meta},
                **({"annotations": requests} if requests else {}),
            },
            "spec": body.get("spec") or {},
            "status": body.get("status") or {},
        }
    )


async def _run(body: kopf.Body, memo: kopf.Memo, plural: str) -> None:
    ref, running = _ref(body, plural), runtime(memo)
    tracked = running.registries.get(ref)
    seen = tracked.body = kept(body)
    tracked.changed = True  # created, spec changed or resumed: read everything again
    # The run writes the object's status itself (Runtime.work), as runs outside kopf do.
    await _on_pool(memo, ref, lambda: running.work(ref, tracked, seen))
    # Objects that extend this one read it: their effective spec may have changed.
    running.changed(ref.kind, ref.namespace or "", ref.name)


for _plural in KINDS:
    # backoff: a handler that raised (the API server away) is retried after RETRY_SECONDS,
    # as a run outside a handler is, not kopf's default minute. No timer: after these, an
    # object runs when what it read changes and when it is next due (Runtime: the metadata
    # watches and Alarms).
    @kopf.on.resume(GROUP, _plural, backoff=RETRY_SECONDS)
    @kopf.on.create(GROUP, _plural, backoff=RETRY_SECONDS)
    @kopf.on.update(GROUP, _plural, field="spec", backoff=RETRY_SECONDS)
    async def on_change(body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any) -> None:
        await _run(body, memo, _plural)

    # Rotate now (schedule.refresh_requests): kopf's diff leaves out annotations under its own
    # prefix (ours), so each is named as a field, which keeps it in the diff. The run itself
    # decides whether a request is pending: the same value again does nothing.
    @kopf.on.update(
        GROUP, _plural, field=("metadata", "annotations", ANNOTATION_REFRESH), backoff=RETRY_SECONDS
    )
    @kopf.on.update(
        GROUP,
        _plural,
        field=("metadata", "annotations", ANNOTATION_FLUX_RECONCILE),
        backoff=RETRY_SECONDS,
    )
    async def on_refresh_request(
        body: kopf.Body,
        memo: kopf.Memo,
        new: Any,
        _plural: str = _plural,
        **_: Any,
    ) -> None:
        if new:  # removing the annotation asks for nothing
            await _run(body, memo, _plural)

    @kopf.on.delete(GROUP, _plural)
    async def on_delete(body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any) -> None:
        ref, running = _ref(body, _plural), runtime(memo)
        # On the object's own pool, after any run of it: it waits behind its own work only.
        await _on_pool(memo, ref, lambda: running.delete(ref))
        running.changed(ref.kind, ref.namespace or "", ref.name)  # its extenders say so
