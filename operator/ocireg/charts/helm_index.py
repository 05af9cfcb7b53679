"""A Helm repository `index.yaml` for charts that live in an OCI registry.

Entries carry `oci://` urls, so Helm (and tools reading Helm indexes) pull them from the
registry; `digest` is the manifest digest, the one `helm push` and `helm pull` print."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from ocireg.charts.versions import parse_version

# A ConfigMap holds at most 1 MiB in all; leave room for metadata.
MAX_INDEX_BYTES: Final = 900 * 1024
# One version's entry in index.yaml; real ones are 1-3 KiB. Bounds the work per version.
MAX_ENTRY_BYTES: Final = 16 * 1024


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
class Trimmed:
    """A version whose index entry was too big: cut (``left_out`` names what went) or, when
    even the cut entry is too big, left out of the index (``left_out`` is None)."""

    version: IndexedVersion
    left_out: tuple[str, ...] | None


@dataclass(frozen=True)
class Index:
    document: dict[str, Any]
    dropped: int  # versions left out to fit the ConfigMap
    duplicates: list[tuple[IndexedVersion, IndexedVersion]]  # (kept, left out)
    trimmed: list[Trimmed] = field(default_factory=list)  # entries over MAX_ENTRY_BYTES
    body: str = ""  # index.yaml up to `generated`, assembled from the entries' serialisations

    def text(self, generated: str) -> str:
        return self.body + _dump({"generated": generated})

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
    repository); an entry over MAX_ENTRY_BYTES is cut (see `bounded_entry`); when the whole
    does not fit ``max_bytes``, the oldest versions of the charts with the most versions go
    first. Each entry is serialised once and the text is assembled from those pieces, so the
    size is known exactly and the cost is linear in the number of versions (no re-dumping of
    the whole index per dropped entry)."""
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
    trimmed: list[Trimmed] = []
    charts: list[tuple[str, str, list[tuple[dict[str, Any], str]]]] = []  # name, header, rows
    total = len(_PREFIX) + _GENERATED_BYTES
    for name in sorted(by_name):
        rows = []
        for v in sorted(by_name[name], key=_order, reverse=True):
            entry, chunk, left_out = bounded_entry(v, server)
            if entry is None:
                trimmed.append(Trimmed(v, None))
                continue
            if left_out:
                trimmed.append(Trimmed(v, left_out))
            rows.append((entry, chunk))
            total += len(chunk)
        if rows:
            header = _chart_header(name)
            charts.append((name, header, rows))
            total += len(header)
    # Largest version count first, ties by the later name: a heap of (-count, -position).
    heap = [(-len(rows), -i) for i, (_, _, rows) in enumerate(charts)]
    heapq.heapify(heap)
    dropped = 0
    while total > max_bytes and heap:
        count, position = heapq.heappop(heap)
        _, header, rows = charts[-position]
        total -= len(rows.pop()[1])
        dropped += 1
        if rows:
            heapq.heappush(heap, (count + 1, position))
        else:
            total -= len(header)
    kept = [(name, header, rows) for name, header, rows in charts if rows]
    document = {
        "apiVersion": "v1",
        "entries": {name: [entry for entry, _ in rows] for name, _, rows in kept},
    }
    if kept:
        body = _PREFIX + "".join(header + "".join(c for _, c in rows) for _, header, rows in kept)
    else:
        body = _dump({"apiVersion": "v1", "entries": {}})
    return Index(document, dropped, duplicates, trimmed, body)


# Fields cut from an oversized entry, in this order, before it is left out: the lists first
# (dependencies are informational in an index; Helm reads them from the chart), then prose.
_CUTS: Final = (("dependencies", "keywords"), ("description", "icon", "home", "kubeVersion"))


def bounded_entry(
    v: IndexedVersion, server: str
) -> tuple[dict[str, Any] | None, str, tuple[str, ...]]:
    """(entry, its serialisation inside the index, fields left out); entry None when even the
    cut entry is over MAX_ENTRY_BYTES. A cheap JSON size (C code, no wrapping) comes first so
    a huge entry is never put through the YAML emitter whole."""
    entry = v.entry(server)
    left_out: list[str] = []
    for cut in (*_CUTS, None):
        if _within_size(entry, 2 * MAX_ENTRY_BYTES) and len(json.dumps(entry)) <= (
            2 * MAX_ENTRY_BYTES
        ):
            chunk = _entry_chunk(entry)
            if len(chunk) <= MAX_ENTRY_BYTES:
                return entry, chunk, tuple(left_out)
        if cut is None:
            break
        gone = [k for k in cut if k in entry]
        left_out += gone
        entry = {k: value for k, value in entry.items() if k not in cut}
    return None, "", tuple(left_out)


def _within_size(value: Any, limit: int) -> bool:
    """Whether ``value`` (JSON-like) takes at most about ``limit`` characters, found by a walk
    that stops as soon as it is over (shared or deeply nested objects never get serialised
    whole) and refuses nesting deeper than MAX_READ_DEPTH + 2."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    left = limit
    while stack:
        item, depth = stack.pop()
        left -= len(item) + 4 if isinstance(item, str) else 8
        if left < 0 or depth > MAX_READ_DEPTH + 2:
            return False
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((x, depth + 1) for x in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((x, depth + 1) for x in item)
    return True


# The C emitter when PyYAML has libyaml (the same output, about 50 times faster).
_DUMPER: Final = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_PREFIX: Final = "apiVersion: v1\nentries:\n"
_GENERATED_BYTES: Final = 64  # "generated: '2025-01-02T03:04:05.123456Z'\n" and room to spare
_ONE_ENTRY_HEAD: Final = "entries:\n  k:\n"


def _dump(value: Any) -> str:
    return yaml.dump(value, Dumper=_DUMPER, sort_keys=False)


def _entry_chunk(entry: dict[str, Any]) -> str:
    """The lines one entry takes in the index, dumped where it sits (two levels deep), so
    line wrapping is the same as in the whole document: sizes add up exactly."""
    return _dump({"entries": {"k": [entry]}}).removeprefix(_ONE_ENTRY_HEAD)


def _chart_header(name: str) -> str:
    """The key line(s) of one chart under `entries:`. A name over 128 characters is written
    as an explicit `? name` key; the entries then follow a lone `:`."""
    dumped = _dump({"entries": {name: [0]}}).removeprefix("entries:\n")
    if dumped.endswith(":\n  - 0\n"):
        return dumped.removesuffix("  - 0\n")
    return dumped.removesuffix(" - 0\n") + "\n"  # the explicit key's `  : - 0`


def _order(v: IndexedVersion) -> tuple[Any, ...]:
    parsed = parse_version(v.version)
    return (1, parsed.sort_key()) if parsed else (0, v.version)


# index.yaml as we write it nests 6 levels (entries, chart, list, entry, urls/dependencies,
# a dependency's fields); deeper, or with aliases, it was not written by us.
MAX_READ_DEPTH: Final = 8
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Untrusted(ValueError):
    pass


def _load_bounded(text: str, max_bytes: int = MAX_INDEX_BYTES * 2) -> Any:
    """A YAML document that can cost no more than its size: refused when over ``max_bytes``,
    when it holds an anchor or alias (a few hundred bytes of nested aliases expand to
    gigabytes) or nests deeper than MAX_READ_DEPTH (a RecursionError in the composer). The
    events are checked first, then the text is composed; both passes run in libyaml."""
    if len(text) > max_bytes:
        raise _Untrusted("over the size limit")
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Untrusted("an alias or anchor")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_READ_DEPTH:
                raise _Untrusted("nested too deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def read_index(text: str, server: str) -> set[tuple[str, str]]:
    """The (chart, version) pairs of an index.yaml we wrote before for ``server``, so that
    after a restart Events go out only for versions new since. Nothing else is taken from
    it: the ConfigMap sits in the tenant's namespace, where she can rewrite it, so chart
    metadata always comes from the registry again. Anything unreadable, too big, too deep or
    with aliases reads as nothing (the first sync then announces its versions in one
    summary Event)."""
    try:
        document = _load_bounded(text)
    except Exception:  # any failure here only means "no previous index"
        return set()
    entries = document.get("entries") if isinstance(document, dict) else None
    found: set[tuple[str, str]] = set()
    prefix = f"oci://{server}/"
    for name, rows in entries.items() if isinstance(entries, dict) else ():
        for entry in rows if isinstance(rows, list) else ():
            if not isinstance(entry, dict):
                continue
            urls, version = entry.get("urls"), entry.get("version")
            url = urls[0] if isinstance(urls, list) and urls else None
            if isinstance(name, str) and isinstance(version, str) and str(url).startswith(prefix):
                found.add((name, version))
    return found
