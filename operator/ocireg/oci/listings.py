"""Paged listings (tag lists, the catalog) within bounded memory: their caps in pages, entries
and bytes, the one memory budget all listings of the process share (with the tenants' part
and each namespace's share), and reading one page within both."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

import requests

from ocireg import egress
from ocireg.api.reasons import Reason
from ocireg.oci.errors import RegistryError, invalid
from ocireg.oci.transport import Transport

MAX_TAG_PAGES: Final = 10_000
# Listings (tags, catalog) are capped per page AND in total, in entries and bytes, so that no
# registry can take the operator past its 256 MiB pod limit: parsed, a tag costs ~100 bytes
# of Python objects. 100,000 tags is several times the largest real repositories (ECR and
# GHCR repositories with tens of thousands of tags, cosign .sig/.att tags included); at 128
# characters per tag (the longest the spec allows) that is 13 MiB of JSON, within the total.
MAX_LISTING_PAGE_BYTES: Final = 8 * 1024 * 1024
MAX_LISTING_BYTES: Final = 16 * 1024 * 1024
MAX_TAGS: Final = 100_000
# Listings read at once (8 repositories per chart sync, several syncs) share one budget for
# the whole process, so that concurrency cannot multiply the caps above past the pod limit
# (256 MiB, about 100 MiB of it the operator itself): a listing holds ~4 bytes of memory per
# byte read (the body, its decoded text, the growing buffer) plus ~160 per entry kept, at
# most 16 MiB x 4 + 100,000 x 160 = 79 MiB. First come, first served let one slow tenant
# registry hold all of it, so tenants have a part: tenant objects' listings hold at most
# TENANT_LISTING_MEMORY together and one namespace's at most half of that (a listing bigger
# than that is refused, naming the limit), which always leaves CLUSTER_LISTING_MEMORY to
# cluster objects (the platform team's, which may use all of it). A listing that finds its
# part full waits for room within its request's deadline, then stops with a transient
# AnswerTooLarge (retried at the next sync). Small listings never notice any of it.
LISTING_MEMORY: Final = 128 * 1024 * 1024
CLUSTER_LISTING_MEMORY: Final = 48 * 1024 * 1024
TENANT_LISTING_MEMORY: Final = LISTING_MEMORY - CLUSTER_LISTING_MEMORY
NAMESPACE_LISTING_MEMORY: Final = TENANT_LISTING_MEMORY // 2
_BYTES_PER_BYTE_READ: Final = 4
_BYTES_PER_ENTRY: Final = 160
# Chart discovery syncs every repository the catalog names; more than this is not a chart
# registry to discover but one to list repositories of by hand (charts.repositories).
MAX_REPOSITORIES: Final = 10_000


class _MemoryBudget:
    """Bytes listings hold at once: ``namespace`` None is a cluster object's listing (counted
    in the whole only), a namespace's counts against the whole, the tenants' part and that
    namespace's share."""

    def __init__(
        self,
        total: int = LISTING_MEMORY,
        tenants: int = TENANT_LISTING_MEMORY,
        namespace: int = NAMESPACE_LISTING_MEMORY,
    ) -> None:
        self.total, self.tenants, self.namespace = total, tenants, namespace
        self._used: dict[tuple[str, str | None], int] = {}
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used.get(("all", None), 0)

    def _parts(self, namespace: str | None) -> list[tuple[tuple[str, str | None], int]]:
        parts: list[tuple[tuple[str, str | None], int]] = [(("all", None), self.total)]
        if namespace is not None:
            parts += [(("tenants", None), self.tenants), (("namespace", namespace), self.namespace)]
        return parts

    def limit(self, namespace: str | None) -> int:
        return min(cap for _, cap in self._parts(namespace))

    def take(self, amount: int, namespace: str | None = None, until: float | None = None) -> bool:
        """Take ``amount`` bytes, waiting for room until the monotonic time ``until`` (no
        wait when None); False when there was none by then."""
        parts = self._parts(namespace)
        with self._cond:
            while any(self._used.get(key, 0) + amount > cap for key, cap in parts):
                left = until - time.monotonic() if until is not None else 0.0
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            for key, _ in parts:
                self._used[key] = self._used.get(key, 0) + amount
            return True

    def give(self, amount: int, namespace: str | None = None) -> None:
        with self._cond:
            for key, _ in self._parts(namespace):
                left = self._used.get(key, 0) - amount
                if left > 0:
                    self._used[key] = left
                else:
                    self._used.pop(key, None)
            self._cond.notify_all()


_LISTING_BUDGET: Final = _MemoryBudget()


class _BudgetSpent(Exception):
    def __init__(self, never: bool = False) -> None:
        super().__init__()
        self.never = never  # more than the listing's part of the budget holds in all


@dataclass
class Listing:
    """The entries of one paged listing so far, with its totals and its share of the
    process's listing memory (given back by :meth:`close`)."""

    what: str  # "the tag list of team/app"
    noun: str  # "tags"
    limit: int
    namespace: str | None = None  # whose part of the listing memory it holds (None: cluster)
    items: dict[str, None] = field(default_factory=dict)  # ordered set: servers may repeat
    bytes_read: int = 0
    held: int = 0

    def add(self, item: str) -> None:
        if len(self.items) <= self.limit:
            self.items[item] = None

    @property
    def full(self) -> bool:
        return len(self.items) > self.limit

    def reserve(self, amount: int) -> None:
        if self.held + amount > _LISTING_BUDGET.limit(self.namespace):
            raise _BudgetSpent(never=True)
        # Wait for room as long as the request's deadline lets us (the watchdog ends the
        # connection at the same moment), instead of failing while others hold it briefly.
        current = egress.current_deadline()
        until = current.expires_at if current is not None else None
        if not _LISTING_BUDGET.take(amount, self.namespace, until):
            raise _BudgetSpent
        self.held += amount

    def close(self) -> None:
        _LISTING_BUDGET.give(self.held, self.namespace)
        self.held = 0

    def too_many(self, host: str) -> RegistryError:
        return RegistryError(
            Reason.ANSWER_TOO_LARGE,
            f"{self.what} from {host} holds more than {self.limit} {self.noun}, "
            "more than the operator reads (the limit keeps its memory bounded)",
        )

    def budget_spent(self, host: str, never: bool = False) -> RegistryError:
        mib = _LISTING_BUDGET.limit(self.namespace) // 2**20
        whose = "all" if self.namespace is None else "one namespace's"
        part = f"{mib} MiB that {whose} listings may hold at once"
        if never:
            return RegistryError(
                Reason.ANSWER_TOO_LARGE,
                f"{self.what} from {host} needs more memory than the {part} (a bound "
                "on the operator's memory); prune tags or list fewer repositories",
            )
        return RegistryError(
            Reason.ANSWER_TOO_LARGE,
            f"{self.what} from {host} was not read to the end: other listings held the "
            f"listing memory until its deadline ({LISTING_MEMORY // 2**20} MiB in all, tenant "
            f"objects' {TENANT_LISTING_MEMORY // 2**20} MiB, one namespace's "
            f"{NAMESPACE_LISTING_MEMORY // 2**20} MiB: a bound on the operator's memory); "
            "retried later",
            transient=True,
        )


def read_page(transport: Transport, resp: requests.Response, listing: Listing) -> Any:
    """One page of a listing, parsed, within the per-page and total caps."""
    host = transport.host
    left = MAX_LISTING_BYTES - listing.bytes_read
    limit = min(MAX_LISTING_PAGE_BYTES, left)
    try:
        body = egress.read_capped(
            resp, limit, lambda size: listing.reserve(size * _BYTES_PER_BYTE_READ)
        )
    except _BudgetSpent as spent:
        raise listing.budget_spent(host, spent.never) from None
    except egress.AnswerTooLarge:
        whole = limit < MAX_LISTING_PAGE_BYTES
        raise RegistryError(
            Reason.ANSWER_TOO_LARGE,
            f"{listing.what} from {host} is over "
            + (f"{MAX_LISTING_BYTES} bytes in all" if whole else f"{limit} bytes in a page")
            + ", more than the operator reads (the limit keeps its memory bounded)",
        ) from None
    except egress.DeadlineExceeded as exc:
        raise transport.too_slow(resp.url or transport.base_url, exc.seconds) from None
    except requests.exceptions.RequestException as exc:
        raise transport.request_error(resp.url or transport.base_url, exc) from None
    listing.bytes_read += len(body)
    # Every further entry needs a comma, so too many commas means too many entries; known
    # before parsing, which is where the memory would go.
    if body.count(b",") > listing.limit - len(listing.items) + 64:
        raise listing.too_many(host)
    try:
        listing.reserve((body.count(b",") + 1) * _BYTES_PER_ENTRY)
    except _BudgetSpent as spent:
        raise listing.budget_spent(host, spent.never) from None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting
        raise invalid(f"{listing.what} is not JSON") from None
