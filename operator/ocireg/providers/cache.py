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

Renewal happens no later than (1 - renewBefore) of the lifetime, a little earlier (jitter,
drawn from the mint under the operator's key so many objects do not renew at the same
instant, and a reused credential is renewed when it would have been). A credential that
arrives already expired, or with a tiny lifetime, is renewed no sooner than MIN_RENEW_AFTER
after it was minted: no hot loop, whatever the provider says.

After a restart the cache is empty; before minting a key it asks the caller's ``recall``
(providers/recall.py) for the credential this object's copies hold, which it hands over only
when the object's status seal proves it is what this object minted from these very inputs.
Such a credential is kept exactly as a minted one would be (same issue time and jitter), and
only while it is not due: one mechanism, whatever the provider."""

from __future__ import annotations

import datetime as dt
import logging
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
from ocireg.providers.seal import Sealer

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

    def due(self, renew_before: str, max_age: dt.timedelta | None) -> dt.datetime | None:
        """When this credential is to be renewed (None: never)."""
        due = renew_at(self.issued_at, self.credential.expires_at, renew_before, self.jitter)
        if max_age is not None and due is None:
            due = self.issued_at + max_age
        return due


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


def issue_note(credential: Credential, issued: dt.datetime) -> str:
    """What a user should know about a credential issued at ``issued`` (status message)."""
    expires = credential.expires_at
    if expires is not None and expires <= issued:
        return (
            f"the provider issued a credential already expired (expiresAt "
            f"{expires.isoformat()}); renewing every "
            f"{int(EXPIRED_RENEW_AFTER.total_seconds())}s; check the clocks"
        )
    return credential.note


# Asked with the keyed digest of a mint key (what Credential.minted_from records): the
# credential minted from it that the caller's copies hold, when its status seal vouches for
# it (providers/recall.py), or None.
Recall = Callable[[str], Credential | None]


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
    def __init__(
        self, clock: Callable[[], dt.datetime] = _utcnow, sealer: Sealer | None = None
    ) -> None:
        self._clock = clock
        # The operator's keyed digests (mint keys, seals); one of this process by default.
        self.sealer = sealer if sealer is not None else Sealer()
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
        self.reused: Counter[str] = Counter()  # taken over from the copies after a restart
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
        recall: Recall | None = None,
        fresh: bool = False,
    ) -> Credential:
        """The cached credential for ``key`` unless it is due for renewal; otherwise mint one
        (once, even when several registry objects ask at the same time). ``max_age`` bounds
        how long a credential without an expiry is kept; expiring ones follow their expiry.
        ``tenant``: whose share of the cache the key counts against (None: a cluster object).
        ``recall``: asked, when the cache has nothing for ``key`` (a restart), for the
        credential minted from it that the caller's copies hold (providers/recall.py); it
        is kept instead of minting while it is not due. ``fresh``: mint now, whatever is
        cached, recalled or backing off (a person asked for it: a refresh request)."""
        with self._lock:
            self._touch(key, tenant, self._clock())
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        minted_from = self.sealer.digest("mint-key", key)
        with key_lock:
            entry = None if fresh else self._entries.get(key)
            now = self._clock()
            if entry is None and recall is not None and key not in self._failures and not fresh:
                entry = self._recalled(key, minted_from, recall, renew_before, max_age, now)
            if entry is not None:
                due = entry.due(renew_before, max_age)
                if due is None or now < due:
                    return entry.credential
            failure = self._failures.get(key)
            if failure is not None and now < failure.retry_at and not fresh:
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
            # Whole seconds: the issue time is recorded in status (issuedAt) as it is here,
            # and so is the expiry, which `kubectl get` shows (EXPIRES); rounded down, never
            # later than the provider said.
            issued = now.replace(microsecond=0)
            expires = credential.expires_at
            credential = replace(
                credential,
                issued_at=issued,
                expires_at=None if expires is None else expires.replace(microsecond=0),
                note=issue_note(credential, issued),
                minted_from=minted_from,
            )
            jitter = self.sealer.jitter(minted_from, issued, JITTER)
            self._entries[key] = Entry(credential, issued, jitter)
            self.mints[credential.provider] += 1
            metrics.MINTS.labels(credential.provider).inc()
            return credential

    def _recalled(
        self,
        key: Hashable,
        minted_from: str,
        recall: Recall,
        renew_before: str,
        max_age: dt.timedelta | None,
        now: dt.datetime,
    ) -> Entry | None:
        """The entry for a credential ``recall`` vouches for, if it is not due yet (kept, as
        if minted at its issue time); None otherwise (then it is minted)."""
        try:
            found = recall(minted_from)
        except Exception as error:  # a failed read of a copy: mint, as without recall
            log.warning("reading back a minted credential failed: %s", type(error).__name__)
            return None
        if found is None or found.issued_at is None:
            return None
        issued = found.issued_at
        credential = replace(found, note=issue_note(found, issued), minted_from=minted_from)
        entry = Entry(credential, issued, self.sealer.jitter(minted_from, issued, JITTER))
        due = entry.due(renew_before, max_age)
        if due is not None and now >= due:
            log.info(
                "not reusing the %s credentials issued at %s: due for renewal since %s",
                found.provider,
                issued.isoformat(),
                due.isoformat(),
            )
            return None
        self._entries[key] = entry
        self.reused[credential.provider] += 1
        return entry

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
