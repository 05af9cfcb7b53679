"""What a chart sync knows about a registry's repositories: plain values, no I/O.

The sync (charts/sync.py, which calls the registry) fills these in; the publisher
(charts/publish.py, a pure decision) reads them, so it need not import the sync's HTTP code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ocireg.charts.helm_index import IndexedVersion


@dataclass(frozen=True)
class KnownTag:
    digest: str
    checked_at: float  # wall clock
    version: IndexedVersion | None  # None: not a chart


@dataclass
class RepoState:
    """What we know about one repository (full path on the server)."""

    tags: dict[str, KnownTag] = field(default_factory=dict)
    versions: list[IndexedVersion] = field(default_factory=list)  # selected, newest first
    skipped: int = 0
    error: tuple[str, str] | None = None  # (reason, message) of the last sync
    unchecked: int = 0  # version tags left for the next syncs (request budget spent)


@dataclass(frozen=True)
class SyncResult:
    repos: dict[str, RepoState]  # every repository that is part of the index now
    discovery_note: str | None = None  # why discover found nothing usable
    retry_after: float | None = None  # the registry asked us to come back later


def relative(prefix: str | None, repository: str) -> str:
    """The repository's path below the prefix (as users write it in spec.charts)."""
    if prefix and repository.startswith(prefix + "/"):
        return repository[len(prefix) + 1 :]
    return repository
