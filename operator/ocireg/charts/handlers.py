"""The Helm chart sync (spec.charts) of each registry object, scheduled by ocireg itself
(`ChartScheduler`: after each run of the object and at its next due time, no kopf timer):
it reads the registry when the sync is due, writes the index ConfigMap, status.charts and
the ChartsSynced condition, and posts Events for new versions.

The registry walk runs on the chart pools (workers.py: one for tenant objects, one for cluster
objects, a tenant namespace holding at most its share), so a slow registry never holds the
reconcile workers, nor every chart worker. The object's spec, credential and TLS options
come from what the reconcile verified (the Runtime's registries): no Secret is read here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import kopf

from ocireg.api.conditions import same_condition
from ocireg.api.credential import Credential
from ocireg.api.durations import parse_duration
from ocireg.api.errors import ReconcileError
from ocireg.api.names import GROUP
from ocireg.api.spec import RegistrySpec
from ocireg.charts import publish
from ocireg.charts.helm_index import build_index, read_index
from ocireg.charts.state import RepoState
from ocireg.charts.sync import SyncProblem, sync_charts
from ocireg.egress import UNRESTRICTED, EgressPolicy
from ocireg.kube.client import ApiError, Kube
from ocireg.oci import RegistryClient, RegistryCredentials, TLSOptions
from ocireg.pullsecrets import plan
from ocireg.pullsecrets.runtime import Runtime, runtime
from ocireg.workers import Alarms, retry_on_failure

log = logging.getLogger(__name__)

KINDS: Final = {"ociregistries": "OCIRegistry", "clusterociregistries": "ClusterOCIRegistry"}
# Failed repositories are tried again sooner than the interval.
RETRY_SECONDS: Final = 120
MIN_RETRY_SECONDS: Final = 30
# Page size for tags/list and the catalog; unset lets the registry choose.
PAGE_SIZE_ENV: Final = "OCIREG_CHARTS_PAGE_SIZE"
T = TypeVar("T")


@dataclass
class ChartState:
    """What the chart sync remembers about one registry object between ticks."""

    key: str | None = None  # what the last sync was for; a change means sync now
    server: str | None = None
    repos: dict[str, RepoState] = field(default_factory=dict)
    known: set[tuple[str, str]] | None = None  # (chart, version) indexed; None: never
    seeded: bool = False
    next_at: float = 0.0
    client: RegistryClient | None = None
    client_key: str | None = None
    status: dict[str, Any] | None = None  # status.charts as last published
    condition: tuple[bool, str, str, int | None] | None = None  # ok, reason, message, gen.


class ChartStates:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[plan.RegistryRef, ChartState] = {}

    def get(self, ref: plan.RegistryRef) -> ChartState:
        with self._lock:
            return self._states.setdefault(ref, ChartState())

    def known(self, ref: plan.RegistryRef) -> bool:
        with self._lock:
            return ref in self._states

    def forget(self, ref: plan.RegistryRef) -> ChartState | None:
        with self._lock:
            state = self._states.pop(ref, None)
        if state is not None and state.client is not None:
            state.client.close()
        return state


@dataclass
class Published:
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _page_size() -> int | None:
    value = os.environ.get(PAGE_SIZE_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


async def _on_pool(memo: kopf.Memo, ref: plan.RegistryRef, run: Callable[[], T]) -> T:
    """Run blocking chart work on the object's chart pool, one job per object at a time."""
    return await asyncio.wrap_future(runtime(memo).pools.charts(ref, run))


def _ref(body: kopf.Body, plural: str) -> plan.RegistryRef:
    meta = body["metadata"]
    return plan.RegistryRef(KINDS[plural], meta["name"], meta.get("namespace"), meta.get("uid"))


def _server(spec: RegistrySpec, credential: Credential) -> str | None:
    # A `{region}` template names no host; the provider resolved the real one.
    if spec.server and "{" not in spec.server:
        return spec.server
    return credential.endpoints[0] if credential.endpoints else None


def _index_namespace(ref: plan.RegistryRef, running: Runtime) -> str:
    if ref.namespaced and ref.namespace:
        return ref.namespace
    return running.config.credentials_namespace


# --------------------------------------------------------------------------- the work


def _client(
    state: ChartState,
    server: str,
    credential: Credential,
    tls: TLSOptions,
    egress_policy: EgressPolicy = UNRESTRICTED,
    listing_namespace: str | None = None,
) -> RegistryClient:
    """The registry client, kept between syncs while nothing about the connection changes:
    Bearer tokens and connections are reused. ``listing_namespace``: the tenant namespace
    whose share of the listing memory its listings take (None: a cluster object's)."""
    key = _digest(
        server,
        credential.fingerprint_parts(),
        tls.insecure,
        tls.skip_verify,
        tls.ca_bundle,
        egress_policy,
        listing_namespace,
    )
    if state.client is None or state.client_key != key:
        if state.client is not None:
            state.client.close()
        creds = RegistryCredentials(
            username=credential.username,
            password=credential.password,
            identity_token=credential.identity_token,
            registry_token=credential.registry_token,
        )
        state.client = RegistryClient(
            server,
            creds,
            tls,
            user_agent="ocireg-charts",
            egress_policy=egress_policy,
            listing_namespace=listing_namespace,
        )
        state.client_key = key
    return state.client


def _seed(
    kube: Kube, ref: plan.RegistryRef, state: ChartState, namespace: str, server: str
) -> None:
    """After a restart, take from the index we wrote before only which (chart, version)
    pairs it listed, so that Events go out only for versions new since. Chart metadata and
    tag digests are read from the registry again: a tenant can rewrite the ConfigMap in her
    namespace, and what the operator publishes must not come from it (a rewritten index was
    an alias bomb that took the operator out of memory on every restart)."""
    state.seeded = True
    observed = kube.read_config_map_body(namespace, publish.config_map_name(ref.name))
    if observed is None or not publish.owns(ref, observed):
        return
    text = (observed.get("data") or {}).get(publish.INDEX_KEY)
    state.known = read_index(text if isinstance(text, str) else "", server) or None


def run_sync(
    kube: Kube,
    ref: plan.RegistryRef,
    spec: RegistrySpec,
    credential: Credential,
    tls: TLSOptions,
    namespace: str,
    state: ChartState,
    generation: int | None,
    old_status: dict[str, Any] | None,
    egress_policy: EgressPolicy = UNRESTRICTED,
) -> Published:
    """One sync of one registry object (in a worker thread). Updates ``state`` with what to
    publish; never raises for problems a user must fix. ``egress_policy``: where the
    object's requests may go (a tenant's: public addresses and the operator's ranges)."""
    charts = spec.charts
    assert charts is not None
    interval = parse_duration(charts.interval).total_seconds()
    now = time.monotonic()
    state.next_at = now + interval
    server = _server(spec, credential)
    if server is None:
        state.condition = (
            False,
            "InvalidSpec",
            "no registry server to read charts from",
            generation,
        )
        state.status = publish.problem_status(old_status, _now())
        return Published()
    if state.server != server:
        state.repos, state.known, state.seeded, state.server = {}, None, False, server
    try:
        if not state.seeded:
            _seed(kube, ref, state, namespace, server)
        listing_namespace = ref.namespace if ref.namespaced else None
        client = _client(state, server, credential, tls, egress_policy, listing_namespace)
        before = client.request_count
        result = sync_charts(
            client, spec.repository_prefix, charts, state.repos, page_size=_page_size()
        )
        requests = client.request_count - before
    except SyncProblem as problem:
        state.condition = (False, problem.reason, problem.message, generation)
        state.status = publish.problem_status(old_status, _now())
        return Published([("Warning", problem.reason, problem.message)])
    except (ApiError, ReconcileError, ValueError, OSError) as error:
        message = getattr(error, "message", None) or f"{type(error).__name__} while syncing charts"
        if (state.condition or (None,))[1:3] != ("SyncFailed", message):  # once, not each retry
            log.warning("chart sync of %s failed: %s", ref.display, type(error).__name__)
        state.condition = (False, "SyncFailed", message, generation)
        state.status = publish.problem_status(old_status, _now())
        state.next_at = now + min(interval, RETRY_SECONDS)
        return Published()
    except Exception as error:  # a bug or an input nothing expected: a condition, not a crash
        log.exception("chart sync of %s failed", ref.display)
        message = f"{type(error).__name__} while syncing charts; retrying"
        state.condition = (False, "SyncFailed", message, generation)
        state.status = publish.problem_status(old_status, _now())
        state.next_at = now + min(interval, RETRY_SECONDS)
        return Published()
    state.repos = result.repos
    if result.retry_after is not None:
        state.next_at = now + min(interval, max(result.retry_after, MIN_RETRY_SECONDS))
    elif any(s.error for s in result.repos.values()):
        state.next_at = now + min(interval, RETRY_SECONDS)
    versions = [v for s in result.repos.values() for v in s.versions]
    index = build_index(versions, server)
    generated = _now()
    desired = publish.desired_config_map(ref, namespace, index, generated)
    name = f"{namespace}/{desired['metadata']['name']}"
    written = _write_index(kube, desired)
    report = publish.report(
        result, spec.repository_prefix, index, name, generated, requests, state.known
    )
    state.status = report.status
    events = list(report.events) if written in ("created", "updated", "unchanged") else []
    if written in ("created", "updated", "unchanged"):
        state.known = report.known
        state.condition = (*report.condition, generation)
    else:
        state.status = {**report.status, "configMap": None}
        state.condition = (False, *_write_problem(written, name), generation)
    return Published(events)


def _write_index(kube: Kube, desired: dict[str, Any]) -> str:
    try:
        return kube.apply_config_map(desired, publish.config_map_decision)
    except ReconcileError:
        return "error"
    except ApiError as error:
        return "forbidden" if error.status == 403 else "error"


def _write_problem(outcome: str, name: str) -> tuple[str, str]:
    if outcome == "conflict":
        return (
            "ConfigMapConflict",
            f"ConfigMap {name} exists and is not ocireg's index for this registry; delete or "
            "rename it",
        )
    if outcome == "gone":
        return ("NamespaceNotFound", f"cannot write ConfigMap {name}: its namespace is missing")
    if outcome == "forbidden":
        return ("Forbidden", f"the operator may not write ConfigMap {name}")
    return ("APIError", f"writing ConfigMap {name} failed; retrying")


def _delete_index(kube: Kube, namespace: str, ref: plan.RegistryRef) -> None:
    name = publish.config_map_name(ref.name)
    try:
        observed = kube.read_config_map_body(namespace, name)
        if observed is not None and publish.owns(ref, observed):
            kube.delete_config_map(namespace, name, observed["metadata"].get("uid"))
    except ApiError as error:
        log.warning("removing the chart index %s/%s failed: HTTP %s", namespace, name, error.status)


# --------------------------------------------------------------------------- scheduling


def status_fields(status: dict[str, Any], state: ChartState) -> dict[str, Any] | None:
    """The merge patch that makes ``status`` show status.charts and ChartsSynced as
    ``state`` has them (None: it shows them already). Also what puts them back when a
    reconcile's whole-list write of conditions was made from a copy without ours."""
    if state.status is None or state.condition is None:
        return None
    conditions = list(status.get("conditions") or [])
    ok, reason, message, generation = state.condition
    shown = publish.find_condition(conditions)
    wanted = {
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }
    if status.get("charts") == state.status and same_condition(shown, wanted):
        return None
    old = status.get("charts") or {}
    # A merge patch keeps keys it does not mention: clear the ones we no longer report.
    return {
        "charts": {**{k: None for k in old if k not in state.status}, **state.status},
        "conditions": publish.with_condition(conditions, ok, reason, message, generation, _now()),
    }


def cleared_fields(status: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that removes status.charts and ChartsSynced (None: neither shown)."""
    conditions = list(status.get("conditions") or [])
    if not status.get("charts") and publish.find_condition(conditions) is None:
        return None
    return {"charts": None, "conditions": publish.without_condition(conditions)}


def has_chart_work(spec: RegistrySpec | None, status: dict[str, Any], known: bool) -> bool:
    """Whether an object's run concerns the chart sync: its effective spec lists charts,
    its status still shows a chart index (to remove), or the sync knows it (``known``). The
    thousands of objects that only write pull secrets cost nothing here."""
    if spec is not None and spec.charts is not None:
        return True
    if known or status.get("charts"):
        return True
    return publish.find_condition(list(status.get("conditions") or [])) is not None


class ChartScheduler:
    """When each registry object's charts are read: after each run of the object (the
    Runtime's followers: its spec, credential or status may have changed) and at the time
    its next sync is due (its own alarm), on the chart pools. Not a kopf timer: kopf keeps
    a copy of the whole body of every object of a kind that has one (about 24 KB of live
    Python each, by tracemalloc), whether or not its filter lets the timer run. Every run
    ends here, a quiet resync's too, so a status.charts or ChartsSynced that someone else
    changed is put back within a resync period."""

    def __init__(self, running: Runtime) -> None:
        self.running = running
        self.states = ChartStates()
        self.alarms: Alarms[plan.RegistryRef] = Alarms(self.poke, name="ocireg-chart-alarms")
        # The exception type each object's chart work last failed with (logged once).
        self.failures: dict[plan.RegistryRef, str] = {}

    def follow(self, ref: plan.RegistryRef) -> None:
        """A run of ``ref`` ended (Runtime.followers): look at its charts if it has any."""
        tracked = self.running.registries.find(ref)
        if tracked is None or tracked.body is None:
            return
        status = tracked.body.get("status") or {}
        if has_chart_work(tracked.spec, status, self.states.known(ref)):
            self.poke(ref)

    def poke(self, ref: plan.RegistryRef) -> None:
        """Queue ``ref``'s chart work on its pool; pokes before it starts share it."""
        future = self.running.pools.charts(ref, lambda: self.tick(ref), coalesce=True)
        retry_on_failure(
            future,
            ref,
            "chart work",
            self.failures,
            self.alarms,
            MIN_RETRY_SECONDS,
            lambda: self.running.registries.find(ref) is not None,
        )

    def tick(self, ref: plan.RegistryRef) -> None:
        """Sync the object's charts if due (a changed spec, or its interval passed), make
        its status show the result, and set its next alarm. On its chart pool."""
        running = self.running
        tracked = running.registries.find(ref)
        if tracked is None or tracked.body is None:
            return  # deleted, or not handed over yet (its first run pokes again)
        # Read without tracked.lock: a reconcile may hold it for seconds, and these fields
        # are replaced whole, never changed in place.
        spec, credential, tls = tracked.spec, tracked.credential, tracked.tls
        body = tracked.body
        if spec is None:
            return  # not reconciled yet
        namespace = _index_namespace(ref, running)
        if spec.charts is None:
            state = self.states.forget(ref)
            self.alarms.cancel(ref)
            status = body.get("status") or {}
            if state is not None or cleared_fields(status) is not None:
                _delete_index(running.kube, namespace, ref)
                running.update_status(ref, cleared_fields)
            return
        if credential is None or tls is None:
            return  # credentials not verified yet; the Ready condition says why
        state = self.states.get(ref)
        generation = (body.get("metadata") or {}).get("generation")
        key = _digest(spec.server, spec.repository_prefix, spec.charts.to_api(), generation)
        if key != state.key or time.monotonic() >= state.next_at:
            state.key = key
            published = run_sync(
                running.kube,
                ref,
                spec,
                credential,
                tls,
                namespace,
                state,
                generation,
                (body.get("status") or {}).get("charts"),
                EgressPolicy.for_object(ref.namespaced, running.config.egress_allowed_cidrs),
            )
            for kind, reason, message in published.events:
                running.events.post(ref, kind, reason, message)
        if running.update_status(ref, lambda status: status_fields(status, state)):
            self.alarms.set(ref, max(1.0, state.next_at - time.monotonic()))

    def forget(self, ref: plan.RegistryRef) -> None:
        self.alarms.cancel(ref)
        self.states.forget(ref)
        self.failures.pop(ref, None)

    def stop(self) -> None:
        self.alarms.stop()


def scheduler(memo: kopf.Memo) -> ChartScheduler | None:
    found = memo.get("charts")
    return found if isinstance(found, ChartScheduler) else None


# --------------------------------------------------------------------------- kopf wiring


@kopf.on.startup()
def start_charts(memo: kopf.Memo, **_: Any) -> None:
    # After pullsecrets.handlers' startup (imported first, cli.py), which made the Runtime.
    made = memo.charts = ChartScheduler(runtime(memo))
    made.running.followers.append(made.follow)


@kopf.on.cleanup()
def stop_charts(memo: kopf.Memo, **_: Any) -> None:
    found = scheduler(memo)
    if found is not None:
        found.stop()


for _plural in KINDS:

    @kopf.on.delete(GROUP, _plural, optional=True, id="charts-cleanup")
    async def charts_cleanup(
        body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        # Owner references let garbage collection remove the index too; this is quicker.
        ref = _ref(body, _plural)
        found = scheduler(memo)
        if found is not None:
            found.forget(ref)
        if "runtime" in memo:
            namespace, kube = _index_namespace(ref, runtime(memo)), runtime(memo).kube
            await _on_pool(memo, ref, functools.partial(_delete_index, kube, namespace, ref))


__all__ = [
    "ChartScheduler",
    "ChartState",
    "ChartStates",
    "cleared_fields",
    "has_chart_work",
    "run_sync",
    "status_fields",
]
