"""Chart versions: OCI tags to SemVer, Helm's constraint syntax, newest-first selection.

Helm stores a chart version as the OCI tag, with `+` (not allowed in tags) written as `_`.
Helm accepts loose versions (`v1.2`, `1.2`) the way its semver library does, so they are
accepted here too. Constraints follow Helm's (Masterminds semver v3) syntax: `,` or spaces
for "and", `||` for "or", `=`, `!=`, `>`, `>=`, `<`, `<=`, `~`, `^`, `x`/`*` wildcards and
`1.2 - 1.4` ranges. A constraint whose terms carry no pre-release never matches pre-releases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import semver

_LOOSE: Final = re.compile(
    r"v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*)(?:\.(?P<patch>0|[1-9]\d*))?)?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_TERM: Final = re.compile(
    r"(?P<op>!=|>=|=>|<=|=<|~>|[=<>~^])?\s*"
    r"v?(?P<major>\d+|[xX*])(?:\.(?P<minor>\d+|[xX*]))?(?:\.(?P<patch>\d+|[xX*]))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_HYPHEN: Final = re.compile(r"(\S+)\s+-\s+(\S+)")


class ConstraintError(ValueError):
    """A version constraint Helm would not understand either."""


@dataclass(frozen=True)
class ChartVersion:
    """A chart version as Helm writes it (``text``) with SemVer ordering."""

    text: str
    parsed: semver.Version

    @property
    def prerelease(self) -> bool:
        return self.parsed.prerelease is not None

    def sort_key(self) -> tuple[semver.Version, str]:
        # Build metadata does not order versions; the text breaks ties so order is stable.
        return (self.parsed, self.text)


def parse_version(text: str) -> ChartVersion | None:
    """A version from Helm's spelling (`1.2.3+build`), or None if it is not one."""
    match = _LOOSE.fullmatch(text)
    if match is None:
        return None
    parsed = semver.Version(
        int(match["major"]),
        int(match["minor"] or 0),
        int(match["patch"] or 0),
        match["pre"],
        match["build"],
    )
    return ChartVersion(text, parsed)


def tag_to_version(tag: str) -> ChartVersion | None:
    """The chart version an OCI tag stands for (Helm writes `+` as `_`), or None."""
    return parse_version(tag.replace("_", "+"))


def version_to_tag(version: str) -> str:
    return version.replace("+", "_")


# --------------------------------------------------------------------------- constraints

Check = Callable[[semver.Version], bool]


@dataclass(frozen=True)
class _Term:
    check: Check
    allows_prerelease: bool  # the term names a pre-release, so pre-releases may match


class Constraint:
    """A parsed Helm version constraint; ``Constraint(None)`` allows everything."""

    def __init__(self, text: str | None) -> None:
        self.text = (text or "").strip()
        self._alternatives: list[list[_Term]] = []
        if not self.text:
            return
        for alternative in self.text.split("||"):
            terms = _parse_and(alternative.strip(), self.text)
            self._alternatives.append(terms)

    def __bool__(self) -> bool:
        return bool(self._alternatives)

    def allows(self, version: ChartVersion) -> bool:
        if not self._alternatives:
            return True
        v = version.parsed
        for terms in self._alternatives:
            # As Helm: a pre-release matches only when a term names a pre-release.
            if version.prerelease and not any(t.allows_prerelease for t in terms):
                continue
            if all(term.check(v) for term in terms):
                return True
        return False


def _parse_and(text: str, whole: str) -> list[_Term]:
    if not text:
        raise ConstraintError(f"version constraint {whole!r} has an empty alternative")
    terms: list[_Term] = []
    text = _HYPHEN.sub(lambda m: f">={m[1]} <={m[2]}", text)
    rest = text.replace(",", " ").strip()
    while rest:
        match = _TERM.match(rest)
        end = match.end() if match else 0
        if match is None or (end < len(rest) and not rest[end].isspace()):
            bad = rest.split()[0]
            raise ConstraintError(
                f"version constraint {whole!r}: cannot read {bad!r} (use e.g. >=1.0.0, ^1.2, "
                "~1.4, 1.x, 1.2 - 1.4, joined by commas or ||)"
            )
        terms.append(_term(match))
        rest = rest[end:].strip()
    return terms


def _term(match: re.Match[str]) -> _Term:
    op = {"=>": ">=", "=<": "<=", "~>": "~"}.get(match["op"] or "=", match["op"] or "=")
    parts = [match["major"], match["minor"], match["patch"]]
    wild = [p is None or p in ("x", "X", "*") for p in parts]
    numbers = [0 if w else int(p) for p, w in zip(parts, wild, strict=True)]
    pre = match["pre"]
    # How many leading parts are given: 0 for `*`, 1 for `1` or `1.x`, 2 for `1.2`, 3 for `1.2.3`.
    given = next((i for i, w in enumerate(wild) if w), 3)
    major, minor, patch = numbers
    base = semver.Version(major, minor, patch, prerelease=pre if given == 3 else None)
    allows_pre = pre is not None and given == 3
    if given == 0:
        if op in ("<", "!="):
            return _Term(lambda v: False, False)
        return _Term(lambda v: True, False)
    upper = _bump(numbers, given)  # the first version past the wildcard range
    if op == "=":
        if given == 3:
            return _Term(lambda v: v.compare(base) == 0, allows_pre)
        return _Term(lambda v: base <= v < upper, False)
    if op == "!=":
        if given == 3:
            return _Term(lambda v: v.compare(base) != 0, allows_pre)
        return _Term(lambda v: not (base <= v < upper), False)
    if op == ">":
        if given == 3:
            return _Term(lambda v: v > base, allows_pre)
        return _Term(lambda v: v >= upper, False)
    if op == ">=":
        return _Term(lambda v: v >= base, allows_pre)
    if op == "<":
        return _Term(lambda v: v < base, allows_pre)
    if op == "<=":
        if given == 3:
            return _Term(lambda v: v <= base, allows_pre)
        return _Term(lambda v: v < upper, False)
    if op == "~":
        # ~1.2.3 and ~1.2: same minor; ~1: same major.
        tilde_upper = _bump(numbers, 2 if given >= 2 else 1)
        return _Term(lambda v: base <= v < tilde_upper, allows_pre)
    # ^: the left-most non-zero part stays (^0.2.3 < 0.3.0, ^0.0.3 < 0.0.4).
    if numbers[0] > 0 or given == 1:
        caret_upper = _bump(numbers, 1)
    elif numbers[1] > 0 or given == 2:
        caret_upper = _bump(numbers, 2)
    else:
        caret_upper = _bump(numbers, 3)
    return _Term(lambda v: base <= v < caret_upper, allows_pre)


def _bump(numbers: list[int], position: int) -> semver.Version:
    """The lowest version past every version that shares the first ``position`` parts;
    compared against pre-releases too (``2.0.0-0`` sorts below every 2.0.0 pre-release)."""
    major, minor, patch = numbers
    if position == 1:
        return semver.Version(major + 1, 0, 0, prerelease="0")
    if position == 2:
        return semver.Version(major, minor + 1, 0, prerelease="0")
    return semver.Version(major, minor, patch + 1, prerelease="0")


# --------------------------------------------------------------------------- selection


def newest_first(versions: Iterable[ChartVersion]) -> list[ChartVersion]:
    return sorted(versions, key=ChartVersion.sort_key, reverse=True)


def candidates(tags: Iterable[str], constraint: Constraint) -> list[tuple[str, ChartVersion]]:
    """(tag, version) for every tag that is a version the constraint allows, newest first.
    Tags that are not versions (`latest`, `sha256-...sig`) are left out."""
    found: list[tuple[str, ChartVersion]] = []
    for tag in tags:
        version = tag_to_version(tag)
        if version is not None and constraint.allows(version):
            found.append((tag, version))
    found.sort(key=lambda pair: pair[1].sort_key(), reverse=True)
    return found


def latest(versions: Iterable[ChartVersion]) -> ChartVersion | None:
    """The newest stable version, or the newest pre-release when there is no stable one."""
    ordered = newest_first(versions)
    stable = [v for v in ordered if not v.prerelease]
    chosen = stable or ordered
    return chosen[0] if chosen else None
