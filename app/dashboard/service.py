"""What the dashboard's pages show, computed from the hourly counts (overview) or from
one patient's rows (lookup). Never a scan of `notifications`."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard import repository as dashboard_repository

# The funnel's steps and the states that have passed each: a notification counts in
# every step it reached (a read message was also sent and delivered).
FUNNEL: tuple[tuple[str, frozenset[str]], ...] = (
    ("sent", frozenset({"sent", "delivered", "read"})),
    ("delivered", frozenset({"delivered", "read"})),
    ("read", frozenset({"read"})),
)
PROBLEMS = ("failed", "denied", "expired")
TOP_REASONS = 8
# Up to this many days the time series is per hour; past it, per day.
HOURLY_UP_TO = timedelta(days=2)


STEPS = ("scheduled", "sent", "delivered", "read")


@dataclass
class Totals:
    scheduled: int = 0
    sent: int = 0
    delivered: int = 0
    read: int = 0
    failed: int = 0
    denied: int = 0
    expired: int = 0

    def add(self, state: str, count: int) -> None:
        self.scheduled += count
        for step, states in FUNNEL:
            if state in states:
                setattr(self, step, getattr(self, step) + count)
        if state in PROBLEMS:
            setattr(self, state, getattr(self, state) + count)

    def steps(self) -> list[tuple[str, int]]:
        return [(step, getattr(self, step)) for step in STEPS]

    def problems(self) -> list[tuple[str, int]]:
        return [(state, getattr(self, state)) for state in PROBLEMS]


@dataclass
class Overview:
    since: datetime
    until: datetime
    hourly: bool
    totals: Totals = field(default_factory=Totals)
    by_channel: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    by_period: dict[datetime, Totals] = field(default_factory=lambda: defaultdict(Totals))
    reasons: list[tuple[str, str, int]] = field(default_factory=list)
    dispatched: int = 0
    fell_back: int = 0
    countries: list[str] = field(default_factory=list)
    purposes: list[str] = field(default_factory=list)

    @property
    def fallback_rate(self) -> float | None:
        return self.fell_back / self.dispatched if self.dispatched else None

    def channel_rows(self) -> list[tuple[str, int]]:
        return [(channel, totals.scheduled) for channel, totals in self.by_channel.items()]

    def period_rows(self) -> list[tuple[str, int]]:
        pattern = "%m-%d %H:00" if self.hourly else "%Y-%m-%d"
        return [(p.strftime(pattern), t.scheduled) for p, t in self.by_period.items()]


async def overview(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    country: str | None = None,
    purpose: str | None = None,
) -> Overview:
    """The funnel, problems, channels, fallback rate and time series of the notifications
    created in [since, until), optionally of one country and purpose."""
    result = Overview(since=since, until=until, hourly=until - since <= HOURLY_UP_TO)
    # Unfiltered, so that the filters' choices come from the same rows (a distinct over
    # the whole counts table costs more than the page); filtered here.
    rows = await dashboard_repository.counts(session, since, until, per_day=not result.hourly)
    result.countries = sorted({row.country for row in rows if row.country})
    result.purposes = sorted({row.purpose for row in rows})
    reasons: Counter[tuple[str, str]] = Counter()
    for row in rows:
        if (country and row.country != country) or (purpose and row.purpose != purpose):
            continue
        result.totals.add(row.state, row.count)
        result.by_channel[row.channel or "not yet sent"].add(row.state, row.count)
        result.by_period[row.hour].add(row.state, row.count)
        if row.reason:
            reasons[(row.state, row.reason)] += row.count
        if row.channel:
            result.dispatched += row.count
            result.fell_back += row.count if row.fell_back else 0
    result.reasons = [(s, r, n) for (s, r), n in reasons.most_common(TOP_REASONS)]
    result.by_period = dict(sorted(result.by_period.items()))
    result.by_channel = dict(sorted(result.by_channel.items()))
    return result
