"""Publishing a chart sync: index.yaml, the ConfigMap decision, status.charts, the
ChartsSynced condition and Events; and that the credential reconcile keeps ChartsSynced."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ocireg.api.credential import Credential
from ocireg.api.errors import ReconcileError
from ocireg.api.spec import RegistrySpec
from ocireg.charts import publish
from ocireg.charts.helm_index import IndexedVersion, build_index, read_index
from ocireg.charts.metadata import BadChart, NotAChart, chart_metadata, classify
from ocireg.charts.state import RepoState, SyncResult
from ocireg.pullsecrets import reconcile
from ocireg.pullsecrets.plan import RegistryRef

SERVER = "registry.example.com:5000"
REF = RegistryRef("OCIRegistry", "corp", "team-a", "uid-1")


def version(repository: str, v: str, name: str | None = None, **metadata: Any) -> IndexedVersion:
    chart = name or repository.rsplit("/", 1)[-1]
    return IndexedVersion(
        repository,
        v.replace("+", "_"),
        v,
        f"sha256:{abs(hash((repository, v))):064x}"[:71],
        "2025-01-02T03:04:05Z",
        {"apiVersion": "v2", "name": chart, "version": v, "appVersion": "9.9", **metadata},
    )


def test_index_yaml_is_a_helm_repository_index_with_oci_urls() -> None:
    versions = [version("charts/podinfo", v) for v in ("1.0.0", "1.1.0+build.2", "1.10.0")]
    index = build_index(versions, SERVER)
    document = yaml.safe_load(index.text("2025-02-03T00:00:00Z"))
    assert document["apiVersion"] == "v1"
    assert document["generated"] == "2025-02-03T00:00:00Z"
    rows = document["entries"]["podinfo"]
    assert [r["version"] for r in rows] == ["1.10.0", "1.1.0+build.2", "1.0.0"]
    build = rows[1]
    assert build["urls"] == [f"oci://{SERVER}/charts/podinfo:1.1.0_build.2"]
    assert build["digest"] == versions[1].digest
    assert build["appVersion"] == "9.9"
    assert build["created"] == "2025-01-02T03:04:05Z"
    assert build["apiVersion"] == "v2"


def test_an_index_we_wrote_can_be_read_back() -> None:
    versions = [version("charts/a", "1.0.0"), version("charts/b", "2.0.0", description="b")]
    text = build_index(versions, SERVER).text("2025-02-03T00:00:00Z")
    # Only (chart, version) comes back: what was published before, for Events.
    assert read_index(text, SERVER) == {("a", "1.0.0"), ("b", "2.0.0")}
    assert read_index(text, "elsewhere:443") == set()
    assert read_index(": not yaml [", SERVER) == set()


def test_the_same_chart_version_from_two_repositories_is_listed_once() -> None:
    a, b = version("team-a/podinfo", "1.0.0"), version("team-b/podinfo", "1.0.0")
    index = build_index([b, a], SERVER)
    assert len(index.document["entries"]["podinfo"]) == 1
    assert index.duplicates == [(a, b)]


def test_an_index_too_big_for_a_config_map_drops_the_oldest_versions() -> None:
    long = "x" * 900
    versions = [version("charts/big", f"1.0.{i}", description=long) for i in range(30)]
    versions += [version("charts/small", "1.0.0")]
    index = build_index(versions, SERVER, max_bytes=12_000)
    assert len(index.text("now").encode()) <= 12_000
    big = [e["version"] for e in index.document["entries"]["big"]]
    assert big[0] == "1.0.29"
    assert len(big) + index.dropped == 30
    assert index.document["entries"]["small"]


def test_unchanged_entries_keep_their_content_digest() -> None:
    versions = [version("charts/a", "1.0.0")]
    assert build_index(versions, SERVER).content_digest == (
        build_index(list(versions), SERVER).content_digest
    )
    more = [*versions, version("charts/a", "1.1.0")]
    assert build_index(more, SERVER).content_digest != build_index(versions, SERVER).content_digest


def test_chart_manifests_are_recognised_by_their_config_media_type() -> None:
    chart = {
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": "sha256:1"},
        "layers": [
            {"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": "d"}
        ],
        "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z"},
    }
    found = classify(chart)
    assert (found.config_digest, found.created, found.chart_layer_digest) == (
        "sha256:1",
        "2025-01-01T00:00:00Z",
        "d",
    )
    image = {"config": {"mediaType": "application/vnd.oci.image.config.v1+json"}}
    with pytest.raises(NotAChart):
        classify(image)
    with pytest.raises(NotAChart):
        classify({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})


def test_chart_metadata_is_trimmed_to_index_fields() -> None:
    blob = (
        b'{"name":"app","version":"1.0.0","appVersion":"2","description":"' + b"d" * 5000 + b'",'
        b'"type":"library","icon":"https://x/icon.png","keywords":["a",1],'
        b'"dependencies":[{"name":"redis","version":"^17","repository":"oci://r","x":1}],'
        b'"maintainers":[{"email":"someone@example.com"}]}'
    )
    metadata = chart_metadata(blob)
    assert metadata["type"] == "library"
    assert metadata["icon"] == "https://x/icon.png"
    assert len(metadata["description"]) == 1024
    assert metadata["keywords"] == ["a"]
    assert metadata["dependencies"] == [
        {"name": "redis", "version": "^17", "repository": "oci://r"}
    ]
    assert "maintainers" not in metadata
    with pytest.raises(BadChart):
        chart_metadata(b'{"name":"app"}')
    with pytest.raises(BadChart):
        chart_metadata(b"\xff")


def _desired() -> dict[str, Any]:
    index = build_index([version("charts/a", "1.0.0")], SERVER)
    return publish.desired_config_map(REF, "team-a", index, "now")


def test_config_map_is_written_only_when_the_index_changed() -> None:
    desired = _desired()
    assert desired["metadata"]["name"] == "corp-charts"
    assert desired["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert publish.config_map_decision(desired, None) == "create"
    same = {**desired, "data": {"index.yaml": "older generated time"}}
    assert publish.config_map_decision(desired, same) == "unchanged"
    changed = {
        **desired,
        "metadata": {**desired["metadata"], "annotations": {publish.ANNOTATION_DIGEST: "old"}},
    }
    assert publish.config_map_decision(desired, changed) == "update"
    foreign = {"metadata": {"name": "corp-charts", "labels": {"app": "mine"}}, "data": {}}
    assert publish.config_map_decision(desired, foreign) == "conflict"
    assert not publish.owns(REF, foreign)


def _result(**repos: RepoState) -> SyncResult:
    return SyncResult({k.replace("_", "/"): v for k, v in repos.items()})


def test_report_summarises_charts_and_errors() -> None:
    good = RepoState(versions=[version("charts/app", v) for v in ("2.0.0-rc.1", "1.1.0")])
    broken = RepoState(error=("RepositoryNotFound", "repository charts/gone does not exist"))
    result = _result(charts_app=good, charts_gone=broken)
    index = build_index(good.versions, SERVER)
    report = publish.report(result, "charts", index, "team-a/corp-charts", "now", 4, None)
    assert report.status["items"] == [
        {"repository": "app", "name": "app", "latest": "1.1.0", "versions": 2}
    ]
    assert report.status["versions"] == 2
    assert report.status["errors"] == [
        {
            "repository": "gone",
            "reason": "RepositoryNotFound",
            "message": "repository charts/gone does not exist",
        }
    ]
    ok, reason, message = report.condition
    assert not ok
    assert reason == "RepositoriesFailed"
    assert "1 of 2 repositories could not be read: gone" in message
    assert report.events == [("Normal", "ChartsIndexed", "indexed 2 version(s) of 1 chart(s)")]


def test_new_versions_get_one_event_each() -> None:
    state = RepoState(versions=[version("charts/app", v) for v in ("1.1.0", "1.0.0")])
    index = build_index(state.versions, SERVER)
    report = publish.report(
        _result(charts_app=state), None, index, "ns/x", "now", 1, {("app", "1.0.0")}
    )
    assert report.condition[:2] == (True, "Synced")
    assert report.events == [
        (
            "Normal",
            "ChartVersionAdded",
            f"chart app 1.1.0 is available at oci://{SERVER}/charts/app:1.1.0",
        )
    ]
    again = publish.report(_result(charts_app=state), None, index, "ns/x", "now", 1, report.known)
    assert again.events == []


def test_status_lists_at_most_fifty_charts() -> None:
    repos = {
        f"charts_c{i:03}": RepoState(versions=[version(f"charts/c{i:03}", "1.0.0")])
        for i in range(60)
    }
    result = _result(**repos)
    index = build_index([v for s in result.repos.values() for v in s.versions], SERVER)
    report = publish.report(result, None, index, "ns/x", "now", 60, None)
    assert len(report.status["items"]) == 50
    assert report.status["repositories"] == 60
    assert report.status["versions"] == 60


def test_charts_synced_keeps_its_transition_time_and_other_conditions() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Ready"}
    first = publish.with_condition([ready], True, "Synced", "a", 1, "t1")
    second = publish.with_condition(first, True, "Synced", "b", 1, "t2")
    assert second[0] == ready
    assert second[1]["lastTransitionTime"] == "t1"
    assert second[1]["message"] == "b"
    failed = publish.with_condition(second, False, "RepositoriesFailed", "c", 1, "t3")
    assert failed[1]["lastTransitionTime"] == "t3"
    assert publish.without_condition(failed) == [ready]


def test_the_credential_reconcile_keeps_charts_synced() -> None:
    charts_synced = {
        "type": "ChartsSynced",
        "status": "True",
        "reason": "Synced",
        "message": "indexed",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    old = {"conditions": [charts_synced], "charts": {"versions": 3}}
    spec = RegistrySpec.model_validate({"server": SERVER, "auth": {"anonymous": {}}})
    credential = Credential("basic", (SERVER,), "u", "p")
    targets = {"namespaces": 1, "serviceAccounts": 1, "failed": [], "failedCount": 0}
    status = reconcile._success_status(spec, credential, 1, old, targets, "now", "later")
    assert charts_synced in status["conditions"]
    failure = reconcile._failure_status(ReconcileError("SecretNotFound", "gone"), 1, old, 30)
    assert charts_synced in failure["conditions"]
    assert {c["type"] for c in failure["conditions"]} >= {"Ready", "ChartsSynced"}
