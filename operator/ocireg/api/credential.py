"""What every provider returns: credentials for one or more registry hosts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Credential:
    provider: str
    endpoints: tuple[str, ...]  # host[:port] keys for the Docker config
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    # Per-endpoint passwords where they differ (ECR mints one token per region/account); the
    # shared username/password above are the first endpoint's.
    passwords: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    issued_at: datetime | None = None
    note: str = ""  # something a user should know, e.g. "expired when issued"

    def password_for(self, endpoint: str) -> str | None:
        return dict(self.passwords).get(endpoint, self.password)

    @property
    def anonymous(self) -> bool:
        return not (self.password or self.identity_token or self.registry_token)

    def fingerprint_parts(self) -> tuple[object, ...]:
        """Everything that goes into the written Secrets, for change detection (hashed
        before it is kept)."""
        return (
            self.provider,
            self.endpoints,
            self.username,
            self.password,
            self.identity_token,
            self.registry_token,
            self.expires_at,
            self.passwords,
        )

    def secret_values(self) -> tuple[str, ...]:
        """Every secret string in this credential, for redaction checks."""
        values = (self.password, self.identity_token, self.registry_token)
        return tuple(v for v in values if v) + tuple(p for _, p in self.passwords)
