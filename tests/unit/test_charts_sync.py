"""The chart sync against a small fake registry (a real HTTP server on 127.0.0.1): tag
pagination, chart recognition, the tag -> digest memory, rate limits, per-repository errors
and catalog discovery."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ocireg.api.charts import Charts
from ocireg.charts.metadata import HELM_CHART_LAYER, HELM_CONFIG
from ocireg.charts.sync import (
    REVALIDATE_SECONDS,
    SyncProblem,
    sync_charts,
)
from ocireg.oci import RegistryClient, TLSOptions

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repo:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


class FakeRegistry:
    """An open registry (no auth) with the parts of the distribution API the sync uses.
    Tags come in pages of ``page_size`` (opaque cursors, relative Link headers) when the
    client asks for ``n``; ``fail`` answers chosen paths with a status and headers."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.hits: Counter[str] = Counter()
        self.fail: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.catalog: int | list[str] | None = None  # a status to refuse with, or names
        self.headers: dict[str, str] = {}
        self._cursors: dict[str, int] = {}
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply(*registry.dispatch("GET", self.path))

            def do_HEAD(self) -> None:
                status, headers, _ = registry.dispatch("HEAD", self.path)
                self._reply(status, headers, b"")

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in {**registry.headers, **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def client(self) -> RegistryClient:
        return RegistryClient(self.host, tls=TLSOptions(insecure=True))

    def total(self) -> int:
        return sum(self.hits.values())

    # ---------------------------------------------------------------- content

    def push_chart(
        self,
        repository: str,
        version: str,
        app_version: str = "1.0",
        name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        chart_name = name or repository.rsplit("/", 1)[-1]
        config = json.dumps(
            {
                "apiVersion": "v2",
                "name": chart_name,
                "version": version,
                "appVersion": app_version,
                "description": f"{chart_name} chart",
                "type": "application",
                **(extra or {}),
            }
        ).encode()
        archive = f"archive of {chart_name} {version}".encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": HELM_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [
                {"mediaType": HELM_CHART_LAYER, "digest": digest(archive), "size": len(archive)}
            ],
            "annotations": {"org.opencontainers.image.created": "2025-01-02T03:04:05Z"},
        }
        return self._put(repository, version.replace("+", "_"), manifest, {digest(config): config})

    def push_image(self, repository: str, tag: str, index: bool = False) -> str:
        config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [],
        }
        if index:
            manifest = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        return self._put(repository, tag, manifest, {digest(config): config})

    def _put(self, repository: str, tag: str, manifest: dict, blobs: dict[str, bytes]) -> str:
        body = json.dumps(manifest).encode()
        repo = self.repos.setdefault(repository, Repo())
        repo.manifests[digest(body)] = (manifest["mediaType"], body)
        repo.blobs.update(blobs)
        repo.tags[tag] = digest(body)
        return digest(body)

    # ---------------------------------------------------------------- HTTP

    def dispatch(self, method: str, raw: str) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(raw)
        path, query = url.path, parse_qs(url.query)
        with self._lock:
            self.hits[f"{method} {path}"] += 1
            queued = self.fail.get(path)
            if queued:
                status, headers = queued.pop(0)
                return status, headers, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}'
        if path == "/v2/":
            return 200, {}, b"{}"
        if path == "/v2/_catalog":
            if isinstance(self.catalog, int):
                return self.catalog, {}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'
            names = self.catalog if self.catalog is not None else sorted(self.repos)
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"repositories": names}).encode(),
            )
        for name, repo in self.repos.items():
            base = f"/v2/{name}/"
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            if rest == "tags/list":
                return self._tags(name, repo, query)
            if rest.startswith("manifests/"):
                ref = rest[len("manifests/") :]
                found = repo.manifests.get(repo.tags.get(ref, ref))
                if found is None:
                    return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
                media_type, body = found
                headers = {"Content-Type": media_type, "Docker-Content-Digest": digest(body)}
                return 200, headers, body
            if rest.startswith("blobs/"):
                blob = repo.blobs.get(rest[len("blobs/") :])
                return (200, {}, blob) if blob is not None else (404, {}, b"")
        return 404, {}, b'{"errors":[{"code":"NAME_UNKNOWN"}]}'

    def _tags(self, name: str, repo: Repo, query: dict[str, list[str]]) -> tuple[int, dict, bytes]:
        tags = sorted(repo.tags)
        headers = {"Content-Type": "application/json"}
        if "n" not in query:
            return 200, headers, json.dumps({"name": name, "tags": tags}).encode()
        size = int(query["n"][0])
        start = self._cursors.pop(query["cursor"][0], 0) if "cursor" in query else 0
        page = tags[start : start + size]
        if start + size < len(tags):
            cursor = hashlib.sha256(f"{name}{start}".encode()).hexdigest()[:10]
            self._cursors[cursor] = start + size
            # Relative, as distribution writes it, with an opaque cursor.
            headers["Link"] = f'</v2/{name}/tags/list?n={size}&cursor={cursor}>; rel="next"'
        return 200, headers, json.dumps({"name": name, "tags": page}).encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    yield registry
    registry.stop()


def charts(**kwargs: Any) -> Charts:
    return Charts.model_validate(kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_reads_charts_skips_other_artifacts_and_keeps_digests(fake: FakeRegistry) -> None:
    digests = {v: fake.push_chart("charts/podinfo", v) for v in ("1.0.0", "1.1.0", "1.1.0+build.2")}
    fake.push_image("charts/podinfo", "2.0.0")  # an image tagged like a version
    fake.push_image("charts/podinfo", "latest")
    with fake.client() as client:
        result = sync_charts(client, None, charts(repositories=["charts/podinfo"]), {})
    state = result.repos["charts/podinfo"]
    assert [v.version for v in state.versions] == ["1.1.0+build.2", "1.1.0", "1.0.0"]
    assert state.skipped == 1
    assert state.error is None
    newest = state.versions[0]
    assert newest.tag == "1.1.0_build.2"
    assert newest.digest == digests["1.1.0+build.2"]
    assert newest.created == "2025-01-02T03:04:05Z"
    assert newest.metadata["name"] == "podinfo"
    assert newest.metadata["appVersion"] == "1.0"
    assert newest.metadata["type"] == "application"
    # The chart archive itself is never downloaded: one config blob per chart version.
    blob_reads = [k for k in fake.hits if "/blobs/" in k]
    assert len(blob_reads) == 3


def test_tags_are_followed_across_pages(fake: FakeRegistry) -> None:
    for patch in range(7):
        fake.push_chart("charts/many", f"1.0.{patch}")
    with fake.client() as client:
        result = sync_charts(client, None, charts(repositories=["charts/many"]), {}, page_size=3)
    assert len(result.repos["charts/many"].versions) == 7
    assert fake.hits["GET /v2/charts/many/tags/list"] == 3  # pages of 3, 3 and 1


def test_constraint_and_keep_choose_the_newest_allowed_charts(fake: FakeRegistry) -> None:
    for version in ("0.9.0", "1.0.0", "1.2.0", "1.3.0", "2.0.0-rc.1"):
        fake.push_chart("charts/app", version)
    fake.push_image("charts/app", "1.4.0")  # newest allowed tag, but not a chart
    spec = charts(repositories=["charts/app"], versions={"constraint": ">=1.0.0", "keep": 2})
    with fake.client() as client:
        result = sync_charts(client, None, spec, {})
    assert [v.version for v in result.repos["charts/app"].versions] == ["1.3.0", "1.2.0"]
    assert result.repos["charts/app"].skipped == 1


def test_an_unchanged_resync_costs_one_request_per_repository(fake: FakeRegistry) -> None:
    for repo in ("charts/a", "charts/b", "charts/c"):
        for version in ("1.0.0", "1.1.0", "2.0.0"):
            fake.push_chart(repo, version)
    fake.push_image("charts/a", "3.0.0")
    spec = charts(repositories=["charts/a", "charts/b", "charts/c"])
    clock = Clock()
    with fake.client() as client:
        first = sync_charts(client, None, spec, {}, now=clock)
        fake.hits.clear()
        clock.now += 3600
        second = sync_charts(client, None, spec, first.repos, now=clock)
    assert fake.total() == 3
    assert set(fake.hits) == {f"GET /v2/charts/{r}/tags/list" for r in "abc"}
    assert second.repos["charts/a"].versions == first.repos["charts/a"].versions
    assert second.repos["charts/a"].skipped == 1  # remembered, not read again


def test_only_new_tags_are_read(fake: FakeRegistry) -> None:
    fake.push_chart("charts/app", "1.0.0")
    spec = charts(repositories=["charts/app"])
    with fake.client() as client:
        first = sync_charts(client, None, spec, {})
        fresh = fake.push_chart("charts/app", "1.1.0")
        fake.hits.clear()
        second = sync_charts(client, None, spec, first.repos)
    assert fake.total() == 3  # tag list, the new manifest, its config blob
    assert fake.hits["GET /v2/charts/app/manifests/1.1.0"] == 1
    assert second.repos["charts/app"].versions[0].digest == fresh


def test_a_re_pushed_version_is_noticed_once_the_digest_is_rechecked(fake: FakeRegistry) -> None:
    fake.push_chart("charts/app", "1.0.0", app_version="1.0")
    spec = charts(repositories=["charts/app"])
    clock = Clock()
    with fake.client() as client:
        first = sync_charts(client, None, spec, {}, now=clock)
        replaced = fake.push_chart("charts/app", "1.0.0", app_version="1.0-fixed")
        clock.now += 60
        soon = sync_charts(client, None, spec, first.repos, now=clock)
        assert soon.repos["charts/app"].versions[0].digest != replaced  # trusted for a while
        clock.now += REVALIDATE_SECONDS
        fake.hits.clear()
        later = sync_charts(client, None, spec, soon.repos, now=clock)
        fake.hits.clear()
        clock.now += 60
        sync_charts(client, None, spec, later.repos, now=clock)
    assert later.repos["charts/app"].versions[0].digest == replaced
    assert later.repos["charts/app"].versions[0].metadata["appVersion"] == "1.0-fixed"
    assert fake.total() == 1  # checked again, then trusted again


def test_one_failing_repository_does_not_stop_the_others(fake: FakeRegistry) -> None:
    fake.push_chart("charts/good", "1.0.0")
    fake.push_chart("charts/flaky", "1.0.0")
    spec = charts(repositories=["charts/good", "charts/flaky", "charts/missing"])
    with fake.client() as client:
        first = sync_charts(client, None, spec, {})
        fake.fail["/v2/charts/flaky/tags/list"] = [(500, {})]
        second = sync_charts(client, None, spec, first.repos)
    assert second.repos["charts/missing"].error[0] == "RepositoryNotFound"
    assert [v.version for v in second.repos["charts/good"].versions] == ["1.0.0"]
    flaky = second.repos["charts/flaky"]
    assert flaky.error is not None
    assert flaky.error[0] == "RegistryError"
    assert [v.version for v in flaky.versions] == ["1.0.0"]  # the last good versions stay


def test_a_short_retry_after_is_waited_out(fake: FakeRegistry) -> None:
    fake.push_chart("charts/app", "1.0.0")
    fake.fail["/v2/charts/app/tags/list"] = [(429, {"Retry-After": "2"})]
    clock = Clock()
    with fake.client() as client:
        result = sync_charts(
            client, None, charts(repositories=["charts/app"]), {}, now=clock, sleep=clock.sleep
        )
    assert clock.slept == [2.0]
    assert result.repos["charts/app"].error is None
    assert result.retry_after is None


def test_a_long_retry_after_stops_the_sync_and_keeps_what_was_known(fake: FakeRegistry) -> None:
    fake.push_chart("charts/app", "1.0.0")
    spec = charts(repositories=["charts/app"])
    clock = Clock()
    with fake.client() as client:
        first = sync_charts(client, None, spec, {}, now=clock)
        fake.fail["/v2/charts/app/tags/list"] = [(429, {"Retry-After": "600"})]
        second = sync_charts(client, None, spec, first.repos, now=clock, sleep=clock.sleep)
    assert clock.slept == []
    assert second.retry_after == 600
    app = second.repos["charts/app"]
    assert app.error is not None
    assert app.error[0] == "RateLimited"
    assert [v.version for v in app.versions] == ["1.0.0"]


def test_rate_limit_headers_stop_the_sync_before_the_window_is_spent(fake: FakeRegistry) -> None:
    for repo in ("charts/a", "charts/b"):
        fake.push_chart(repo, "1.0.0")
    fake.headers["RateLimit-Remaining"] = "3;w=21600"
    spec = charts(repositories=["charts/a", "charts/b"])
    with fake.client() as client:
        result = sync_charts(client, None, spec, {}, workers=1)
    assert all(s.error and s.error[0] == "RateLimited" for s in result.repos.values())
    assert fake.total() == 1  # the first answer said the window is nearly spent


def test_discover_lists_repositories_under_the_prefix(fake: FakeRegistry) -> None:
    fake.push_chart("team/charts/one", "1.0.0")
    fake.push_chart("team/charts/two", "1.0.0")
    fake.push_chart("other/three", "1.0.0")
    with fake.client() as client:
        result = sync_charts(client, "team/charts", charts(discover=True), {})
    assert sorted(result.repos) == ["team/charts/one", "team/charts/two"]
    assert result.discovery_note is None


@pytest.mark.parametrize("refusal", [401, 403, 404])
def test_a_refused_catalog_tells_the_user_to_list_repositories(
    fake: FakeRegistry, refusal: int
) -> None:
    fake.push_chart("charts/app", "1.0.0")
    fake.catalog = refusal
    with fake.client() as client:
        with pytest.raises(SyncProblem) as raised:
            sync_charts(client, None, charts(discover=True), {})
        listed = sync_charts(client, None, charts(discover=True, repositories=["charts/app"]), {})
    assert raised.value.reason == "NoRepositories"
    assert f"HTTP {refusal}" in raised.value.message
    assert "charts.repositories" in raised.value.message
    assert "charts.repositories" in (listed.discovery_note or "")
    assert [v.version for v in listed.repos["charts/app"].versions] == ["1.0.0"]


def test_an_empty_catalog_is_explained(fake: FakeRegistry) -> None:
    fake.push_chart("elsewhere/app", "1.0.0")
    with fake.client() as client, pytest.raises(SyncProblem, match="lists no repositories under"):
        sync_charts(client, "charts", charts(discover=True), {})


def test_a_bad_constraint_is_a_problem_before_any_request(fake: FakeRegistry) -> None:
    spec = charts(repositories=["charts/app"], versions={"constraint": ">=banana"})
    with fake.client() as client, pytest.raises(SyncProblem) as raised:
        sync_charts(client, None, spec, {})
    assert raised.value.reason == "InvalidConstraint"
    assert "banana" in raised.value.message
    assert fake.total() == 0


def test_an_image_index_under_a_version_tag_is_skipped(fake: FakeRegistry) -> None:
    fake.push_chart("charts/app", "1.0.0")
    fake.push_image("charts/app", "1.1.0", index=True)
    with fake.client() as client:
        result = sync_charts(client, None, charts(repositories=["charts/app"]), {})
    assert [v.version for v in result.repos["charts/app"].versions] == ["1.0.0"]
    assert result.repos["charts/app"].skipped == 1


def test_known_state_spares_every_known_manifest(fake: FakeRegistry) -> None:
    fake.push_chart("charts/app", "1.0.0")
    spec = charts(repositories=["charts/app"])
    with fake.client() as client:
        first = sync_charts(client, None, spec, {}, now=lambda: 1e12)
        fake.hits.clear()
        again = sync_charts(client, None, spec, first.repos, now=lambda: 1e12)
    assert fake.total() == 1
    assert again.repos["charts/app"].versions == first.repos["charts/app"].versions


def test_only_objects_that_list_charts_or_show_an_index_get_chart_work() -> None:
    from ocireg.api.spec import RegistrySpec
    from ocireg.charts.handlers import has_chart_work

    plain = RegistrySpec.model_validate({"server": "r.example"})
    listing = RegistrySpec.model_validate(
        {"server": "r.example", "charts": {"repositories": ["a"]}}
    )
    assert not has_chart_work(plain, {}, known=False)
    assert not has_chart_work(None, {}, known=False)  # not reconciled yet
    assert has_chart_work(listing, {}, known=False)
    # charts removed from the spec: worked on until the index and condition are gone.
    assert has_chart_work(plain, {"charts": {"repositories": 1}}, known=False)
    shown = {"conditions": [{"type": "ChartsSynced", "status": "True"}]}
    assert has_chart_work(plain, shown, known=False)
    assert has_chart_work(plain, {}, known=True)  # the sync still holds its state


def test_status_shows_the_sync_once_and_puts_back_a_condition_a_reconcile_dropped() -> None:
    from ocireg.charts.handlers import ChartState, cleared_fields, status_fields
    from ocireg.pullsecrets.runtime import merge_patch

    state = ChartState(
        status={"repositories": 1, "versions": 2}, condition=(True, "Synced", "ok", 3)
    )
    ready = {"type": "Ready", "status": "True", "reason": "Verified", "message": "m"}
    status: dict[str, object] = {"conditions": [ready], "charts": {"repositories": 1, "old": 5}}
    fields = status_fields(status, state)
    assert fields is not None
    assert fields["charts"] == {"repositories": 1, "versions": 2, "old": None}
    shown = merge_patch(status, fields)
    assert shown["charts"] == {"repositories": 1, "versions": 2}
    assert [c["type"] for c in shown["conditions"]] == ["Ready", "ChartsSynced"]
    assert status_fields(shown, state) is None  # shown already: no write
    # A reconcile's write of the whole list, made from a copy without ChartsSynced:
    dropped = merge_patch(shown, {"conditions": [ready]})
    again = status_fields(dropped, state)
    assert again is not None
    assert "ChartsSynced" in [c["type"] for c in again["conditions"]]
    cleared = cleared_fields(shown)
    assert cleared is not None
    gone = merge_patch(shown, cleared)
    assert "charts" not in gone
    assert [c["type"] for c in gone["conditions"]] == ["Ready"]
    assert cleared_fields(gone) is None


def test_a_status_merge_patch_is_applied_as_the_api_server_applies_it() -> None:
    from ocireg.pullsecrets.runtime import merge_patch

    target = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    patched = merge_patch(target, {"a": None, "b": {"c": None, "f": 4}, "e": [3], "g": {"h": None}})
    assert patched == {"b": {"d": 3, "f": 4}, "e": [3], "g": {}}
    assert target == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}  # not changed in place
