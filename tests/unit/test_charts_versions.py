"""Chart versions: tags to SemVer, Helm's constraint syntax, newest-first selection."""

from __future__ import annotations

import pytest
import semver
from hypothesis import given
from hypothesis import strategies as st

from ocireg.charts.versions import (
    Constraint,
    ConstraintError,
    candidates,
    latest,
    parse_version,
    tag_to_version,
    version_to_tag,
)


def v(text: str):
    parsed = parse_version(text)
    assert parsed is not None, text
    return parsed


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("1.2.3", "1.2.3"),
        ("1.2.3_build.5", "1.2.3+build.5"),  # helm push writes + as _
        ("1.0.0-rc.1_sha.abc", "1.0.0-rc.1+sha.abc"),
        ("v2.0.1", "v2.0.1"),
        ("1.2", "1.2"),
    ],
)
def test_tags_that_are_chart_versions(tag: str, version: str) -> None:
    parsed = tag_to_version(tag)
    assert parsed is not None
    assert parsed.text == version
    assert version_to_tag(version) == tag


@pytest.mark.parametrize("tag", ["latest", "main", "sha256-0a1b.sig", "1.2.3.4", "01.2.3", ""])
def test_tags_that_are_not_versions(tag: str) -> None:
    assert tag_to_version(tag) is None


@pytest.mark.parametrize(
    ("constraint", "version", "allowed"),
    [
        (">=1.0.0", "1.0.0", True),
        (">=1.0.0", "0.9.9", False),
        (">=1.0.0", "2.0.0-rc.1", False),  # no pre-release in the constraint: none match
        (">=1.0.0-0", "2.0.0-rc.1", True),
        (">= 1.0.0, < 2.0.0", "1.9.9", True),
        (">= 1.0.0, < 2.0.0", "2.0.0", False),
        (">=1.0.0 <2.0.0", "2.0.0", False),
        ("^1.2.3", "1.9.0", True),
        ("^1.2.3", "2.0.0", False),
        ("^1.2.3", "1.2.2", False),
        ("^0.2.3", "0.2.9", True),
        ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.4", False),
        ("^0", "0.9.0", True),
        ("^1.2", "1.3.0", True),
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        ("~1", "1.9.0", True),
        ("~1", "2.0.0", False),
        ("~>1.2", "1.2.5", True),
        ("1.2.x", "1.2.7", True),
        ("1.2.x", "1.3.0", False),
        ("1.x", "1.9.9", True),
        ("*", "7.0.0", True),
        ("*", "7.0.0-alpha", False),
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "1.2.3+build.7", True),  # build metadata does not count
        ("=1.2", "1.2.9", True),
        ("!=1.2.3", "1.2.3", False),
        ("!=1.2.3", "1.2.4", True),
        (">1.2", "1.2.9", False),  # a partial version stands for all of 1.2.x
        (">1.2", "1.3.0", True),
        ("<=1.2", "1.2.9", True),
        ("<1.2", "1.1.9", True),
        ("<1.2", "1.2.0", False),
        ("1.2 - 1.4.5", "1.4.5", True),
        ("1.2 - 1.4.5", "1.4.6", False),
        ("<1.0.0 || >=3.0.0", "3.1.0", True),
        ("<1.0.0 || >=3.0.0", "2.0.0", False),
        ("v1.2.3", "1.2.3", True),
        ("=>1.0.0", "1.0.0", True),
    ],
)
def test_constraints_as_helm_reads_them(constraint: str, version: str, allowed: bool) -> None:
    assert Constraint(constraint).allows(v(version)) is allowed


def test_no_constraint_allows_everything_including_prereleases() -> None:
    assert not Constraint(None)
    assert Constraint("").allows(v("0.0.1-alpha"))


@pytest.mark.parametrize("text", [">=1.0.0 ||", ">=abc", "1.2.3 foo", ">>1", "^", "1.0.0,,x!"])
def test_bad_constraints_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ConstraintError, match="version constraint"):
        Constraint(text)


def test_candidates_are_versions_allowed_newest_first() -> None:
    tags = ["latest", "1.0.0", "1.10.0", "1.9.0", "2.0.0-rc.1", "1.9.0_build.2", "sha256-x.sig"]
    found = candidates(tags, Constraint(">=1.0.0"))
    assert [t for t, _ in found] == ["1.10.0", "1.9.0_build.2", "1.9.0", "1.0.0"]


def test_latest_prefers_stable_versions() -> None:
    assert latest([v("1.0.0"), v("2.0.0-rc.1"), v("1.5.0")]).text == "1.5.0"
    assert latest([v("2.0.0-rc.1"), v("2.0.0-beta")]).text == "2.0.0-rc.1"
    assert latest([]) is None


versions = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-{pre}" if pre else ""),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.sampled_from(["", "alpha", "rc.1", "0"]),
)


@given(versions, versions)
def test_greater_or_equal_agrees_with_semver(lower: str, version: str) -> None:
    expected = semver.Version.parse(version) >= semver.Version.parse(lower) and (
        "-" not in version or "-" in lower
    )
    assert Constraint(f">={lower}").allows(v(version)) is expected


@given(versions, versions)
def test_caret_stays_below_the_next_breaking_version(base: str, version: str) -> None:
    b, x = semver.Version.parse(base), semver.Version.parse(version)
    allowed = Constraint(f"^{base}").allows(v(version))
    if allowed:
        assert x >= b
        if b.major > 0:
            assert x.major == b.major
        elif b.minor > 0:
            assert (x.major, x.minor) == (0, b.minor)
