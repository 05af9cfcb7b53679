"""Watch-fed stores of Kubernetes objects, each object kept as the small value its owner's
projection makes of it (pullsecrets.index keeps namespaces and ServiceAccounts as short
tuples, ocireg's Secrets as one packed bytes object each, rather than API objects).

One list, then a watch from the list's resourceVersion per kind, in a thread of its own
(`Watcher`); the watch resumes where it stopped after each server timeout, re-lists after
410 Gone and every `relist` seconds (a safety net for anything missed), and backs off on
errors. Registries then compare what they want against this view and write only the
differences, instead of listing everything on every resync.

A `Store` is not trusted before its first complete list (`synced`): acting on a partial
view would delete or skip things wrongly.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from kubernetes.client.exceptions import ApiException

from ocireg.backoff import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

# The API server ends a watch after this many seconds; the watcher resumes from there.
WATCH_TIMEOUT = 300
# Everything is listed again this often even when every watch went well.
RELIST_SECONDS = 1800.0
BACKOFF_CAP = 30.0


class Store(Generic[T]):
    """Objects of one kind by namespace and name, each reduced by ``extract``. With
    ``version`` (the reduced value's resourceVersion as a number, None when it is not one),
    an event older than what is known is ignored; without, every event is taken (a store
    fed only by its watch gets them in order). With ``group``, how many objects each group
    holds is counted as they come and go (`count`)."""

    def __init__(
        self,
        kind: str,
        extract: Callable[[Mapping[str, Any]], T],
        version: Callable[[T], int | None] | None = None,
        group: Callable[[T], Hashable] | None = None,
    ) -> None:
        self.kind = kind
        self._extract = extract
        self._version = version
        self._group = group
        self._counts: Counter[Hashable] = Counter()
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, T]] = {}
        self.synced = threading.Event()
        # Counts the changes to what is known (not events): equal counts, nothing changed.
        self.changes = 0
        # Per namespace holding objects, the count at its last change (see changes_in).
        self._changed_in: dict[str, int] = {}

    @staticmethod
    def key(body: Mapping[str, Any]) -> Key:
        """(namespace, name), interned: the same names recur in every store and namespace."""
        meta = body.get("metadata") or {}
        return sys.intern(meta.get("namespace") or ""), sys.intern(meta.get("name") or "")

    def _older(self, state: T, known: T) -> bool:
        if self._version is None:
            return False
        version, was = self._version(state), self._version(known)
        return version is not None and was is not None and version < was

    def apply(self, event: str, body: Mapping[str, Any]) -> Key | None:
        """One watch event (ADDED, MODIFIED, DELETED) or a write of our own; returns the
        key if what is known about the object changed. An event older than what is known
        (our own write is noted before its event arrives) is ignored."""
        namespace, name = self.key(body)
        state = self._extract(body)  # a deleted object's too: its version is compared
        with self._lock:
            known = self._items.get(namespace, {}).get(name)
            if known is not None and self._older(state, known):
                return None
            if event == "DELETED":
                if known is None:
                    return None
                self._remove(namespace, name)
                return namespace, name
            if known is not None and known == state:
                return None
            self._items.setdefault(namespace, {})[name] = state
            self._counted(known, state)
            self._changed(namespace)
            return namespace, name

    def forget(self, namespace: str, name: str) -> None:
        """Our own delete, before its event arrives."""
        with self._lock:
            if name in self._items.get(namespace, {}):
                self._remove(namespace, name)

    def _remove(self, namespace: str, name: str) -> None:  # under the lock
        names = self._items[namespace]
        self._counted(names.pop(name), None)
        if names:
            self._changed(namespace)
        else:  # nothing left: neither the namespace's dict nor its count is kept
            del self._items[namespace]
            self._changed_in.pop(namespace, None)
            self.changes += 1

    def _counted(self, gone: T | None, came: T | None) -> None:  # under the lock
        if self._group is None:
            return
        if gone is not None:
            key = self._group(gone)
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]
        if came is not None:
            self._counts[self._group(came)] += 1

    def count(self, group: Hashable) -> int:
        """How many objects known are in ``group`` (0 without a ``group`` function)."""
        with self._lock:
            return self._counts.get(group, 0)

    def _changed(self, namespace: str) -> None:  # under the lock
        self.changes += 1
        self._changed_in[namespace] = self.changes

    def changes_in(self, namespace: str) -> int:
        """What ``changes`` was when something in ``namespace`` last changed; 0 while it
        holds nothing. Equal answers: what is known there is as it was (a namespace
        emptied and filled again answers anew; one emptied answers 0, which it can only
        have answered before when it was empty then too)."""
        with self._lock:
            return self._changed_in.get(namespace, 0)

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> set[Key]:
        """A complete list: everything known is replaced at once. Returns the keys that
        changed (added, removed or different)."""
        fresh: dict[str, dict[str, T]] = {}
        for body in bodies:
            namespace, name = self.key(body)
            fresh.setdefault(namespace, {})[name] = self._extract(body)
        counts: Counter[Hashable] = Counter()
        if self._group is not None:
            for names in fresh.values():
                counts.update(self._group(item) for item in names.values())
        with self._lock:
            old, self._items, self._counts = self._items, fresh, counts
        changed = set()
        for namespace in old.keys() | fresh.keys():
            before, after = old.get(namespace, {}), fresh.get(namespace, {})
            for name in before.keys() | after.keys():
                if name not in before or name not in after or before[name] != after[name]:
                    changed.add((namespace, name))
        with self._lock:
            for namespace, _ in changed:
                self._changed(namespace)
            self._changed_in = {n: c for n, c in self._changed_in.items() if n in self._items}
        self.synced.set()
        return changed

    def get(self, namespace: str, name: str) -> T | None:
        with self._lock:
            return self._items.get(namespace, {}).get(name)

    def in_namespace(self, namespace: str) -> dict[str, T]:
        with self._lock:
            return dict(self._items.get(namespace, {}))

    def items(self) -> list[tuple[str, str, T]]:
        with self._lock:
            return [
                (namespace, name, item)
                for namespace, names in self._items.items()
                for name, item in names.items()
            ]

    def scan(self) -> Iterator[tuple[str, str, T]]:
        """Like items(), a namespace at a time: holds one namespace's copy, not the whole
        store's (a resync of 100,000 Secrets would otherwise copy them all, per registry)."""
        with self._lock:
            namespaces = list(self._items)
        for namespace in namespaces:
            with self._lock:
                names = list(self._items.get(namespace, {}).items())
            for name, item in names:
                yield namespace, name, item

    def __len__(self) -> int:
        with self._lock:
            return sum(len(names) for names in self._items.values())


class Source(Protocol):
    """Where a Watcher reads from (kube.WatchSource against the API)."""

    def page(self, token: str | None) -> dict[str, Any]:
        """One page of the list: the API's JSON (items, metadata.continue and
        metadata.resourceVersion)."""
        ...

    def watch(self, resource_version: str, timeout: int) -> Iterator[dict[str, Any]]:
        """Watch events as the API's JSON ({"type": ..., "object": ...})."""
        ...


# A broken watch or list is retried after 1, 2, 4 ... seconds, at most 30.
WATCH_BACKOFF = Backoff(base=1.0, cap=BACKOFF_CAP, jitter=0.2)


def backoff(failures: int) -> float:
    return WATCH_BACKOFF.delay(failures)


class Watcher:
    """Keeps one Store up to date from a Source. ``changed(namespace, name)`` is called for
    every change after the first complete list (never for the list itself), and for what a
    later re-list finds different."""

    def __init__(
        self,
        source: Source,
        store: Store[Any],
        changed: Callable[[str, str], None],
        relist: float = RELIST_SECONDS,
        timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self.source = source
        self.store = store
        self.changed = changed
        self.relist = relist
        self.timeout = timeout
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.run, name=f"ocireg-watch-{store.kind}", daemon=True
        )

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def _list(self) -> str:
        """List everything, a page at a time; only the small states are kept, each page
        goes as soon as it is read. Returns the list's resourceVersion."""
        last: dict[str, Any] = {}

        def bodies() -> Iterator[Mapping[str, Any]]:
            token = None
            while True:
                page = self.source.page(token)
                last.update(page.get("metadata") or {})
                yield from page.get("items") or []
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    return

        was_synced = self.store.synced.is_set()
        changed = self.store.replace(bodies())
        log.debug("listed %d %s (%d changed)", len(self.store), self.store.kind, len(changed))
        if was_synced:
            for key in sorted(changed):
                self._notify(key)
        return last.get("resourceVersion") or ""

    def _notify(self, key: Key) -> None:
        try:
            self.changed(*key)
        except Exception:  # a failing listener must not stop the watch
            log.exception("handling a change of %s %s/%s failed", self.store.kind, *key)

    def _gone(self) -> None:
        """The resourceVersion to resume from is too old (410 Gone): the caller lists again."""
        log.info("re-listing %s after 410 Gone", self.store.kind)

    def run(self) -> None:
        version: str | None = None
        listed_at = 0.0
        failures = 0
        while not self.stop.is_set():
            try:
                if version is None or time.monotonic() - listed_at >= self.relist:
                    version = self._list()
                    listed_at = time.monotonic()
                for event in self.source.watch(version, self.timeout):
                    kind, body = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if body.get("code") == 410:
                            self._gone()  # too old to resume from
                            version = None
                            break
                        raise ApiException(status=body.get("code"), reason=body.get("message"))
                    if kind != "BOOKMARK":
                        key = self.store.apply(str(kind), body)
                        if key is not None:
                            self._notify(key)
                    version = (body.get("metadata") or {}).get("resourceVersion") or version
                    if self.stop.is_set():
                        return
                failures = 0
            except ApiException as error:
                if error.status == 410:
                    self._gone()
                    version = None
                    continue
                failures += 1
                log.warning("watching %s: HTTP %s; retrying", self.store.kind, error.status)
                self.stop.wait(backoff(failures))
            except Exception as error:  # connection refused or reset, timeouts, bad JSON
                failures += 1
                log.warning("watching %s: %s; retrying", self.store.kind, error)
                self.stop.wait(backoff(failures))
