"""A Helm repository `index.yaml` for charts that live in an OCI registry.

Entries carry `oci://` urls, so Helm (and tools reading Helm indexes) pull them from the
registry; `digest` is the manifest digest, the one `helm push` and `helm pull` print."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from .versions import parse_version

# A ConfigMap holds at most 1 MiB in all; leave room for metadata.
MAX_INDEX_BYTES: Final = 900 * 1024


@dataclass(frozen=True)
class IndexedVersion:
    """One chart version as found in the registry."""

    repository: str  # full path on the server
    tag: str
    version: str  # as Helm spells it (`+`, not `_`)
    digest: str  # manifest digest
    created: str | None
    metadata: dict[str, Any] = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.repository.rsplit("/", 1)[-1])

    def url(self, server: str) -> str:
        # The OCI tag, as any OCI client (and Helm) resolves it.
        return f"oci://{server}/{self.repository}:{self.tag}"

    def entry(self, server: str) -> dict[str, Any]:
        entry: dict[str, Any] = {**self.metadata, "name": self.name, "version": self.version}
        entry["apiVersion"] = self.metadata.get("apiVersion", "v2")
        entry["urls"] = [self.url(server)]
        entry["digest"] = self.digest
        if self.created:
            entry["created"] = self.created
        return dict(sorted(entry.items()))


@dataclass(frozen=True)
class Index:
    document: dict[str, Any]
    dropped: int  # versions left out to fit the ConfigMap
    duplicates: list[tuple[IndexedVersion, IndexedVersion]]  # (kept, left out)

    def text(self, generated: str) -> str:
        return yaml.safe_dump({**self.document, "generated": generated}, sort_keys=False)

    @property
    def content_digest(self) -> str:
        """A digest of the entries, to skip rewriting an unchanged index."""
        raw = json.dumps(self.document, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()


def build_index(
    versions: Iterable[IndexedVersion], server: str, max_bytes: int = MAX_INDEX_BYTES
) -> Index:
    """The index document (without `generated`), newest version first in each entry.

    Two repositories publishing the same chart name and version keep the first (by
    repository); when the whole does not fit ``max_bytes``, the oldest versions of the
    charts with the most versions go first."""
    by_name: dict[str, list[IndexedVersion]] = {}
    seen: dict[tuple[str, str], IndexedVersion] = {}
    duplicates = []
    for v in sorted(versions, key=lambda v: (v.repository, v.tag)):
        key = (v.name, v.version)
        if key in seen:
            duplicates.append((seen[key], v))
            continue
        seen[key] = v
        by_name.setdefault(v.name, []).append(v)
    entries: dict[str, list[tuple[IndexedVersion, dict[str, Any], int]]] = {}
    total = 64
    for name in sorted(by_name):
        ordered = sorted(by_name[name], key=_order, reverse=True)
        rows = []
        for v in ordered:
            entry = v.entry(server)
            dumped = yaml.safe_dump([entry], sort_keys=False)
            size = len(dumped.encode()) + 2 * dumped.count("\n") + 4  # nested two levels deeper
            rows.append((v, entry, size))
            total += size
        entries[name] = rows
        total += len(name) + 4
    dropped = 0
    while True:
        while total > max_bytes and entries:
            name = max(entries, key=lambda n: (len(entries[n]), n))
            _, _, size = entries[name].pop()
            total -= size
            dropped += 1
            if not entries[name]:
                del entries[name]
        document = {
            "apiVersion": "v1",
            "entries": {name: [entry for _, entry, _ in rows] for name, rows in entries.items()},
        }
        index = Index(document, dropped, duplicates)
        # The estimate is close; the exact size decides (and rarely costs one more round).
        actual = len(index.text("2000-01-01T00:00:00Z").encode())
        if actual <= max_bytes or not entries:
            return index
        total = max(total, actual) + 1


def _order(v: IndexedVersion) -> tuple[Any, ...]:
    parsed = parse_version(v.version)
    return (1, parsed.sort_key()) if parsed else (0, v.version)


def read_index(text: str, server: str) -> list[IndexedVersion]:
    """The versions of an index.yaml we wrote before, to pick up where a restart left off.
    Entries that are not ours (another server, unreadable) are left out."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    entries = document.get("entries") if isinstance(document, dict) else None
    found = []
    prefix = f"oci://{server}/"
    for rows in entries.values() if isinstance(entries, dict) else ():
        for entry in rows if isinstance(rows, list) else ():
            if not isinstance(entry, dict):
                continue
            urls, digest, version = entry.get("urls"), entry.get("digest"), entry.get("version")
            url = urls[0] if isinstance(urls, list) and urls else None
            if not (isinstance(url, str) and url.startswith(prefix)):
                continue
            repository, _, tag = url[len(prefix) :].rpartition(":")
            if not (repository and tag and isinstance(digest, str) and isinstance(version, str)):
                continue
            created = entry.get("created")
            metadata = {
                k: v for k, v in entry.items() if k not in ("urls", "digest", "created", "version")
            }
            found.append(
                IndexedVersion(
                    repository,
                    tag,
                    version,
                    digest,
                    created if isinstance(created, str) else None,
                    metadata,
                )
            )
    return found
