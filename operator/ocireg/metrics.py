"""Prometheus metrics. Counters are bumped where things happen; per-registry gauges (seconds
until expiry, managed Secrets) are computed at scrape time from what the operator already
remembers, so nothing goes stale when an object is deleted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

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

# (kind, namespace, name, seconds until expiry or None, managed Secrets)
RegistrySample = tuple[str, str, str, float | None, int]


class RegistryCollector(Collector):
    def __init__(self, samples: Callable[[], Iterable[RegistrySample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterable[GaugeMetricFamily]:
        expiry = GaugeMetricFamily(
            "ocireg_credential_expiry_seconds",
            "Seconds until the current credentials of a registry object expire.",
            labels=["kind", "namespace", "name"],
        )
        managed = GaugeMetricFamily(
            "ocireg_managed_secrets",
            "Secrets written by a registry object that exist now.",
            labels=["kind", "namespace", "name"],
        )
        for kind, namespace, name, seconds, secrets in self._samples():
            if seconds is not None:
                expiry.add_metric([kind, namespace, name], seconds)
            managed.add_metric([kind, namespace, name], secrets)
        yield expiry
        yield managed


_collector: RegistryCollector | None = None


def watch_registries(samples: Callable[[], Iterable[RegistrySample]]) -> None:
    """Report per-registry gauges from ``samples`` (replacing any earlier source)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = RegistryCollector(samples)
    REGISTRY.register(_collector)


def serve(port: int, address: str = "127.0.0.1") -> Any:
    return start_http_server(port, addr=address, registry=REGISTRY)


def seconds_until(moment: dt.datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment - dt.datetime.now(dt.UTC)).total_seconds()
