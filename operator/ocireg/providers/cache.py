"""One mint per identity: expiring credentials are shared by every registry object using the
same provider identity and region/registry, and renewed before they expire.

Who shares is decided by the key alone, so every provider builds it with
ResolveContext.mint_key: a digest of every input its mint consumes (the whole secret, never
public identifiers such as a key id or client email) and of the trust domain (a tenant's
namespace, or the cluster kind). A caller without the same secret in the same trust domain
cannot reach another's credential, nor its failure and backoff. Each provider says next to its
key why it is safe. (The registry client's Bearer token cache is per client, never shared.)

Keys bound to secrets are also keys a tenant can mint at will (write random keys into her
Secret, one new key per write): so entries no object asked for in IDLE_AFTER are dropped, and
a tenant's namespace holds at most PER_TENANT keys, its least recently used evicted first.
Only the tenant's own entries ever make room; cluster objects' are bounded by idleness only.

Renewal happens no later than (1 - renewBefore) of the lifetime, a little earlier at random
(jitter, so many objects do not renew at the same instant). A credential that arrives already
expired, or with a tiny lifetime, is renewed no sooner than MIN_RENEW_AFTER after it was
minted: no hot loop, whatever the provider says."""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from ocireg import metrics
from ocireg.api.credential import Credential
from ocireg.api.durations import renew_margin
from ocireg.api.errors import ReconcileError
from ocireg.api.reasons import Reason
from ocireg.backoff import Backoff

log = logging.getLogger(__name__)

MIN_RENEW_AFTER = dt.timedelta(seconds=20)
# Renewing an already-expired credential again sooner would not help; say so and wait.
EXPIRED_RENEW_AFTER = dt.timedelta(minutes=5)
JITTER = 0.1
# Longer than any refresh interval an object asks again within (reconciles tick every 10 s).
IDLE_AFTER = dt.timedelta(hours=2)
SWEEP_EVERY = dt.timedelta(minutes=1)
# A failing mint is retried as its registry object would be (pullsecrets.schedule).
MINT_BACKOFF = Backoff(base=10.0, cap=300.0)
PER_TENANT = 32  # distinct identities one namespace keeps minted at once


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Failure:
    error: Exception
    count: int
    retry_at: dt.datetime


@dataclass(frozen=True)
class Entry:
    credential: Credential
    issued_at: dt.datetime
    jitter: float  # fraction of the renewal window given up, drawn once per mint


def renew_at(
    issued_at: dt.datetime, expires_at: dt.datetime | None, renew_before: str, jitter: float
) -> dt.datetime | None:
    """When a credential minted at ``issued_at`` should be renewed (None: it does not expire)."""
    if expires_at is None:
        return None
    lifetime = expires_at - issued_at
    if lifetime <= dt.timedelta(0):
        return issued_at + EXPIRED_RENEW_AFTER
    window = lifetime - renew_margin(renew_before, lifetime)
    return issued_at + max(MIN_RENEW_AFTER, window * (1 - jitter))


def provider_failed(provider: str, error: BaseException) -> ReconcileError:
    """The condition for an unexpected exception from a provider: its type only (the text
    may quote a secret or an answer), retried with backoff. The log gets the type and where
    it was raised (frames, not the message)."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    log.warning("the %s provider raised %s:\n%s", provider, type(error).__name__, frames)
    return ReconcileError(
        Reason.PROVIDER_ERROR,
        f"the {provider} provider failed unexpectedly ({type(error).__name__}); retried with "
        "backoff, see the operator's log",
        transient=True,
    )


class MintCache:
    def __init__(self, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, Entry] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._failures: dict[Hashable, Failure] = {}
        # Every key asked for, with when and by which tenant (None: a cluster object), the
        # least recently used first; and each tenant's keys in the same order.
        self._used: OrderedDict[Hashable, tuple[dt.datetime, Hashable | None]] = OrderedDict()
        self._by_tenant: dict[Hashable, OrderedDict[Hashable, None]] = {}
        self._swept = clock()
        self.mints: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def _touch(self, key: Hashable, tenant: Hashable | None, now: dt.datetime) -> None:
        """Record a use of ``key``; drop idle keys, and the tenant's oldest beyond its share.
        Called with self._lock held; O(1) apart from what it drops."""
        self._used[key] = (now, tenant)
        self._used.move_to_end(key)
        evict: list[Hashable] = []
        if tenant is not None:
            own = self._by_tenant.setdefault(tenant, OrderedDict())
            own[key] = None
            own.move_to_end(key)
            if len(own) > PER_TENANT:
                evict.extend(list(own)[: len(own) - PER_TENANT])
        if now - self._swept >= SWEEP_EVERY:
            self._swept = now
            for old, (used, _) in self._used.items():
                if now - used < IDLE_AFTER:
                    break  # ordered by use: the rest are newer
                evict.append(old)
        for old in evict:
            lock = self._key_locks.get(old)
            if old == key or (lock is not None and lock.locked()):
                continue  # in use right now: kept until a later sweep
            _, owner = self._used.pop(old, (now, None))
            if owner is not None and owner in self._by_tenant:
                self._by_tenant[owner].pop(old, None)
                if not self._by_tenant[owner]:
                    del self._by_tenant[owner]
            self._entries.pop(old, None)
            self._failures.pop(old, None)
            self._key_locks.pop(old, None)

    def get(
        self,
        key: Hashable,
        renew_before: str,
        mint: Callable[[], Credential],
        max_age: dt.timedelta | None = None,
        tenant: Hashable | None = None,
    ) -> Credential:
        """The cached credential for ``key`` unless it is due for renewal; otherwise mint one
        (once, even when several registry objects ask at the same time). ``max_age`` bounds
        how long a credential without an expiry is kept; expiring ones follow their expiry.
        ``tenant``: whose share of the cache the key counts against (None: a cluster object)."""
        with self._lock:
            self._touch(key, tenant, self._clock())
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            entry = self._entries.get(key)
            now = self._clock()
            if entry is not None:
                due = renew_at(
                    entry.issued_at, entry.credential.expires_at, renew_before, entry.jitter
                )
                if max_age is not None and due is None:
                    due = entry.issued_at + max_age
                if due is None or now < due:
                    return entry.credential
            failure = self._failures.get(key)
            if failure is not None and now < failure.retry_at:
                raise failure.error  # still backing off: do not ask the provider again yet
            provider = str(key[0]) if isinstance(key, tuple) else str(key)
            try:
                credential = mint()
            except Exception as raised:
                # Any exception, not only ReconcileError: one that escaped would skip the
                # backoff (the provider asked again on every tick) and reach kopf with no
                # condition. Only its type is kept: its text may quote the secret.
                error = (
                    raised
                    if isinstance(raised, ReconcileError)
                    else provider_failed(provider, raised)
                )
                count = failure.count + 1 if failure else 1
                delay = MINT_BACKOFF.delay(count, error.retry_after)
                self._failures[key] = Failure(error, count, now + dt.timedelta(seconds=delay))
                self.errors[provider] += 1
                metrics.MINT_ERRORS.labels(provider, error.reason).inc()
                if error is raised:
                    raise
                raise error from None
            self._failures.pop(key, None)
            issued = now
            expires = credential.expires_at
            note = credential.note
            if expires is not None and expires <= issued:
                note = (
                    f"the provider issued a credential already expired (expiresAt "
                    f"{expires.isoformat()}); renewing every "
                    f"{int(EXPIRED_RENEW_AFTER.total_seconds())}s; check the clocks"
                )
            credential = replace(credential, issued_at=issued, note=note)
            self._entries[key] = Entry(credential, issued, random.uniform(0, JITTER))  # noqa: S311
            self.mints[credential.provider] += 1
            metrics.MINTS.labels(credential.provider).inc()
            return credential

    def next_renewal(self, credential: Credential, renew_before: str) -> dt.datetime | None:
        """When ``credential`` (as returned by get) is due, for status.nextRefreshAt."""
        if credential.issued_at is None:
            return None
        with self._lock:
            entry = next((e for e in self._entries.values() if e.credential is credential), None)
        jitter = entry.jitter if entry else 0.0
        return renew_at(credential.issued_at, credential.expires_at, renew_before, jitter)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._failures.pop(key, None)
            _, owner = self._used.pop(key, (None, None))
            if owner is not None:
                self._by_tenant.get(owner, OrderedDict()).pop(key, None)
