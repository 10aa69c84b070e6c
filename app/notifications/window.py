"""The messaging window: patients are messaged only between set hours of their own day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class MessagingWindow:
    """Local hours [start, end) in which a message may go out."""

    start: time
    end: time

    def contains(self, moment: datetime, time_zone: str) -> bool:
        local = moment.astimezone(zone(time_zone)).time()
        return self.start <= local < self.end

    def opening_on(self, day: date, time_zone: str) -> datetime:
        return datetime.combine(day, self.start, tzinfo=zone(time_zone)).astimezone(UTC)

    def closing_on(self, day: date, time_zone: str) -> datetime:
        return datetime.combine(day, self.end, tzinfo=zone(time_zone)).astimezone(UTC)

    def next_moment(self, moment: datetime, time_zone: str) -> datetime:
        """`moment` if the window is open then, else the window's next opening."""
        local = moment.astimezone(zone(time_zone))
        if self.start <= local.time() < self.end:
            return moment.astimezone(UTC)
        day = local.date() if local.time() < self.start else local.date() + timedelta(days=1)
        return self.opening_on(day, time_zone)

    def moment_on(self, day: date, time_zone: str, now: datetime) -> datetime | None:
        """When a reminder for local `day` goes out: the day's opening, or now if later.

        None when that day's window has closed already.
        """
        if now >= self.closing_on(day, time_zone):
            return None
        return max(self.opening_on(day, time_zone), now.astimezone(UTC))
