"""The metrics a platform team scrapes: per-object gauges computed at scrape time, and mint
counters bumped by the cache."""

from __future__ import annotations

import contextlib
import datetime as dt

from prometheus_client import generate_latest

from ocireg import metrics
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.providers.cache import MintCache


def scrape() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_per_registry_gauges_follow_what_the_operator_remembers() -> None:
    objects = [("ClusterOCIRegistry", "", "ecr", 3600.0, 12), ("OCIRegistry", "team", "x", None, 1)]
    metrics.watch_registries(lambda: objects)
    text = scrape()
    assert (
        'ocireg_credential_expiry_seconds{kind="ClusterOCIRegistry",name="ecr",namespace=""} 3600.0'
        in text
    )
    assert 'ocireg_managed_secrets{kind="OCIRegistry",name="x",namespace="team"} 1.0' in text
    assert 'ocireg_credential_expiry_seconds{kind="OCIRegistry"' not in text  # no expiry
    objects.pop(0)  # a deleted object disappears from the next scrape
    assert 'name="ecr"' not in scrape()


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_mints_and_mint_errors_are_counted_by_provider() -> None:
    before = scrape()
    cache = MintCache()
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    cache.get("a", "20%", lambda: Credential("gcp", ("r",), "u", "p", expires_at=expires))

    def failing() -> Credential:
        raise ReconcileError("AccessDenied", "no")

    with contextlib.suppress(ReconcileError):
        cache.get(("acr", "id"), "20%", failing)
    after = scrape()
    mints = 'ocireg_credential_mints_total{provider="gcp"}'
    errors = 'ocireg_credential_mint_errors_total{provider="acr",reason="AccessDenied"}'
    assert _value(after, mints) == _value(before, mints) + 1
    assert _value(after, errors) == _value(before, errors) + 1
