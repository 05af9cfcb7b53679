"""The cluster as the namespace jobs see it: three watch-fed stores (kube.cache) of
namespaces (labels, phase), ServiceAccounts (their pull Secret references) and the Secrets
ocireg manages (labels, type and a digest of the data), each object kept as a short tuple
or, for the Secrets, one packed bytes object (plan's projections) rather than an API object.

`Dependents` is the other direction: which registry objects read a given Secret, ConfigMap
or base object in their last run, so a watch event on it runs exactly those."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ocireg.api.ownership import RegistryRef
from ocireg.kube.cache import Store
from ocireg.pullsecrets.plan import LABEL_UID, account_state, secret_state


class NamespaceState(NamedTuple):
    labels: Mapping[str, str]
    phase: str


def namespace_state(body: Mapping[str, Any]) -> NamespaceState:
    meta = body.get("metadata") or {}
    phase = (body.get("status") or {}).get("phase") or "Active"
    if meta.get("deletionTimestamp"):
        phase = "Terminating"
    labels = {sys.intern(k): sys.intern(v) for k, v in (meta.get("labels") or {}).items()}
    return NamespaceState(labels, sys.intern(phase))


class ClusterIndex:
    """The three stores the fan-out decides from."""

    def __init__(self) -> None:
        self.namespaces: Store[NamespaceState] = Store("namespaces", namespace_state)
        # Ours are written here too (fanout._written): an older event must not undo that.
        self.accounts = Store("serviceaccounts", account_state, lambda s: s.version)
        # Counted by owner (its uid label): how many Secrets each registry object has now.
        self.secrets = Store(
            "secrets", secret_state, lambda s: s.version, lambda s: s.label(LABEL_UID)
        )

    @property
    def synced(self) -> bool:
        return all(s.synced.is_set() for s in (self.namespaces, self.accounts, self.secrets))

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for store in (self.namespaces, self.accounts, self.secrets):
            if not store.synced.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True


# ("Secret" | "ConfigMap" | a registry kind, namespace, name), as reconcile.Reads records it.
Dependency = tuple[str, str, str]


class Dependents:
    """What each registry object read in its last run, and the reverse: who read what."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[RegistryRef, frozenset[Dependency]] = {}
        self._readers: dict[Dependency, set[RegistryRef]] = {}

    def record(self, ref: RegistryRef, reads: Iterable[Dependency]) -> None:
        """Replace what ``ref`` depends on (its reads can change with its spec)."""
        fresh = frozenset((sys.intern(k), sys.intern(ns), sys.intern(n)) for k, ns, n in reads)
        with self._lock:
            old = self._reads.get(ref, frozenset())
            if old == fresh:
                return
            for key in old - fresh:
                self._drop(key, ref)
            for key in fresh - old:
                self._readers.setdefault(key, set()).add(ref)
            self._reads[ref] = fresh

    def add(self, ref: RegistryRef, key: Dependency) -> None:
        """One read as it happens (record replaces the whole set when the run ends)."""
        key = (sys.intern(key[0]), sys.intern(key[1]), sys.intern(key[2]))
        with self._lock:
            known = self._reads.get(ref, frozenset())
            if key not in known:
                self._reads[ref] = known | {key}
                self._readers.setdefault(key, set()).add(ref)

    def forget(self, ref: RegistryRef) -> None:
        with self._lock:
            for key in self._reads.pop(ref, frozenset()):
                self._drop(key, ref)

    def of(self, kind: str, namespace: str, name: str) -> list[RegistryRef]:
        """The objects whose last run read this one."""
        with self._lock:
            return list(self._readers.get((kind, namespace, name), ()))

    def _drop(self, key: Dependency, ref: RegistryRef) -> None:
        readers = self._readers.get(key)
        if readers is not None:
            readers.discard(ref)
            if not readers:
                del self._readers[key]
