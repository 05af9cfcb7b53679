"""The metrics a platform team scrapes: per-object gauges computed at scrape time, and mint
counters bumped by the cache."""

from __future__ import annotations

import contextlib
import datetime as dt

from prometheus_client import generate_latest

from ocireg import metrics
from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.ownership import RegistryRef
from ocireg.providers.cache import MintCache
from ocireg.pullsecrets.fanout import Registries


def scrape() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_per_registry_gauges_follow_what_the_operator_remembers() -> None:
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    objects = [
        metrics.RegistrySample("ClusterOCIRegistry", "", "ecr", True, expires, 12, 0),
        metrics.RegistrySample("OCIRegistry", "team", "x", False, None, 1, 3),
    ]
    metrics.watch_registries(lambda: objects)
    text = scrape()
    ecr = 'kind="ClusterOCIRegistry",name="ecr",namespace=""'
    x = 'kind="OCIRegistry",name="x",namespace="team"'
    # An absolute time, as cert-manager's certmanager_certificate_expiration_timestamp_seconds.
    assert f"ocireg_credential_expiration_timestamp_seconds{{{ecr}}} 1.893553445e+09" in text
    assert f"ocireg_credential_expiration_timestamp_seconds{{{x}}}" not in text  # no expiry
    assert f"ocireg_registry_ready{{{ecr}}} 1.0" in text
    assert f"ocireg_registry_ready{{{x}}} 0.0" in text
    assert f"ocireg_managed_secrets{{{x}}} 1.0" in text
    assert f"ocireg_registry_failed_namespaces{{{x}}} 3.0" in text
    objects.pop(0)  # a deleted object disappears from the next scrape
    assert 'name="ecr"' not in scrape()


def test_the_endpoint_follows_the_conventions() -> None:
    """Process and runtime collectors on our own registry, a version, no _created series."""
    metrics.RECONCILES.labels("OCIRegistry", "success").inc()
    metrics.RECONCILE_SECONDS.labels("OCIRegistry").observe(0.2)
    text = scrape()
    for family in ("process_resident_memory_bytes", "process_start_time_seconds", "python_info"):
        assert f"\n{family}" in text, family
    assert 'ocireg_build_info{version="' in text
    assert "_created" not in text


def test_the_leader_gauge_follows_the_election() -> None:
    leading = False
    metrics.report_leader(lambda: leading)
    assert "\nocireg_leader 0.0" in scrape()
    leading = True
    assert "\nocireg_leader 1.0" in scrape()


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


def test_an_objects_gauges_come_from_the_status_it_last_wrote() -> None:
    registries = Registries()
    ref = RegistryRef("OCIRegistry", "mine", "team-a", "uid-mine")
    tracked = registries.get(ref)
    managed = {ref: 3}.__getitem__  # what the index counts (Fanout.managed)
    (sample,) = registries.samples(managed)
    assert sample.managed_secrets == 3
    assert (sample.ready, sample.failed_namespaces) == (False, 0)  # not reconciled yet
    tracked.note_status(
        {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "SecretConflict"},
                {"type": "CredentialsReady", "status": "True"},
            ],
            "targets": {"namespaces": 4, "failedCount": 2, "failed": []},
        }
    )
    (sample,) = registries.samples(managed)
    assert (sample.ready, sample.failed_namespaces) == (False, 2)
    tracked.note_status({"conditions": [{"type": "Ready", "status": "True"}], "targets": {}})
    (sample,) = registries.samples(managed)
    assert (sample.kind, sample.namespace, sample.name) == ("OCIRegistry", "team-a", "mine")
    assert (sample.ready, sample.failed_namespaces) == (True, 0)
