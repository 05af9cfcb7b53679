"""Every credential value the local environment hands out, so the e2e suite can prove none of
them ever shows up where it must not: operator logs, Events, status.

The local registries record their passwords here, the token server its refresh and access
tokens, the cloud stand-ins what they mint; tests add their own with :func:`remember`. A leak
is looked for in the forms a careless log line would take: as is, URL- or JSON-escaped,
base64 (alone, and as the ``user:password`` pair a Docker config ``auth`` field holds)."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

# Shorter values would match by accident (and no credential used here is that short).
MIN_LENGTH = 8


@dataclass(frozen=True)
class Leak:
    label: str  # what the secret is (never the value)
    form: str  # how it appeared: "as is", "base64", ...
    where: str


def forms(value: str, username: str | None = None) -> dict[str, str]:
    """The encodings of ``value`` a leak could take, by name."""
    found = {
        "as is": value,
        "URL-encoded": quote(value, safe=""),
        "form-encoded": quote_plus(value),
        "JSON-escaped": json.dumps(value)[1:-1],
        "base64": base64.b64encode(value.encode()).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    }
    if username is not None:
        pair = f"{username}:{value}".encode()
        found["base64 user:password"] = base64.b64encode(pair).decode().rstrip("=")
    return found


class KnownSecrets:
    """A thread-safe set of credential values, each with a label saying what it is."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str | None], str] = {}
        self._lock = threading.Lock()

    def add(self, value: str | None, label: str, username: str | None = None) -> None:
        if not value or len(value) < MIN_LENGTH:
            return
        with self._lock:
            self._entries.setdefault((value, username), label)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def labels(self) -> list[str]:
        with self._lock:
            return sorted(set(self._entries.values()))

    def find(self, text: str, where: str) -> list[Leak]:
        """Every known secret that appears in ``text``, by label and form (never value)."""
        with self._lock:
            entries = list(self._entries.items())
        leaks: list[Leak] = []
        for (value, username), label in entries:
            for form, encoded in forms(value, username).items():
                if len(encoded) >= MIN_LENGTH and encoded in text:
                    leaks.append(Leak(label, form, where))
                    break
        return leaks


KNOWN_SECRETS = KnownSecrets()


def remember(value: str | None, label: str, username: str | None = None) -> None:
    """Record a credential value the operator may be given but must never show."""
    KNOWN_SECRETS.add(value, label, username)


__all__ = ["KNOWN_SECRETS", "KnownSecrets", "Leak", "forms", "remember"]
