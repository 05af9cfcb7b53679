"""The cluster as the namespace jobs see it: three watch-fed stores (kube.cache) of
namespaces (labels, phase), ServiceAccounts (their pull Secret references) and the Secrets
ocireg manages (labels, type and a digest of the data), each object kept as a short tuple
(plan's projections) rather than an API object."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from ocireg.kube.cache import Store
from ocireg.pullsecrets.plan import account_state, secret_state


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
        self.accounts = Store("serviceaccounts", account_state)
        self.secrets = Store("secrets", secret_state)

    @property
    def synced(self) -> bool:
        return all(s.synced.is_set() for s in (self.namespaces, self.accounts, self.secrets))

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for store in (self.namespaces, self.accounts, self.secrets):
            if not store.synced.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True
