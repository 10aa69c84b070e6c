"""Time zones where it is, right now, inside or outside the messaging window."""

from __future__ import annotations

from datetime import UTC, datetime


def zone_at_local_hour(hour: int, now: datetime | None = None) -> str:
    """An Etc/GMT zone whose local hour is `hour` now (Etc/GMT+X is UTC-X)."""
    now = now or datetime.now(UTC)
    behind = (now.hour - hour) % 24
    if behind > 12:
        behind -= 24
    return f"Etc/GMT{'+' if behind >= 0 else '-'}{abs(behind)}"


def daytime_zone() -> str:
    return zone_at_local_hour(12)


def night_zone() -> str:
    return zone_at_local_hour(2)
