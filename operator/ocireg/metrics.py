"""Prometheus metrics, on a registry of our own. Counters are bumped where things happen;
per-object gauges (ready, expiration, Secrets) are computed at scrape time from what the
operator already remembers, so nothing goes stale when an object is deleted.

Conventions (docs/install.md#prometheus): times are absolute Unix timestamps
(`..._timestamp_seconds`, as cert-manager's), no `_created` series, the process and Python
runtime collectors as prometheus_client's default registry has them. Label values are
bounded: kinds, providers and reasons are closed sets, and the per-object gauges have one
series per registry object (never one per namespace it writes into)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import (
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

from ocireg import __version__

# A `_created` series per counter and histogram doubles what is stored and says nothing a
# reader needs (the process start time is process_start_time_seconds).
disable_created_metrics()  # type: ignore[no-untyped-call]  # (unannotated upstream)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "ocireg_build_info",
    "Always 1; the running operator's version.",
    ["version"],
    registry=REGISTRY,
)
BUILD_INFO.labels(__version__).set(1)
LEADER = Gauge(
    "ocireg_leader",
    "1 on the replica that works (holds the leader Lease, or runs without leader election), "
    "0 on a standby.",
    registry=REGISTRY,
)
RECONCILES = Counter(
    "ocireg_reconciles_total",
    "Reconciles that did work (verify or target sync), by kind and result.",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "ocireg_reconcile_duration_seconds",
    "Time spent in reconciles that did work.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MINTS = Counter(
    "ocireg_credential_mints_total",
    "Credentials minted from a provider (one per identity while valid).",
    ["provider"],
    registry=REGISTRY,
)
MINT_ERRORS = Counter(
    "ocireg_credential_mint_errors_total",
    "Failed attempts to mint credentials, by provider and reason.",
    ["provider", "reason"],
    registry=REGISTRY,
)
SECRET_WRITES = Counter(
    "ocireg_secret_writes_total",
    "Pull Secrets created or updated (an unchanged resync writes none).",
    registry=REGISTRY,
)

OBJECT_LABELS = ["kind", "namespace", "name"]


class RegistrySample(NamedTuple):
    """What one registry object reports; `namespace` is "" for a ClusterOCIRegistry."""

    kind: str
    namespace: str
    name: str
    ready: bool  # its Ready condition is True
    expires_at: dt.datetime | None  # its current credential's, if it expires
    managed_secrets: int  # Secrets it has written that exist now
    failed_namespaces: int  # selected namespaces it could not write into (status.targets)


class RegistryCollector(Collector):
    def __init__(self, samples: Callable[[], Iterable[RegistrySample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "ocireg_registry_ready",
            "1 when a registry object's Ready condition is True, else 0 (failing, or not "
            "reconciled yet).",
            labels=OBJECT_LABELS,
        )
        expiration = GaugeMetricFamily(
            "ocireg_credential_expiration_timestamp_seconds",
            "When the current credentials of a registry object expire (Unix time); none for "
            "credentials that do not expire.",
            labels=OBJECT_LABELS,
        )
        managed = GaugeMetricFamily(
            "ocireg_managed_secrets",
            "Secrets written by a registry object that exist now.",
            labels=OBJECT_LABELS,
        )
        failed = GaugeMetricFamily(
            "ocireg_registry_failed_namespaces",
            "Selected namespaces a registry object could not write its pull secret into at "
            "its last sync (status.targets.failedCount).",
            labels=OBJECT_LABELS,
        )
        for sample in self._samples():
            labels = [sample.kind, sample.namespace, sample.name]
            ready.add_metric(labels, 1 if sample.ready else 0)
            if sample.expires_at is not None:
                expiration.add_metric(labels, sample.expires_at.timestamp())
            managed.add_metric(labels, sample.managed_secrets)
            failed.add_metric(labels, sample.failed_namespaces)
        yield from (ready, expiration, managed, failed)


_collector: RegistryCollector | None = None


def watch_registries(samples: Callable[[], Iterable[RegistrySample]]) -> None:
    """Report per-registry gauges from ``samples`` (replacing any earlier source)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = RegistryCollector(samples)
    REGISTRY.register(_collector)


def report_leader(leading: Callable[[], bool]) -> None:
    """`ocireg_leader` follows ``leading`` (read at every scrape)."""
    LEADER.set_function(lambda: 1.0 if leading() else 0.0)


def serve(port: int, address: str = "127.0.0.1") -> Any:
    return start_http_server(port, addr=address, registry=REGISTRY)
