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
    # Set by the mint cache on what it mints: a keyed digest of the mint key (every input
    # the mint consumed, bound to the trust domain), for the status seal (providers/seal.py).
    # Never the inputs themselves.
    minted_from: str | None = field(default=None, repr=False)

    def password_for(self, endpoint: str) -> str | None:
        return dict(self.passwords).get(endpoint, self.password)

    @property
    def anonymous(self) -> bool:
        return not (self.password or self.identity_token or self.registry_token)

    def fingerprint_parts(self) -> tuple[object, ...]:
        """Everything that goes into the written Secrets, for change detection (hashed
        before it is kept). The per-endpoint passwords as the Secrets have them (one per
        endpoint), so that a credential read back from a copy has the same parts."""
        return (
            self.provider,
            self.endpoints,
            self.username,
            self.password,
            self.identity_token,
            self.registry_token,
            self.expires_at,
            tuple((endpoint, self.password_for(endpoint)) for endpoint in self.endpoints),
        )

    def secret_values(self) -> tuple[str, ...]:
        """Every secret string in this credential, for redaction checks."""
        values = (self.password, self.identity_token, self.registry_token)
        return tuple(v for v in values if v) + tuple(p for _, p in self.passwords)
