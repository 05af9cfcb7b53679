"""Where registry work runs: worker pools in which no namespace or object can hold every
worker (issue 14, point 5).

Reconciles and chart syncs talk to registries, and a registry can be slow on purpose (it
accepts and never finishes answering). Each pool therefore runs one job per object at a time
(`key`), lets one group (a tenant namespace) hold at most `share` of its workers at once, and
takes the next job round-robin over the groups that are below their share: a namespace whose
jobs are stuck only delays its own queued work, and a namespace with a thousand queued jobs
does not go before one with a single job. Cluster objects (the platform team's) and tenant
objects have separate pools, so neither can starve the other.

`ShareQueue` is the decision, pure and unit-tested; `FairPool` runs it on threads.
`KeyedQueue` is the namespace jobs' queue (pullsecrets.fanout): one job per key at a time,
urgent keys first, failed keys retried on a Backoff. `Alarms` wakes each registry object at
the one time it is next due (renewal, re-verification, resync, retry): one thread and a heap
for every object, where a timer per object would poll.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from ocireg.api.ownership import RegistryRef
from ocireg.backoff import Backoff
from ocireg.settings import PoolSizes

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = tuple[Callable[[], Any], "Future[Any]", bool]  # what to run, its future, coalescing


class ShareQueue(Generic[T]):
    """Waiting jobs by group. `pop` gives the next job that may start now: its key is not
    running, its group runs fewer than `share` jobs, and its group is the one that has waited
    longest for a turn (round robin). No threads, no clock: the caller says when a job is
    done."""

    def __init__(self, share: int) -> None:
        self.share = max(1, share)
        self._waiting: dict[Hashable, deque[tuple[Hashable, T]]] = {}  # group -> (key, item)
        self._turns: deque[Hashable] = deque()  # groups that may start a job, in turn order
        self._in_turns: set[Hashable] = set()
        self._running: dict[Hashable, int] = {}  # group -> jobs running
        self._running_keys: set[Hashable] = set()
        self._count = 0  # waiting jobs

    def __len__(self) -> int:
        return self._count

    def push(self, key: Hashable, group: Hashable, item: T) -> None:
        self._waiting.setdefault(group, deque()).append((key, item))
        self._count += 1
        self._offer(group)

    def pop(self) -> tuple[Hashable, Hashable, T] | None:
        """The next (key, group, item) to run, now marked running; None: nothing may start."""
        for _ in range(len(self._turns)):
            group = self._turns.popleft()
            self._in_turns.discard(group)
            jobs = self._waiting.get(group)
            if not jobs:
                continue
            # The group's oldest job whose object is not running already.
            free = (i for i, (key, _) in enumerate(jobs) if key not in self._running_keys)
            found = next(free, None)
            if found is None:
                continue  # offered again when one of its running keys is done
            key, item = jobs[found]
            del jobs[found]
            self._count -= 1
            if not jobs:
                del self._waiting[group]
            self._running[group] = self._running.get(group, 0) + 1
            self._running_keys.add(key)
            self._offer(group)  # to the back of the line: round robin
            return key, group, item
        return None

    def done(self, key: Hashable, group: Hashable) -> None:
        self._running_keys.discard(key)
        left = self._running.get(group, 0) - 1
        if left > 0:
            self._running[group] = left
        else:
            self._running.pop(group, None)
        # An object's jobs are all in its own group: offering that group again is enough.
        self._offer(group)

    def running(self, group: Hashable) -> int:
        return self._running.get(group, 0)

    def waiting(self) -> int:
        return self._count

    def _offer(self, group: Hashable) -> None:
        if (
            group not in self._in_turns
            and self._waiting.get(group)
            and self._running.get(group, 0) < self.share
        ):
            self._turns.append(group)
            self._in_turns.add(group)


class FairPool:
    """Up to `workers` threads (started as needed) running a ShareQueue's jobs."""

    def __init__(self, name: str, workers: int, share: int) -> None:
        self.name = name
        self.workers = max(1, workers)
        self._queue: ShareQueue[Job] = ShareQueue(share)
        self._coalescing: dict[Hashable, Future[Any]] = {}  # key -> its job not started yet
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopped = False

    @property
    def share(self) -> int:
        return self._queue.share

    def submit(
        self, key: Hashable, group: Hashable, run: Callable[[], T], coalesce: bool = False
    ) -> Future[T]:
        """Run `run` when the object `key` runs nothing else and `group` is below its share.
        With `coalesce`, a coalescing job of this key that has not started yet is the one
        run (its future returned): a burst of pokes costs one run."""
        with self._cond:
            if coalesce and key in self._coalescing:
                return self._coalescing[key]
            future: Future[T] = Future()
            if self._stopped:
                future.cancel()
                return future
            if coalesce:
                self._coalescing[key] = future
            self._queue.push(key, group, (run, future, coalesce))
            # Idle threads that have not woken yet count once per waiting job: with one idle
            # thread and two jobs, the second must not wait for the first to finish.
            if self._idle < len(self._queue) and len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _next(self) -> tuple[Hashable, Hashable, Job] | None:
        with self._cond:
            while not self._stopped:
                job = self._queue.pop()
                if job is not None:
                    key, _, (_, future, coalesce) = job
                    if coalesce and self._coalescing.get(key) is future:
                        del self._coalescing[key]  # a poke from now on runs again
                    return job
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            key, group, (run, future, _) = job
            try:
                if future.set_running_or_notify_cancel():  # not cancelled while waiting
                    try:
                        future.set_result(run())
                    except BaseException as error:
                        future.set_exception(error)
            finally:
                with self._cond:
                    self._queue.done(key, group)
                    self._cond.notify_all()  # a job of this key or group may start now


class Pools:
    """The reconcile and chart pools of one operator process."""

    def __init__(self, sizes: PoolSizes) -> None:
        self.sizes = sizes
        share = sizes.namespace_share
        self.tenant_reconciles = FairPool("ocireg-reconcile", sizes.tenant_reconciles, share)
        # Cluster objects are one group each: only one job per object, no namespace share.
        self.cluster_reconciles = FairPool(
            "ocireg-cluster-reconcile", sizes.cluster_reconciles, sizes.cluster_reconciles
        )
        self.tenant_charts = FairPool("ocireg-charts", sizes.tenant_charts, share)
        self.cluster_charts = FairPool(
            "ocireg-cluster-charts", sizes.cluster_charts, sizes.cluster_charts
        )

    def reconcile(
        self, ref: RegistryRef, run: Callable[[], T], coalesce: bool = False
    ) -> Future[T]:
        pool = self.tenant_reconciles if ref.namespaced else self.cluster_reconciles
        return pool.submit(ref, group_of(ref), run, coalesce)

    def charts(self, ref: RegistryRef, run: Callable[[], T], coalesce: bool = False) -> Future[T]:
        pool = self.tenant_charts if ref.namespaced else self.cluster_charts
        return pool.submit(ref, group_of(ref), run, coalesce)

    def stop(self) -> None:
        for pool in (
            self.tenant_reconciles,
            self.cluster_reconciles,
            self.tenant_charts,
            self.cluster_charts,
        ):
            pool.stop()


def group_of(ref: RegistryRef) -> Hashable:
    """Whose share a job counts against: a tenant's namespace; a cluster object its own."""
    if ref.namespaced:
        return ("namespace", ref.namespace or "")
    return ("cluster", ref.name)


class Alarms(Generic[T]):
    """One alarm per key: ``set(key, delay)`` replaces the key's earlier alarm, and
    ``fire(key)`` is called on the alarm thread when it is due (it should only queue work).
    A heap holds every alarm ever set; replaced ones are skipped when they come up."""

    def __init__(self, fire: Callable[[T], None], name: str = "ocireg-alarms") -> None:
        self._fire = fire
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, T]] = []
        self._due: dict[T, int] = {}  # key -> the ticket of its live alarm
        self._tickets = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def set(self, key: T, delay: float) -> None:
        with self._cond:
            ticket = next(self._tickets)
            self._due[key] = ticket
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), ticket, key))
            if len(self._heap) > 2 * len(self._due) + 64:  # drop the replaced ones
                self._heap = [e for e in self._heap if self._due.get(e[2]) == e[1]]
                heapq.heapify(self._heap)
            self._cond.notify()

    def cancel(self, key: T) -> None:
        with self._cond:
            self._due.pop(key, None)

    def due_in(self, key: T) -> float | None:
        """Seconds until the key's alarm (None: none set); for tests and metrics."""
        with self._cond:
            ticket = self._due.get(key)
            found = [due for due, t, _ in self._heap if t == ticket] if ticket is not None else []
        return found[0] - time.monotonic() if found else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _next(self) -> T | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, ticket, key = heapq.heappop(self._heap)
                    if self._due.get(key) == ticket:
                        del self._due[key]
                        return key
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        while (key := self._next()) is not None:
            try:
                self._fire(key)
            except Exception:  # one failing alarm must not stop the others
                log.exception("an alarm for %s failed", key)


def retry_on_failure(
    future: Future[Any],
    ref: RegistryRef,
    what: str,
    failures: dict[RegistryRef, str],
    alarms: Alarms[RegistryRef] | None,
    seconds: float,
    wanted: Callable[[], bool],
) -> None:
    """When ``ref``'s job (``what``) ends: if it raised, log it once while it fails the same
    way (``failures``: the exception type last logged per object) and set its alarm
    ``seconds`` later while it is still ``wanted``; if it worked, forget its failure."""

    def done(finished: Future[Any]) -> None:
        error = None if finished.cancelled() else finished.exception()
        if error is None:
            failures.pop(ref, None)
            return
        if failures.get(ref) != type(error).__name__:
            failures[ref] = type(error).__name__
            log.warning(
                "%s of %s failed: %s; retrying every %ds",
                what,
                ref.display,
                type(error).__name__,
                seconds,
            )
        if alarms is not None and wanted():
            alarms.set(ref, seconds)

    future.add_done_callback(done)


__all__ = ["Alarms", "FairPool", "PoolSizes", "Pools", "ShareQueue", "group_of"]


K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class KeyedQueue(Generic[K, R]):
    """Jobs by key, run by ``workers`` threads: a key runs once at a time, a key submitted
    again before it starts is queued once (its callers share one result), and one submitted
    while it runs runs again afterwards. Urgent keys go before bulk ones. A failed job is
    retried on its own with backoff (and its callers get the exception)."""

    def __init__(self, run: Callable[[K], R], workers: int, name: str, backoff: Backoff) -> None:
        self._run = run
        self._backoff = backoff
        self._cond = threading.Condition()
        self._urgent: deque[K] = deque()
        self._bulk: deque[K] = deque()
        self._waiting: dict[K, Future[R]] = {}
        self._running: dict[K, int] = {}  # key -> ticket
        self._again: set[K] = set()  # submitted while running
        self._retries: list[tuple[float, int, K]] = []
        self._failures: dict[K, int] = {}
        self._tickets = itertools.count()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: K, urgent: bool = False) -> Future[R]:
        with self._cond:
            future = self._waiting.get(key)
            if future is None:
                future = self._waiting[key] = Future()
                (self._urgent if urgent else self._bulk).append(key)
            elif urgent:
                self._urgent.append(key)  # the bulk entry is skipped when it comes up
            if key in self._running:
                self._again.add(key)
            self._cond.notify()
            return future

    def barrier(self) -> None:
        """Wait until every job running now has finished."""
        with self._cond:
            tickets = set(self._running.values())
            self._cond.wait_for(lambda: not tickets & set(self._running.values()))

    def idle(self) -> bool:
        with self._cond:
            return not (self._waiting or self._running)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _next(self) -> tuple[K, Future[R]] | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                while self._retries and self._retries[0][0] <= now:
                    _, _, key = heapq.heappop(self._retries)
                    if key not in self._waiting:
                        self._waiting[key] = Future()
                        self._bulk.append(key)
                for queue in (self._urgent, self._bulk):
                    for _ in range(len(queue)):
                        key = queue.popleft()
                        if key not in self._waiting:
                            continue  # taken through its other entry
                        if key in self._running:
                            self._again.add(key)  # comes back when the running one ends
                            continue
                        self._running[key] = next(self._tickets)
                        return key, self._waiting.pop(key)
                wait = self._retries[0][0] - now if self._retries else None
                self._cond.wait(wait)
            return None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            key, future = item
            retry = None
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run(key))
                self._failures.pop(key, None)
            except Exception as error:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                retry = self._backoff.delay(failures)
                log.warning("%s failed (%s); retrying in %.0fs", key, error, retry)
                future.set_exception(error)
            with self._cond:
                del self._running[key]
                if key in self._again:
                    self._again.discard(key)
                    if key in self._waiting:
                        self._urgent.appendleft(key)
                if retry is not None:
                    heapq.heappush(
                        self._retries, (time.monotonic() + retry, next(self._tickets), key)
                    )
                self._cond.notify_all()
