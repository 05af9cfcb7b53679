"""Go-style durations ("90s", "15m", "1h30m") and lifetime fractions ("20%")."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
RENEW_BEFORE_PATTERN = r"^(([1-9]|[1-9][0-9])%|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
# Beyond what any interval means; Go (and CEL) durations end near 292 years.
MAX_DURATION = timedelta(days=100 * 365)


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration; raise ValueError with the offending text otherwise."""
    if not re.fullmatch(DURATION_PATTERN, text or ""):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    # The pattern allows any number of digits: without a bound, "2000000000000m" overflows
    # timedelta, and a merely huge one overflows the datetime arithmetic of the schedule.
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs or not (hours or minutes) else "",
    ]
    return "".join(parts)


def renew_margin(renew_before: str, lifetime: timedelta) -> timedelta:
    """How long before expiry to renew: a percentage of the lifetime, or a fixed duration
    (never more than the whole lifetime)."""
    if renew_before.endswith("%"):
        percent = int(renew_before[:-1])
        if not 1 <= percent <= 99:
            raise ValueError(f"renewBefore {renew_before!r} must be between 1% and 99%")
        return lifetime * (percent / 100)
    return min(parse_duration(renew_before), lifetime)
