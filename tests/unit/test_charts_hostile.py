"""A tenant who rewrites her chart index ConfigMap, and registries that answer slowly, tag
by tag or in huge listings, against the real chart sync (run_sync, sync_charts) and a small
fake registry on 127.0.0.1 (review findings 1-3)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from ocireg.api.credential import Credential
from ocireg.api.spec import RegistrySpec
from ocireg.charts import handlers as chart_handlers
from ocireg.charts import publish
from ocireg.charts.helm_index import build_index
from ocireg.charts.sync import MANIFESTS_PER_KEPT, sync_charts
from ocireg.egress import EgressPolicy
from ocireg.oci import RegistryClient, RegistryError, TLSOptions, listings
from ocireg.pullsecrets import plan

from .test_charts_sync import FakeRegistry, charts, digest

PLAIN = TLSOptions(insecure=True)
REF = plan.RegistryRef("OCIRegistry", "reg", "team-a", "uid-1")


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    yield registry
    registry.stop()


class Kube:
    """The two calls run_sync makes: the ConfigMap as the tenant left it, and the write."""

    def __init__(self, observed: dict[str, Any] | None) -> None:
        self.observed = observed
        self.written: list[dict[str, Any]] = []

    def read_config_map_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.observed

    def apply_config_map(self, desired: dict[str, Any], decision: Any) -> str:
        self.written.append(desired)
        return "updated"


def tampered(server: str, text: str) -> dict[str, Any]:
    """Our index ConfigMap (labels, owner) whose index.yaml the tenant replaced."""
    observed = publish.desired_config_map(REF, "team-a", build_index([], server), "now")
    observed["data"][publish.INDEX_KEY] = text
    observed["metadata"]["uid"] = "cm-uid"
    return observed


def sync(
    kube: Kube, server: str, state: chart_handlers.ChartState, **chart_spec: Any
) -> chart_handlers.Published:
    spec = RegistrySpec.model_validate(
        {
            "server": server,
            "auth": {"anonymous": {}},
            "tls": {"insecure": True},
            "charts": chart_spec or {"repositories": ["team/c"]},
        }
    )
    return chart_handlers.run_sync(
        kube,
        REF,
        spec,
        Credential("anonymous", (server,)),
        PLAIN,
        "team-a",
        state,
        1,
        {},
        EgressPolicy.for_object(True, ["127.0.0.1/32"]),
    )


def alias_bomb(server: str, levels: int, extra: str = "") -> str:
    """An index.yaml whose one entry (a version the registry really lists) carries 10**levels
    copies of a string through nested aliases: a few hundred bytes of text."""
    lines = ["bomb:", '  a0: &a0 "xxxxxxxxxx"']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines += [
        "apiVersion: v1",
        "entries:",
        "  c:",
        f'  - {{urls: ["oci://{server}/team/c:1.0.0"], digest: "sha256:00", version: "1.0.0",'
        f' name: c, description: "the tenant says so", x: *a{levels}{extra}}}',
    ]
    return "\n".join(lines) + "\n"


def written_entries(kube: Kube) -> dict[str, Any]:
    return yaml.safe_load(kube.written[-1]["data"][publish.INDEX_KEY])["entries"]


# --------------------------------------------------------------------------- finding 1


def test_a_rewritten_index_configmap_never_becomes_the_published_metadata(
    fake: FakeRegistry,
) -> None:
    """The tenant keeps our labels and replaces index.yaml with aliases attached to a
    version her registry lists; after a restart (a new ChartState) the first sync used to
    take that entry's metadata as known, expand the aliases, and (7 levels) peak at 348 MiB.
    Now the metadata comes from the registry and the alias document is not even loaded."""
    fake.push_chart("team/c", "1.0.0", extra={"description": "from the registry"})
    kube = Kube(tampered(fake.host, alias_bomb(fake.host, 6)))
    state = chart_handlers.ChartState()
    started = time.monotonic()
    sync(kube, fake.host, state)
    elapsed = time.monotonic() - started
    assert state.condition is not None
    assert state.condition[:2] == (True, "Synced"), state.condition
    [entry] = written_entries(kube)["c"]
    assert entry["description"] == "from the registry"
    assert "x" not in entry
    assert entry["digest"] == fake.repos["team/c"].tags["1.0.0"]
    assert fake.hits["GET /v2/team/c/manifests/1.0.0"] == 1  # read again, not trusted
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("levels", [8])
def test_an_alias_bomb_that_would_take_gigabytes_is_refused_unread(
    fake: FakeRegistry, levels: int
) -> None:
    fake.push_chart("team/c", "1.0.0")
    kube = Kube(tampered(fake.host, alias_bomb(fake.host, levels)))
    state = chart_handlers.ChartState()
    started = time.monotonic()
    sync(kube, fake.host, state)
    assert time.monotonic() - started < 5
    assert state.condition is not None
    assert state.condition[0], state.condition
    assert state.known == {("c", "1.0.0")}


def test_a_deeply_nested_index_configmap_is_a_synced_condition_not_a_crash(
    fake: FakeRegistry,
) -> None:
    """10 KB of [[[...]]] used to raise RecursionError in the YAML composer, which escaped
    run_sync (kopf retried it every 10 s, no condition)."""
    fake.push_chart("team/c", "1.0.0")
    text = (
        "apiVersion: v1\nentries:\n  c:\n"
        f'  - {{urls: ["oci://{fake.host}/team/c:1.0.0"], digest: "sha256:00", '
        f'version: "1.0.0", x: {"[" * 10000}{"]" * 10000}}}\n'
    )
    kube = Kube(tampered(fake.host, text))
    state = chart_handlers.ChartState()
    sync(kube, fake.host, state)
    assert state.condition is not None
    assert state.condition[:2] == (True, "Synced"), state.condition
    assert [e["version"] for e in written_entries(kube)["c"]] == ["1.0.0"]


def test_a_chart_config_blob_nested_too_deep_is_skipped_not_a_crash(fake: FakeRegistry) -> None:
    """The same from the registry side: a Helm config blob of 100,000 nested arrays."""
    fake.push_chart("team/c", "1.0.0")
    config = b'{"name": "c", "version": "2.0.0", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": digest(config),
            "size": len(config),
        },
        "layers": [],
    }
    fake._put("team/c", "2.0.0", manifest, {digest(config): config})
    kube = Kube(None)
    state = chart_handlers.ChartState()
    sync(kube, fake.host, state)
    assert state.condition is not None
    assert state.condition[:2] == (True, "Synced"), state.condition
    assert [e["version"] for e in written_entries(kube)["c"]] == ["1.0.0"]
    assert state.status is not None
    assert state.status["skipped"] == 1


def test_deeply_nested_answers_from_a_registry_are_registry_errors(fake: FakeRegistry) -> None:
    """64 KiB of [[[ in an error body, a manifest or a tag page raised RecursionError, which
    no caller expects (it escaped the reconcile's verify and the chart sync)."""
    nested = b"[" * 60_000 + b"]" * 60_000
    fake.push_chart("team/c", "1.0.0")
    original = fake.dispatch

    def dispatch(method: str, raw: str) -> tuple[int, dict[str, str], bytes]:
        if raw.startswith("/v2/team/denied/"):
            return 403, {}, nested
        if raw.startswith("/v2/team/c/manifests/"):
            return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, nested
        if raw.startswith("/v2/team/c/tags/list"):
            return 200, {"Content-Type": "application/json"}, b'{"tags": ' + nested + b"}"
        return original(method, raw)

    fake.dispatch = dispatch  # type: ignore[method-assign]
    reasons = []
    with RegistryClient(fake.host, tls=PLAIN) as client:
        for call in (
            lambda: client.list_tags("team/denied"),
            lambda: client.get_manifest("team/c", "1.0.0"),
            lambda: client.list_tags("team/c"),
        ):
            with pytest.raises(RegistryError) as raised:
                call()
            reasons.append(raised.value.reason)
    assert reasons == ["PermissionDenied", "InvalidResponse", "InvalidResponse"]


# --------------------------------------------------------------------------- finding 3


def test_tags_that_are_not_charts_cost_at_most_the_request_budget_per_sync(
    fake: FakeRegistry,
) -> None:
    """keep: 1 and 400 image tags used to cost 400 manifest GETs in one sync. Now a sync
    reads at most MANIFESTS_PER_KEPT x keep manifests, says so, and the next syncs go on
    where it stopped until the chart is found."""
    for i in range(12):
        fake.push_image("team/c", f"2.0.{i}")  # newer than the chart, not charts
    fake.push_chart("team/c", "1.0.0")
    kube = Kube(None)
    state = chart_handlers.ChartState()
    spec = {"repositories": ["team/c"], "versions": {"keep": 1}}
    manifests = []
    for _ in range(4):
        fake.hits.clear()
        sync(kube, fake.host, state, **spec)
        manifests.append(sum(n for k, n in fake.hits.items() if "/manifests/" in k))
        assert state.condition is not None
        assert state.condition[0], state.condition
    assert manifests == [MANIFESTS_PER_KEPT] * 3 + [1]  # 12 image tags, then the chart
    assert state.status is not None
    assert state.status["versions"] == 1
    assert [e["version"] for e in written_entries(kube)["c"]] == ["1.0.0"]
    # While it was still looking, the status said why.
    fake.hits.clear()
    fresh = chart_handlers.ChartState()
    sync(Kube(None), fake.host, fresh, **spec)
    assert fresh.status is not None
    [note] = fresh.status["errors"]
    assert note["reason"] == "TagsNotChecked"
    assert "9 version tag(s) not checked yet" in note["message"]


class SlowRegistry(FakeRegistry):
    """Answers one repository's tag list only after ``delay`` seconds."""

    def __init__(self, slow: str, delay: float) -> None:
        super().__init__()
        self.slow, self.delay = slow, delay

    def dispatch(self, method: str, raw: str) -> tuple[int, dict[str, str], bytes]:
        if raw.startswith(f"/v2/{self.slow}/tags/list"):
            time.sleep(self.delay)
        return super().dispatch(method, raw)


def test_a_sync_ends_within_its_total_deadline() -> None:
    """Each request had its deadline, a sync had none: a registry that answers every request
    just in time held a chart worker for as long as it liked."""
    registry = SlowRegistry("team/slow", 4.0)
    try:
        registry.push_chart("team/slow", "1.0.0")
        registry.push_chart("team/fast", "1.0.0")
        spec = charts(repositories=["team/slow", "team/fast"])
        with RegistryClient(registry.host, tls=PLAIN) as client:
            started = time.monotonic()
            result = sync_charts(client, None, spec, {}, deadline=1.0)
            elapsed = time.monotonic() - started
    finally:
        registry.stop()
    assert elapsed < 2.5, elapsed
    assert [v.version for v in result.repos["team/fast"].versions] == ["1.0.0"]
    slow = result.repos["team/slow"]
    assert slow.error is not None
    assert slow.error[0] == "SyncDeadline"
    assert "total deadline (1 s)" in slow.error[1]


# --------------------------------------------------------------------------- finding 2


def tag_registry(fake: FakeRegistry, count: int) -> None:
    for i in range(count):
        fake.push_image("team/app", f"v{i}")


@pytest.fixture
def budget() -> Iterator[Any]:
    memory = listings._LISTING_BUDGET
    assert memory.used == 0
    yield memory
    assert memory.used == 0  # every listing (and every test hold) gave its share back


def listing(fake: FakeRegistry, namespace: str | None, deadline: float = 1.0) -> RegistryClient:
    return RegistryClient(fake.host, tls=PLAIN, deadline=deadline, listing_namespace=namespace)


def test_one_namespace_cannot_hold_the_listing_memory_of_others(
    fake: FakeRegistry, budget: Any
) -> None:
    """The review's probe: one tenant's sync held 126 of the 128 MiB while its registry
    dripped, and a cluster object's 20,000-tag listing failed 3/3 meanwhile."""
    tag_registry(fake, 200)
    held = listings.NAMESPACE_LISTING_MEMORY
    assert budget.take(held, "team-a")  # all team-a may hold
    try:
        with pytest.raises(RegistryError) as raised:
            listing(fake, "team-a").list_tags("team/app")
        assert raised.value.reason == "AnswerTooLarge"
        assert raised.value.transient
        assert "until its deadline" in raised.value.message
        # Another namespace and the cluster objects still read theirs.
        assert len(listing(fake, "team-b").list_tags("team/app")) == 200
        assert len(listing(fake, None).list_tags("team/app")) == 200
        # Two namespaces holding all the tenants' part still leave the cluster objects theirs.
        assert budget.take(listings.TENANT_LISTING_MEMORY - held, "team-b")
        try:
            assert len(listing(fake, None).list_tags("team/app")) == 200
            with pytest.raises(RegistryError) as raised:
                listing(fake, "team-c").list_tags("team/app")
            assert raised.value.transient
        finally:
            budget.give(listings.TENANT_LISTING_MEMORY - held, "team-b")
    finally:
        budget.give(held, "team-a")


def test_a_listing_that_finds_its_part_full_waits_for_room_within_its_deadline(
    fake: FakeRegistry, budget: Any
) -> None:
    tag_registry(fake, 200)
    held = listings.NAMESPACE_LISTING_MEMORY
    assert budget.take(held, "team-a")
    threading.Timer(0.5, budget.give, (held, "team-a")).start()
    started = time.monotonic()
    assert len(listing(fake, "team-a", deadline=10.0).list_tags("team/app")) == 200
    assert 0.4 < time.monotonic() - started < 5


def test_a_listing_bigger_than_a_namespace_may_hold_is_refused_at_once(
    fake: FakeRegistry, budget: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag_registry(fake, 2000)
    monkeypatch.setattr(budget, "namespace", 64 * 1024)  # a small share, for a small test
    started = time.monotonic()
    with pytest.raises(RegistryError) as error:
        listing(fake, "team-a", 10.0).list_tags("team/app")
    assert time.monotonic() - started < 2  # no waiting for room that can never be there
    assert not error.value.transient
    assert "needs more memory than the" in error.value.message
    assert "one namespace's listings may hold at once" in error.value.message
    assert len(listing(fake, None).list_tags("team/app")) == 2000  # cluster: unaffected


def test_the_sync_passes_the_namespace_its_listings_count_against(fake: FakeRegistry) -> None:
    fake.push_chart("team/c", "1.0.0")
    state = chart_handlers.ChartState()
    sync(Kube(None), fake.host, state)
    assert state.client is not None
    assert state.client._listing_namespace == "team-a"
    json.dumps(state.status)  # serialisable, as kopf patches it
