"""Events on the registry objects: where `kubectl describe` looks for them, counted the way
client-go's EventRecorder counts them, and posted from one thread.

Where: an Event about an OCIRegistry lives in the object's namespace. One about a
ClusterOCIRegistry lives in `default` with an empty involvedObject.namespace: kubectl describe
selects a cluster-scoped object's Events by involvedObject name, kind, uid and namespace ""
across all namespaces, and the API server keeps such Events (ones without eventTime) only in
`default`. kopf set involvedObject.namespace to the namespace it posted in, so describe
showed none.

How many: client-go's EventCorrelator (tools/record/events_cache.go) with its defaults. An
Event seen again updates the count and lastTimestamp of the one already posted (describe shows
"x3 over 10m") instead of adding another; more than 10 different messages with one reason about
one object within 10 minutes become one "(combined from similar events)" Event; an object may
have 25 Events of a type at once, then one per 5 minutes. `post` never blocks its caller: at
most 1,000 Events wait, as in client-go; past that they are dropped, and the log says so.

Why our own: the Python Kubernetes client has no recorder (client-go's is Go code), and
kopf's posts each Event as given, with no counting and in the posting namespace, so a
resync that finds the same conflict every period would add an Event each time."""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import kubernetes

from ocireg.api.names import GROUP, VERSION
from ocireg.api.ownership import RegistryRef
from ocireg.kube.client import ApiError, CoreV1

log = logging.getLogger(__name__)

COMPONENT = "ocireg"  # source.component: the FROM column of `kubectl describe`
CLUSTER_EVENTS_NAMESPACE = "default"
MAX_QUEUED = 1000
WRITE_TIMEOUT = 10.0  # seconds per API call: a hung API server never holds the thread
MAX_MESSAGE = 1024  # the API's limit for an Event's note
# client-go's defaults (events_cache.go)
CACHE_ENTRIES = 4096
SIMILAR_MAX = 10
SIMILAR_SECONDS = 600.0
BURST = 25
REFILL_SECONDS = 300.0
COMBINED = "(combined from similar events): "

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """At most ``size`` entries; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.size:
            self.items.popitem(last=False)


@dataclass(frozen=True)
class Event:
    about: RegistryRef
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Write:
    """One Event to send: ``body`` is created, or when ``count`` > 1 the Event of that name
    gets the new count, lastTimestamp and message (created anew if the API server has
    dropped it: it keeps Events for an hour)."""

    body: dict[str, Any]

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def count(self) -> int:
        return int(self.body["count"])

    def patch(self) -> dict[str, Any]:
        return {k: self.body[k] for k in ("count", "lastTimestamp", "message")}


@dataclass
class _Similar:
    messages: set[str]
    last: float


@dataclass
class _Seen:
    name: str
    count: int
    first: str


@dataclass
class _Bucket:
    tokens: float
    at: float


def _stamp(now: float) -> str:
    return dt.datetime.fromtimestamp(int(now), dt.UTC).isoformat().replace("+00:00", "Z")


class Correlator:
    """client-go's EventCorrelator (see the module text). No I/O: the caller says what time
    it is; one caller at a time."""

    def __init__(self, instance: str, entries: int = CACHE_ENTRIES) -> None:
        self.instance = instance[:128]  # the API's limit for reportingInstance
        self.similar: _Lru[tuple[str, ...], _Similar] = _Lru(entries)
        self.seen: _Lru[tuple[str, ...], _Seen] = _Lru(entries)
        self.buckets: _Lru[tuple[str, ...], _Bucket] = _Lru(entries)
        self._last_name = 0

    def correlate(self, event: Event, now: float) -> Write | None:
        """What to send for ``event`` at ``now``; None when its object has had too many
        Events of its type lately (it is still counted)."""
        ref = event.about
        about = (ref.kind, ref.namespace or "", ref.name, ref.uid or "", event.type)
        group = (*about, event.reason)
        message = event.message[:MAX_MESSAGE]
        similar = self.similar.get(group)
        if similar is None or now - similar.last > SIMILAR_SECONDS:
            similar = _Similar(set(), now)
        similar.messages.add(message)
        similar.last = now
        self.similar.put(group, similar)
        key: tuple[str, ...] = (*group, message)
        if len(similar.messages) >= SIMILAR_MAX:
            similar.messages.pop()  # it stays at the threshold, as client-go's does
            message = (COMBINED + message)[:MAX_MESSAGE]
            key = group  # one combined Event per reason, counted
        stamp = _stamp(now)
        seen = self.seen.get(key) or _Seen(self._name(ref.name, now), 0, stamp)
        seen.count += 1
        self.seen.put(key, seen)
        if not self._take(about, now):
            return None
        return Write(self._body(event, message, seen, stamp))

    def _take(self, about: tuple[str, ...], now: float) -> bool:
        """A token of the object's bucket for this type: BURST at once, then one per
        REFILL_SECONDS."""
        bucket = self.buckets.get(about) or _Bucket(BURST, now)
        bucket.tokens = min(BURST, bucket.tokens + (now - bucket.at) / REFILL_SECONDS)
        bucket.at = now
        self.buckets.put(about, bucket)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _name(self, name: str, now: float) -> str:
        """client-go's `<object>.<nanoseconds in hex>`, unique within this process."""
        self._last_name = max(int(now * 1e9), self._last_name + 1)
        return f"{name[:230]}.{self._last_name:x}"

    def _body(self, event: Event, message: str, seen: _Seen, stamp: str) -> dict[str, Any]:
        ref = event.about
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": ref.kind, "name": ref.name}
        if ref.namespace:
            involved["namespace"] = ref.namespace
        if ref.uid:
            involved["uid"] = ref.uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": seen.name,
                "namespace": ref.namespace or CLUSTER_EVENTS_NAMESPACE,
            },
            "involvedObject": involved,
            "type": event.type,
            "reason": event.reason,
            "message": message,
            "count": seen.count,
            "firstTimestamp": seen.first,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
        }


class EventRecorder:
    """Posts Events from its own thread, `ocireg-events`; `post` only queues."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = CoreV1(api)
        # The pod's name in a cluster, as client-go's recorders use the host.
        self.correlator = Correlator(instance or socket.gethostname())
        self.queue: queue.Queue[Event | None] = queue.Queue(MAX_QUEUED)
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._dropping = False
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ocireg-events", daemon=True)
        self._thread.start()

    def post(self, about: RegistryRef, type_: str, reason: str, message: str) -> None:
        try:
            self.queue.put_nowait(Event(about, type_, reason, message))
        except queue.Full:
            if not self._dropping:
                log.warning("%d Events wait to be posted; dropping new ones", MAX_QUEUED)
            self._dropping = True

    def stop(self, timeout: float = 5.0) -> None:
        """Post what is queued (for at most ``timeout``), then end the thread."""
        if self._thread is None:
            return
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (event := self.queue.get()) is not None:
            if self._dropping and self.queue.qsize() < MAX_QUEUED // 2:
                self._dropping = False
            self.send(event)

    def send(self, event: Event) -> None:
        """Correlate and write one Event; a failure is logged once until a write works."""
        write = self.correlator.correlate(event, self.clock())
        if write is None:
            return
        try:
            self._write(write)
        except Exception as error:
            if _namespace_gone(error):  # the object goes with it: nobody will read it
                log.debug(
                    "no %s Event about %s: its namespace is gone", event.reason, event.about.display
                )
                return
            if not self._failing:
                status = error.status if isinstance(error, ApiError) else None
                why = f"HTTP {status}" if status else type(error).__name__
                log.warning(
                    "could not post the %s Event about %s (%s); further failures are not "
                    "logged until an Event is posted",
                    event.reason,
                    event.about.display,
                    why,
                )
            self._failing = True
        else:
            if self._failing:
                log.info("Events are posted again")
            self._failing = False

    def _write(self, write: Write) -> None:
        if write.count > 1:
            try:
                self.core.patch_namespaced_event(
                    write.name, write.namespace, write.patch(), WRITE_TIMEOUT
                )
                return
            except ApiError as error:
                if error.status != 404:
                    raise
        self.core.create_namespaced_event(write.namespace, write.body, WRITE_TIMEOUT)


def _namespace_gone(error: Exception) -> bool:
    """The API's answer for an Event in a namespace that no longer exists or is being
    deleted (404, or 403 with the cause NamespaceTerminating)."""
    if not isinstance(error, ApiError) or error.status not in (403, 404):
        return False
    if error.status == 404:
        return True
    try:
        causes = json.loads(error.body or "{}").get("details", {}).get("causes") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)
