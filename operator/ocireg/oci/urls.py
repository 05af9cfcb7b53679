"""URL pieces, without any network: the origin a URL is compared by (credentials go to the
registry's own origin only) and the parts of a URL that are safe to log or show (never its
userinfo or query, which may carry signatures or tokens)."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-cased host, port) of an http(s) URL; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def host_port(url: str) -> str:
    found = origin(url)
    if found is None:
        return "an invalid URL"
    _, host, port = found
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_path(url: str) -> str:
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return "?"


def loggable(url: str) -> str:
    """The URL without userinfo, query or fragment (those may carry signatures or tokens)."""
    found = origin(url)
    if found is None:
        return "<invalid URL>"
    return f"{found[0]}://{host_port(url)}{url_path(url)}"
