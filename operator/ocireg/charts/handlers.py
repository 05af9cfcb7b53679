"""kopf wiring for the Helm chart sync (spec.charts): a timer per registry object that reads
the registry when the sync is due, writes the index ConfigMap, status.charts and the
ChartsSynced condition, and posts Events for new versions.

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
from ocireg.pullsecrets.runtime import runtime

log = logging.getLogger(__name__)

KINDS: Final = {"ociregistries": "OCIRegistry", "clusterociregistries": "ClusterOCIRegistry"}
# The timer only decides; a registry is read once per spec.charts.interval (or on a change).
CHECK_SECONDS: Final = 10
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


def _states(memo: kopf.Memo) -> ChartStates:
    if "chart_states" not in memo:  # the event loop is single-threaded: no race here
        memo.chart_states = ChartStates()
    states: ChartStates = memo.chart_states
    return states


def _server(spec: RegistrySpec, credential: Credential) -> str | None:
    # A `{region}` template names no host; the provider resolved the real one.
    if spec.server and "{" not in spec.server:
        return spec.server
    return credential.endpoints[0] if credential.endpoints else None


def _index_namespace(ref: plan.RegistryRef, memo: kopf.Memo) -> str:
    if ref.namespaced and ref.namespace:
        return ref.namespace
    return runtime(memo).config.credentials_namespace


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


# --------------------------------------------------------------------------- kopf wiring


def _status_patch(patch: kopf.Patch, status: dict[str, Any], state: ChartState) -> None:
    """Write status.charts and ChartsSynced when the object does not show them yet (just
    synced, or the reconcile's whole-list write of conditions raced with ours)."""
    if state.status is None or state.condition is None:
        return
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
        return
    old = status.get("charts") or {}
    # A merge patch keeps keys it does not mention: clear the ones we no longer report.
    patch.status["charts"] = {**{k: None for k in old if k not in state.status}, **state.status}
    patch.status["conditions"] = publish.with_condition(
        conditions, ok, reason, message, generation, _now()
    )


async def charts_tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, plural: str) -> None:
    if "runtime" not in memo:
        return
    ref, running = _ref(body, plural), runtime(memo)
    tracked = running.registries.get(ref)
    # Read without tracked.lock: a reconcile may hold it for seconds, and these fields are
    # replaced whole, never changed in place.
    spec, credential, tls = tracked.spec, tracked.credential, tracked.tls
    status = dict(body.get("status") or {})
    states = _states(memo)
    if spec is None:
        return  # not reconciled yet
    namespace = _index_namespace(ref, memo)
    if spec.charts is None:
        conditions = status.get("conditions") or []
        if (
            states.forget(ref) is not None
            or status.get("charts")
            or publish.find_condition(conditions)
        ):
            await _on_pool(
                memo, ref, functools.partial(_delete_index, running.kube, namespace, ref)
            )
            patch.status["charts"] = None
            patch.status["conditions"] = publish.without_condition(conditions)
        return
    if credential is None or tls is None:
        return  # credentials not verified yet; the Ready condition says why
    state = states.get(ref)
    generation = body["metadata"].get("generation")
    key = _digest(spec.server, spec.repository_prefix, spec.charts.to_api(), generation)
    if key != state.key or time.monotonic() >= state.next_at:
        state.key = key
        published = await _on_pool(
            memo,
            ref,
            functools.partial(
                run_sync,
                running.kube,
                ref,
                spec,
                credential,
                tls,
                namespace,
                state,
                generation,
                status.get("charts"),
                EgressPolicy.for_object(ref.namespaced, running.config.egress_allowed_cidrs),
            ),
        )
        for kind, reason, message in published.events:
            running.events.post(ref, kind, reason, message)
    _status_patch(patch, status, state)


def may_have_charts(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Whether an object needs the chart timer: it lists charts (itself or through a base
    it extends), or shows a chart index still to remove. The thousands of objects that only
    write pull secrets get no timer at all (kopf starts and stops it as this changes)."""
    if spec.get("charts") or spec.get("extends") or status.get("charts"):
        return True
    return publish.find_condition(list(status.get("conditions") or [])) is not None


for _plural in KINDS:

    @kopf.timer(
        GROUP, _plural, interval=CHECK_SECONDS, initial_delay=2, id="charts", when=may_have_charts
    )
    async def charts_timer(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        await charts_tick(body, patch, memo, _plural)

    @kopf.on.delete(GROUP, _plural, optional=True, id="charts-cleanup")
    async def charts_cleanup(
        body: kopf.Body, memo: kopf.Memo, _plural: str = _plural, **_: Any
    ) -> None:
        # Owner references let garbage collection remove the index too; this is quicker.
        ref = _ref(body, _plural)
        _states(memo).forget(ref)
        if "runtime" in memo:
            namespace, kube = _index_namespace(ref, memo), runtime(memo).kube
            await _on_pool(memo, ref, functools.partial(_delete_index, kube, namespace, ref))


__all__ = ["ChartState", "ChartStates", "charts_tick", "run_sync"]
