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
        )

    def secret_values(self) -> tuple[str, ...]:
        """Every secret string in this credential, for redaction checks."""
        return tuple(v for v in (self.password, self.identity_token, self.registry_token) if v)
