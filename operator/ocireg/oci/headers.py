"""HTTP header parsing, without any network: the token and quoted-string grammar (RFC 9110)
that WWW-Authenticate (in :mod:`ocireg.oci.auth`) and Link share, and the Link (paging),
Retry-After and RateLimit-Remaining values registries send."""

from __future__ import annotations

import email.utils
import math
import string
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urljoin, urlsplit

_TCHAR: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
WHITESPACE: Final = " \t\r\n"

# --------------------------------------------------------------------------- grammar


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in WHITESPACE:
        i += 1
    return i


def read_token(text: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] in _TCHAR:
        j += 1
    return text[i:j], j


def read_quoted(text: str, i: int, what: str) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; backslash escapes any character."""
    out: list[str] = []
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            if j + 1 >= len(text):
                raise ValueError(f"{what}: dangling backslash at the end of a quoted string")
            out.append(text[j + 1])
            j += 2
            continue
        if c == '"':
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise ValueError(f"{what}: quoted string starting at position {i} is not terminated")


def read_value(text: str, i: int, what: str, stops: str) -> tuple[str, int]:
    i = skip_ws(text, i)
    if i < len(text) and text[i] == '"':
        return read_quoted(text, i, what)
    # Unquoted values should be tokens, but servers send realms like https://x/token unquoted.
    j = i
    while j < len(text) and text[j] not in stops:
        j += 1
    return text[i:j], j


# --------------------------------------------------------------------------- values


def parse_link_next(header: str | None, base_url: str) -> str | None:
    """The absolute URL of the ``rel="next"`` link in a Link header (RFC 8288), or None.

    Several comma-separated links, quoted or bare ``rel`` values (which may list several
    relation types) and relative references (resolved against ``base_url``, the URL the
    header came with) are understood. Raises ValueError on a malformed header.
    """
    if header is None:
        return None
    what = "Link"
    if not isinstance(header, str):
        raise ValueError(f"{what}: expected a string, got {type(header).__name__}")
    for target, params in _parse_links(header):
        if "next" in params.get("rel", "").lower().split():
            return _resolve(target, base_url)
    return None


def _parse_links(header: str) -> list[tuple[str, dict[str, str]]]:
    what = "Link"
    links: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(header)
    while True:
        i = skip_ws(header, i)
        if i < n and header[i] == ",":
            i += 1
            continue
        if i >= n:
            return links
        if header[i] != "<":
            raise ValueError(f"{what}: expected '<' at position {i}, found {header[i]!r}")
        end = header.find(">", i + 1)
        if end < 0:
            raise ValueError(f"{what}: '<' at position {i} is never closed")
        target = header[i + 1 : end].strip()
        params: dict[str, str] = {}
        i = end + 1
        while True:
            i = skip_ws(header, i)
            if i >= n or header[i] == ",":
                break
            if header[i] != ";":
                raise ValueError(f"{what}: expected ';' or ',' at position {i}")
            i = skip_ws(header, i + 1)
            if i >= n or header[i] in ";,":
                continue  # empty parameter
            name, j = read_token(header, i)
            if not name:
                raise ValueError(f"{what}: unexpected character {header[i]!r} at position {i}")
            i = skip_ws(header, j)
            value = ""
            if i < n and header[i] == "=":
                value, i = read_value(header, i + 1, what, ' \t\r\n;,"')
                if i < n and header[i] == '"':
                    raise ValueError(f"{what}: unexpected quote at position {i}")
            # RFC 8288: occurrences after the first rel are ignored.
            params.setdefault(name.lower(), value)
        links.append((target, params))


def _resolve(target: str, base_url: str) -> str:
    try:
        url = urljoin(base_url, target)
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"Link: cannot resolve the next link: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("Link: the next link does not resolve to an http(s) URL")
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def parse_rate_limit(value: str | None) -> int | None:
    # Docker Hub: "76;w=21600" (remaining pulls; window in seconds).
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None
