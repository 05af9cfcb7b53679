"""Pure decisions for publishing a chart sync: the index ConfigMap, status.charts, the
ChartsSynced condition and the Events. No I/O here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from ocireg.api.charts import MAX_ERRORS_IN_STATUS, MAX_ITEMS_IN_STATUS, ChartsStatus
from ocireg.api.conditions import condition, remove_condition, set_conditions
from ocireg.api.conditions import find_condition as conditions_find
from ocireg.api.names import (
    ANNOTATION_DIGEST,
    ANNOTATION_OWNER,
    API_VERSION,
    LABEL_CHARTS,
    LABEL_KIND,
    LABEL_UID,
)
from ocireg.api.ownership import Claim, RegistryRef, claim
from ocireg.charts.helm_index import MAX_ENTRY_BYTES, Index, IndexedVersion
from ocireg.charts.state import RepoState, SyncResult, relative
from ocireg.charts.versions import latest, parse_version

CONDITION: Final = "ChartsSynced"
INDEX_KEY: Final = "index.yaml"
MAX_VERSION_EVENTS: Final = 10
_MAX_NAME = 253


def config_map_name(registry_name: str) -> str:
    name = f"{registry_name}-charts"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(registry_name.encode()).hexdigest()[:12]
    return f"{registry_name[: _MAX_NAME - 20]}-{digest}-charts"


def desired_config_map(
    ref: RegistryRef, namespace: str, index: Index, generated: str
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": config_map_name(ref.name),
        "namespace": namespace,
        "labels": {**ref.labels(), LABEL_CHARTS: "index"},
        "annotations": {**ref.annotations(), ANNOTATION_DIGEST: index.content_digest},
    }
    if ref.uid:
        # A namespaced object may have a cluster-scoped owner, so both kinds can own it:
        # garbage collection removes the index with its registry object.
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": ref.kind,
                "name": ref.name,
                "uid": ref.uid,
                "blockOwnerDeletion": False,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {INDEX_KEY: index.text(generated)},
    }


def _claim(ref: RegistryRef, observed: dict[str, Any]) -> Claim:
    meta = observed.get("metadata") or {}
    return claim(
        ref, meta.get("namespace") or "", meta.get("labels") or {}, meta.get("annotations") or {}
    )


def owns(ref: RegistryRef, observed: dict[str, Any]) -> bool:
    """Whether this registry object may replace or delete the index ConfigMap: the same
    rule as for pull secrets (ownership.claim)."""
    return _claim(ref, observed).mine


def _owner(desired: dict[str, Any]) -> RegistryRef:
    meta = desired["metadata"]
    labels = meta["labels"]
    kind, display = labels[LABEL_KIND], meta["annotations"][ANNOTATION_OWNER]
    *namespace, name = display.split("/")[1:]
    return RegistryRef(kind, name, namespace[0] if namespace else None, labels.get(LABEL_UID))


def config_map_decision(desired: dict[str, Any], observed: dict[str, Any] | None) -> str:
    """create | update | unchanged | conflict (someone else's ConfigMap of that name,
    another registry object's included). One an older release wrote for this object, or a
    deleted predecessor of the same name, is taken over (update: relabelled)."""
    if observed is None:
        return "create"
    found = _claim(_owner(desired), observed)
    if not found.mine:
        return "conflict"
    labels = (observed.get("metadata") or {}).get("labels") or {}
    if found is Claim.ADOPT or any(
        labels.get(k) != v for k, v in desired["metadata"]["labels"].items()
    ):
        return "update"
    want = desired["metadata"]["annotations"][ANNOTATION_DIGEST]
    have = ((observed.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DIGEST)
    if have == want and INDEX_KEY in (observed.get("data") or {}):
        return "unchanged"
    return "update"


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Report:
    status: dict[str, Any]
    condition: tuple[bool, str, str]  # (ok, reason, message)
    events: list[tuple[str, str, str]]
    known: set[tuple[str, str]]  # (chart, version) now in the index


def report(
    result: SyncResult,
    prefix: str | None,
    index: Index,
    config_map: str,
    synced_at: str,
    requests: int,
    previous: set[tuple[str, str]] | None,
) -> Report:
    """What to tell the user after a sync. ``previous``: the (chart, version) pairs indexed
    before (None the first time: one summary Event instead of one per version)."""
    items = []
    for repository, state in sorted(result.repos.items()):
        if not state.versions:
            continue
        newest = latest(v for v in (parse_version(x.version) for x in state.versions) if v)
        items.append(
            {
                "repository": relative(prefix, repository),
                "name": state.versions[0].name,
                "latest": newest.text if newest else state.versions[0].version,
                "versions": len(state.versions),
            }
        )
    errors = _errors(result.repos, prefix)
    for kept, left in index.duplicates:
        errors.append(
            {
                "repository": relative(prefix, left.repository),
                "reason": "DuplicateChart",
                "message": f"chart {left.name} {left.version} is also in "
                f"{relative(prefix, kept.repository)}; the index lists that one",
            }
        )
    errors.extend(_trimmed(index, prefix))
    indexed = _indexed(index)
    status = ChartsStatus.model_validate(
        {
            "repositories": len(items),
            "versions": len(indexed),
            "skipped": sum(s.skipped for s in result.repos.values()),
            "lastSyncedAt": synced_at,
            "configMap": config_map,
            "requests": requests,
            "items": items[:MAX_ITEMS_IN_STATUS],
            "errors": errors[:MAX_ERRORS_IN_STATUS],
            "errorCount": len(errors),
        }
    ).to_api()
    charts = len(index.document["entries"])
    summary = (
        f"indexed {len(indexed)} version(s) of {charts} chart(s) from {len(items)} "
        f"repository(ies) into ConfigMap {config_map}"
    )
    if index.dropped:
        summary += f"; {index.dropped} older version(s) left out to keep the ConfigMap small"
    cut = sum(1 for t in index.trimmed if t.left_out is not None)
    if cut:
        summary += f"; {cut} version(s) cut to {MAX_ENTRY_BYTES // 1024} KiB per entry"
    if len(index.trimmed) > cut:
        summary += (
            f"; {len(index.trimmed) - cut} version(s) left out, their entries being over "
            f"{MAX_ENTRY_BYTES // 1024} KiB"
        )
    failed = [e for e in errors if e["reason"] not in _NOTES]
    if failed:
        names = ", ".join(f"{e['repository']} ({e['reason']}: {e['message']})" for e in failed[:3])
        reason = failed[0]["reason"] if len(failed) == len(result.repos) else "RepositoriesFailed"
        condition = (
            False,
            reason,
            f"{len(failed)} of {len(result.repos)} repositories could not be read: {names}; "
            f"{summary}",
        )
    else:
        condition = (True, "Synced", summary)
    if result.discovery_note:
        condition = (
            condition[0],
            condition[1],
            f"{condition[2]}; discover: {result.discovery_note}",
        )
    return Report(status, condition, _events(indexed, previous, charts), set(indexed))


# Reasons in status.charts.errors that describe the index, not a repository that failed.
# TagsNotChecked: the request budget ran out; the next syncs go on (no failure).
_NOTES: Final = frozenset({"DuplicateChart", "EntryTrimmed", "EntryTooLarge", "TagsNotChecked"})


def _trimmed(index: Index, prefix: str | None) -> list[dict[str, str]]:
    notes = []
    for t in index.trimmed:
        v = t.version
        if t.left_out is None:
            reason = "EntryTooLarge"
            what = "left out of the index"
        else:
            reason = "EntryTrimmed"
            what = f"listed without {', '.join(t.left_out)}"
        notes.append(
            {
                "repository": relative(prefix, v.repository),
                "reason": reason,
                "message": f"chart {v.name} {v.version}: its index entry is over "
                f"{MAX_ENTRY_BYTES // 1024} KiB, so it is {what}",
            }
        )
    return notes


def _errors(repos: dict[str, RepoState], prefix: str | None) -> list[dict[str, str]]:
    return [
        {"repository": relative(prefix, repository), "reason": s.error[0], "message": s.error[1]}
        for repository, s in sorted(repos.items())
        if s.error is not None
    ]


def _indexed(index: Index) -> dict[tuple[str, str], str]:
    """(chart, version) -> url for everything in the index."""
    return {
        (name, entry["version"]): entry["urls"][0]
        for name, rows in index.document["entries"].items()
        for entry in rows
    }


def _events(
    indexed: dict[tuple[str, str], str],
    previous: set[tuple[str, str]] | None,
    charts: int,
) -> list[tuple[str, str, str]]:
    if previous is None:
        if not indexed:
            return []
        return [
            ("Normal", "ChartsIndexed", f"indexed {len(indexed)} version(s) of {charts} chart(s)")
        ]
    added = sorted(key for key in indexed if key not in previous)
    events = [
        (
            "Normal",
            "ChartVersionAdded",
            f"chart {name} {version} is available at {indexed[(name, version)]}",
        )
        for name, version in added[:MAX_VERSION_EVENTS]
    ]
    if len(added) > MAX_VERSION_EVENTS:
        events.append(
            (
                "Normal",
                "ChartVersionAdded",
                f"and {len(added) - MAX_VERSION_EVENTS} more new chart version(s)",
            )
        )
    return events


def problem_status(old: dict[str, Any] | None, synced_at: str) -> dict[str, Any]:
    """status.charts when the sync could not run: the last good figures stay."""
    status = dict(old or {})
    status.pop("requests", None)
    return status or ChartsStatus(last_synced_at=synced_at).to_api()


def versions_of(state: Iterable[IndexedVersion]) -> set[tuple[str, str]]:
    return {(v.name, v.version) for v in state}


def with_condition(
    conditions: list[dict[str, Any]],
    ok: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions with ChartsSynced set (api.conditions: its transition time kept while
    its status holds) and every other condition as it was: the core reconcile owns those."""
    return set_conditions(conditions, [condition(CONDITION, ok, reason, message, generation, now)])


def without_condition(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return remove_condition(conditions, CONDITION)


def find_condition(conditions: list[dict[str, Any]]) -> dict[str, Any] | None:
    return conditions_find(conditions, CONDITION)
