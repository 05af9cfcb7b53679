"""index.yaml building is linear in the number of versions and bounded per entry (issue 14,
point 7): the work is counted (emitter calls and the bytes they produce), never timed; an
oversized entry is cut or left out with a note, and never empties the index."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ocireg.charts import publish
from ocireg.charts.helm_index import IndexedVersion, build_index
from ocireg.charts.metadata import chart_metadata
from ocireg.charts.state import RepoState, SyncResult

SERVER = "registry.example.com:5000"
MAX_ENTRY_BYTES = 16 * 1024
# Words the old per-entry size estimate got wrong by 3 % (they wrap one level deeper in the
# index than where they were measured), so the old builder dumped the whole index again to
# drop what its estimate had let in.
WRAPPING = " ".join(["w" * 74] * 7)


def chart(repository: str, v: str, **raw: Any) -> IndexedVersion:
    """A version as sync reads it: the metadata goes through chart_metadata's trimming."""
    name = repository.rsplit("/", 1)[-1]
    blob = json.dumps({"apiVersion": "v2", "name": name, "version": v, **raw}).encode()
    return IndexedVersion(
        repository, v, v, f"sha256:{v:0>64}", "2025-01-02T03:04:05Z", chart_metadata(blob)
    )


class Emitter:
    """Counts what goes through PyYAML's emitter (every yaml.dump / safe_dump ends there)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.bytes = 0
        real = yaml.dump_all

        def counting(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            self.calls += 1
            self.bytes += len(out or "")
            return out

        monkeypatch.setattr(yaml, "dump_all", counting)

    def reset(self) -> None:
        self.calls = self.bytes = 0


def versions(n: int) -> list[IndexedVersion]:
    deps = [{"name": WRAPPING[:500], "version": "1.0.0"}] * 2
    return [
        chart(f"charts/c{i % 4}", f"1.0.{i}", description=WRAPPING, dependencies=deps)
        for i in range(n)
    ]


def whole_size(vs: list[IndexedVersion]) -> int:
    """The bytes of every version's entry, as one whole dump of them would be."""
    entries: dict[str, list[Any]] = {}
    for v in vs:
        entries.setdefault(v.name, []).append(v.entry(SERVER))
    return len(yaml.safe_dump({"apiVersion": "v1", "entries": entries}, sort_keys=False))


def test_each_version_goes_through_the_emitter_once_so_work_is_linear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # n and 2n versions, each into a ConfigMap holding about half of them: half dropped.
    work = []
    for n in (400, 800):
        vs = versions(n)
        size = whole_size(vs)
        emitter = Emitter(monkeypatch)
        index = build_index(vs, SERVER, max_bytes=size // 2)
        text = index.text("2025-02-03T00:00:00Z")
        assert len(text.encode()) <= size // 2
        assert n / 3 < index.dropped < 2 * n / 3
        # Each version goes through the emitter once (plus one call per chart and one for
        # `generated`), and the bytes it produces are about those of one whole dump.
        assert emitter.calls <= n + 4 + 2, emitter.calls
        assert emitter.bytes <= 1.2 * size, (emitter.bytes, size)
        work.append((emitter.calls, emitter.bytes))
    (calls_n, bytes_n), (calls_2n, bytes_2n) = work
    assert calls_2n <= 2.2 * calls_n
    assert bytes_2n <= 2.2 * bytes_n, (bytes_n, bytes_2n)


# 50 dependencies of five 500-character fields: what chart_metadata lets through (135 KiB).
HUGE_DEPENDENCIES = [
    {f: f"{f}-" + "d" * 500 for f in ("name", "version", "repository", "condition", "alias")}
    for _ in range(50)
]


def test_huge_entries_cost_bounded_work_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # The case: 400 versions with large Chart metadata. Before, every one went
    # through the (pure Python) emitter whole, about 135 KiB each, twice.
    vs = [chart("charts/big", f"1.0.{i}", dependencies=HUGE_DEPENDENCIES) for i in range(400)]
    emitter = Emitter(monkeypatch)
    index = build_index(vs, SERVER)
    assert emitter.calls <= 400 + 2
    assert emitter.bytes <= 400 * MAX_ENTRY_BYTES, emitter.bytes
    assert len(index.document["entries"]["big"]) == 400  # cut, so all of them fit
    assert len(index.trimmed) == 400


def test_an_entry_over_the_bound_is_cut_and_the_index_says_so() -> None:
    huge = chart("charts/huge", "2.0.0", description="big one", dependencies=HUGE_DEPENDENCIES)
    assert len(json.dumps(huge.entry(SERVER))) > 100 * 1024  # 50 dependencies of 2.5 KiB
    small = chart("charts/huge", "1.0.0", description="small one")
    index = build_index([huge, small], SERVER)
    rows = index.document["entries"]["huge"]
    assert [r["version"] for r in rows] == ["2.0.0", "1.0.0"]
    assert "dependencies" not in rows[0]
    assert rows[0]["description"] == "big one"
    assert rows[0]["urls"] == [f"oci://{SERVER}/charts/huge:2.0.0"]
    assert rows[1]["description"] == "small one"
    for row in rows:
        assert len(yaml.safe_dump([row]).encode()) <= MAX_ENTRY_BYTES

    result = SyncResult({"charts/huge": RepoState(versions=[huge, small])})
    report = publish.report(result, "charts", index, "ns/cm", "now", 3, None)
    ok, reason, message = report.condition
    assert (ok, reason) == (True, "Synced")
    assert "1 version(s) cut to 16 KiB per entry" in message
    assert report.status["errors"] == [
        {
            "repository": "huge",
            "reason": "EntryTrimmed",
            "message": "chart huge 2.0.0: its index entry is over 16 KiB, so it is listed "
            "without dependencies",
        }
    ]


def test_an_entry_too_big_even_when_cut_is_left_out_and_the_rest_stays() -> None:
    # A hostile registry's manifest annotation: 1 MiB of "created" (read from the manifest).
    bad = chart("charts/evil", "1.0.0")
    bad = IndexedVersion(
        bad.repository, bad.tag, bad.version, bad.digest, "x" * (1 << 20), bad.metadata
    )
    good = [chart("charts/podinfo", f"6.{i}.0") for i in range(5)]
    index = build_index([bad, *good], SERVER)
    assert list(index.document["entries"]) == ["podinfo"]
    assert len(index.document["entries"]["podinfo"]) == 5
    assert index.dropped == 0
    result = SyncResult(
        {"charts/evil": RepoState(versions=[bad]), "charts/podinfo": RepoState(versions=good)}
    )
    report = publish.report(result, "charts", index, "ns/cm", "now", 3, None)
    ok, reason, message = report.condition
    assert (ok, reason) == (True, "Synced")
    assert "1 version(s) left out, their entries being over 16 KiB" in message
    assert report.status["errors"][0]["reason"] == "EntryTooLarge"
    assert report.status["errors"][0]["message"] == (
        "chart evil 1.0.0: its index entry is over 16 KiB, so it is left out of the index"
    )


def test_the_text_is_what_one_dump_of_the_document_would_be() -> None:
    vs = [*versions(12), chart("charts/true", "1.0.0"), chart("charts/a b", "0.1.0")]
    index = build_index(vs, SERVER)
    text = index.text("2025-02-03T00:00:00Z")
    whole = {**index.document, "generated": "2025-02-03T00:00:00Z"}
    assert text == yaml.safe_dump(whole, sort_keys=False)
    empty = build_index([], SERVER)
    assert yaml.safe_load(empty.text("now")) == {
        "apiVersion": "v1",
        "entries": {},
        "generated": "now",
    }


hostile_text = st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300
).filter(lambda s: s.strip())


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(hostile_text, min_size=1, max_size=4),
    description=st.text(st.characters(blacklist_categories=("Cs",)), max_size=1200),
    max_bytes=st.integers(min_value=200, max_value=40_000),
)
def test_any_names_and_text_give_an_index_that_reads_back_within_its_size(
    names: list[str], description: str, max_bytes: int
) -> None:
    vs = [
        IndexedVersion(
            f"charts/c{i}",
            f"1.{j}.0",
            f"1.{j}.0",
            "sha256:" + "a" * 64,
            None,
            chart_metadata(
                json.dumps(
                    {"name": name, "version": f"1.{j}.0", "description": description}
                ).encode()
            ),
        )
        for i, name in enumerate(names)
        for j in range(3)
    ]
    index = build_index(vs, SERVER, max_bytes=max_bytes)
    text = index.text("2025-02-03T00:00:00Z")
    assert yaml.safe_load(text) == {**index.document, "generated": "2025-02-03T00:00:00Z"}
    if index.document["entries"]:
        assert len(text.encode()) <= max_bytes
    kept = sum(len(rows) for rows in index.document["entries"].values())
    left_out = sum(1 for t in index.trimmed if t.left_out is None)
    assert kept + index.dropped + left_out == len(vs) - len(index.duplicates)
