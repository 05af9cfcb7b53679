"""Reading the charts a registry holds, incrementally.

Per repository a sync costs one tags/list call (one per page), then a manifest and a config
blob only for version tags it has not seen, at most MANIFESTS_PER_KEPT x keep manifest
requests (tags that are not charts never count towards keep: 400 image tags would otherwise
cost 400 requests a sync); what it checked is remembered, so the next sync goes on from
there. The whole sync ends within SYNC_DEADLINE, so no registry holds a chart worker longer.

Known tags are trusted for REVALIDATE_SECONDS and then re-checked with one HEAD each, so
an unchanged resync costs about one request per repository. The trade-off: a chart version
re-pushed over an existing tag (Helm versions are meant to be immutable) shows its new
digest within a day, not at the next sync. Cheaper checks do not exist: the tag list
carries no digests, and HEAD-ing every kept tag would cost `keep` requests per repository
per sync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from ocireg import egress
from ocireg.api.charts import Charts
from ocireg.charts.helm_index import IndexedVersion
from ocireg.charts.metadata import MAX_CONFIG_BYTES, BadChart, NotAChart, chart_metadata, classify
from ocireg.charts.state import KnownTag, RepoState, SyncResult
from ocireg.charts.versions import Constraint, ConstraintError, candidates
from ocireg.oci import RegistryClient, RegistryError

log = logging.getLogger(__name__)
T = TypeVar("T")

REVALIDATE_SECONDS: Final = 24 * 3600
WORKERS: Final = 8
# A 429 asking to wait at most this long is waited out in place; longer ends the sync.
MAX_INLINE_WAIT: Final = 10.0
# Stop when the registry says this few requests are left in its window (Docker Hub counts
# pulls): the cluster's own image pulls need them more than the index does.
RATE_LIMIT_RESERVE: Final = 10
# One sync's total deadline (the listing deadline is 120 s, a request's 30 s): a registry that
# answers slowly on purpose holds a chart worker at most this long per interval.
SYNC_DEADLINE: Final = 300.0
# Manifest requests (GET or HEAD) per repository and sync, per version kept.
MANIFESTS_PER_KEPT: Final = 4


class SyncProblem(Exception):
    """The sync cannot run at all; becomes the ChartsSynced condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Halt(Exception):
    """The registry asked us to stop for now."""


class _Session:
    """Calls the registry on behalf of one sync: waits out short 429s, and stops the whole
    sync on long ones or when the registry's rate-limit headers say the window is spent."""

    def __init__(self, client: RegistryClient, sleep: Callable[[float], None]) -> None:
        self.client = client
        self.sleep = sleep
        self.halted = threading.Event()
        self.retry_after: float | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], T]) -> T:
        for _attempt in range(3):
            if self.halted.is_set():
                raise _Halt
            try:
                result = fn()
            except RegistryError as error:
                if error.reason != "RateLimited":
                    raise
                wait = error.retry_after
                if wait is not None and wait <= MAX_INLINE_WAIT:
                    self.sleep(wait)
                    continue
                self._halt(wait if wait is not None else 60.0)
                raise _Halt from None
            remaining = self.client.rate_limit_remaining
            if remaining is not None and remaining <= RATE_LIMIT_RESERVE:
                self._halt(None)
            return result
        self._halt(60.0)
        raise _Halt

    def _halt(self, retry_after: float | None) -> None:
        with self._lock:
            if retry_after is not None:
                self.retry_after = max(self.retry_after or 0.0, retry_after)
            self.halted.set()


def full_path(prefix: str | None, repository: str) -> str:
    return f"{prefix}/{repository}" if prefix else repository


def sync_charts(
    client: RegistryClient,
    prefix: str | None,
    charts: Charts,
    known: dict[str, RepoState],
    *,
    page_size: int | None = None,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    workers: int = WORKERS,
    deadline: float = SYNC_DEADLINE,
) -> SyncResult:
    """Read every chart repository, reusing ``known`` (repository -> state from the last
    sync, not modified), all within ``deadline`` seconds. Raises SyncProblem when nothing
    can be read at all."""
    ends_at = time.monotonic() + deadline
    versions = charts.effective_versions
    try:
        constraint = Constraint(versions.constraint)
    except ConstraintError as error:
        raise SyncProblem("InvalidConstraint", str(error)) from None
    session = _Session(client, sleep)
    repositories = [full_path(prefix, r) for r in charts.repositories]
    note, reason = None, "NoRepositories"
    if charts.discover:
        with egress.deadline(deadline):
            found, note, reason = _discover(session, prefix, page_size)
        repositories.extend(found)
    repositories = list(dict.fromkeys(repositories))
    if not repositories:
        raise SyncProblem(reason, note or "no chart repositories: list them in charts.repositories")

    def one(repository: str) -> RepoState:
        old = known.get(repository) or RepoState()
        late = ("SyncDeadline", _late(deadline))
        left = ends_at - time.monotonic()
        if left <= 0:
            return _carry_over(old, late)
        # Every request this thread makes ends by the sync's deadline (egress is per thread).
        with egress.deadline(left):
            state = _sync_repository(
                session, repository, old, constraint, versions.keep, page_size, now
            )
        if state.error is not None and time.monotonic() >= ends_at:
            state = _carry_over(old, late)  # name the sync's deadline, not the request's
        return state

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(repositories)))) as pool:
        states = list(pool.map(one, repositories))
    return SyncResult(dict(zip(repositories, states, strict=True)), note, session.retry_after)


def _late(deadline: float) -> str:
    return (
        f"the chart sync's total deadline ({deadline:g} s) passed before this repository "
        "was read; it is read again at the next sync (the registry may be slow or dripping "
        "its answers)"
    )


# Catalog failures that are not the registry declining the catalog API: the condition
# names them (reason and the client's message) instead of "NoRepositories".
_OWN_REASONS: Final = frozenset({"AnswerTooLarge", "EgressNotAllowed", "Unreachable"})


def _discover(
    session: _Session, prefix: str | None, page_size: int | None
) -> tuple[list[str], str | None, str]:
    """(repositories found, why none were, the condition reason for that)."""
    where = f" under {prefix}/" if prefix else ""
    advice = "list chart repositories in charts.repositories instead"
    try:
        names = session.call(lambda: session.client.list_repositories(page_size))
    except _Halt:
        return (
            [],
            f"the registry rate-limited the catalog request; {advice} or wait",
            "NoRepositories",
        )
    except RegistryError as error:
        if error.reason in _OWN_REASONS:
            return [], f"{error.message}; {advice}", error.reason
        code = f"HTTP {error.status_code}" if error.status_code else error.reason
        return (
            [],
            (
                f"the registry refused to list its repositories through the catalog API "
                f"(/v2/_catalog: {code}), as many registries do; {advice}"
            ),
            "NoRepositories",
        )
    found = [n for n in names if not prefix or n.startswith(prefix + "/")]
    if not found:
        return (
            [],
            f"the registry's catalog lists no repositories{where}; {advice}",
            "NoRepositories",
        )
    return found, None, "NoRepositories"


def _sync_repository(
    session: _Session,
    repository: str,
    old: RepoState,
    constraint: Constraint,
    keep: int,
    page_size: int | None,
    now: Callable[[], float],
) -> RepoState:
    client = session.client
    state = RepoState()
    budget = MANIFESTS_PER_KEPT * keep
    used = 0
    try:
        tags = session.call(lambda: client.list_tags(repository, page_size))
        for tag, version in candidates(tags, constraint):
            if len(state.versions) >= keep:
                break
            previous = old.tags.get(tag)
            fresh = previous is not None and now() - previous.checked_at < REVALIDATE_SECONDS
            if used >= budget and not fresh:
                if previous is not None:  # known but due for a check: keep it until then
                    _keep(state, tag, previous)
                else:
                    state.unchecked += 1
                continue
            used += 0 if fresh else 1
            _keep(state, tag, _resolve(session, repository, tag, version.text, previous, now))
    except _Halt:
        # Keep what we had; the next sync picks up from there.
        state = _carry_over(old, ("RateLimited", "the registry asked to slow down; retrying later"))
    except RegistryError as error:
        state = _carry_over(old, (error.reason, error.message))
    except ValueError as error:  # an invalid repository name or reference
        state = _carry_over(old, ("InvalidRepository", str(error)))
    else:
        if state.unchecked:
            state.error = (
                "TagsNotChecked",
                f"{state.unchecked} version tag(s) not checked yet: a sync reads at most "
                f"{budget} manifests per repository ({MANIFESTS_PER_KEPT} x keep), and tags "
                "that are not charts count too; the next syncs go on from here",
            )
    return state


def _keep(state: RepoState, tag: str, known: KnownTag) -> None:
    state.tags[tag] = known
    if known.version is None:
        state.skipped += 1
    else:
        state.versions.append(known.version)


def _carry_over(old: RepoState, error: tuple[str, str]) -> RepoState:
    return RepoState(dict(old.tags), list(old.versions), old.skipped, error, old.unchecked)


def _resolve(
    session: _Session,
    repository: str,
    tag: str,
    version: str,
    known: KnownTag | None,
    now: Callable[[], float],
) -> KnownTag:
    client = session.client
    if known is not None:
        if now() - known.checked_at < REVALIDATE_SECONDS:
            return known
        digest = session.call(lambda: client.head_manifest(repository, tag))
        if digest == known.digest:
            return KnownTag(known.digest, now(), known.version)
    manifest, digest = session.call(lambda: client.get_manifest(repository, tag))
    try:
        chart = classify(manifest)
        blob = session.call(
            lambda: client.get_blob(repository, chart.config_digest, MAX_CONFIG_BYTES)
        )
        metadata = chart_metadata(blob)
    except NotAChart:
        return KnownTag(digest, now(), None)
    except BadChart as error:
        log.info("%s:%s looks like a Helm chart but is not usable: %s", repository, tag, error)
        return KnownTag(digest, now(), None)
    return KnownTag(
        digest, now(), IndexedVersion(repository, tag, version, digest, chart.created, metadata)
    )
