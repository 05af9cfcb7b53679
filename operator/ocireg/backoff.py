"""The one retry schedule: exponential backoff with jitter, capped, honouring a server's
Retry-After. Every retry in the operator (a failing registry object or mint, a broken watch, a
failed namespace job) waits what one of these says; they differ only in base, cap and jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float  # seconds after the first failure
    cap: float  # never longer (a server's Retry-After may stretch it to 4 x cap)
    jitter: float = 0.1  # +- this fraction, so that retries of many keys spread out

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the n-th consecutive failure (n >= 1)."""
        delay = min(self.cap, self.base * 2.0 ** min(max(0, failures - 1), 32))
        delay *= 1 + random.uniform(-self.jitter, self.jitter)  # noqa: S311 - not cryptography
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 4))
        return delay
