"""SQL of the dashboard: the notification and webhook delivery counts (never a scan of
`notifications` or `webhook_deliveries`), and the latest failing deliveries (an index)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

KEY_COLUMNS = "hour, country, channel, purpose, state, reason, fell_back"

GROUP_COLUMNS = "country, channel, purpose, state, reason, fell_back"
DAY_OF_HOUR = "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"

# DELETE ... RETURNING takes exactly the deltas committed before it began; deltas
# committed meanwhile stay for the next fold, and a concurrent fold (another worker)
# finds the rows already gone and skips them. So no delta is folded twice or lost. The
# same deltas go into the hourly and the daily counts in this one statement: a day is
# always the sum of its hours.
_FOLD = text(
    f"""
    WITH moved AS (DELETE FROM notification_count_deltas RETURNING {KEY_COLUMNS}, count),
    summed AS (
        SELECT {KEY_COLUMNS}, sum(count) AS count FROM moved GROUP BY {KEY_COLUMNS}
    ),
    upserted AS (
        INSERT INTO notification_counts ({KEY_COLUMNS}, count)
        SELECT {KEY_COLUMNS}, count FROM summed WHERE count <> 0
        ON CONFLICT ({KEY_COLUMNS})
        DO UPDATE SET count = notification_counts.count + excluded.count
        RETURNING 1
    ),
    daily AS (
        INSERT INTO notification_counts_daily (day, {GROUP_COLUMNS}, count)
        SELECT {DAY_OF_HOUR}, {GROUP_COLUMNS}, sum(count) FROM moved
        GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING sum(count) <> 0
        ON CONFLICT (day, {GROUP_COLUMNS})
        DO UPDATE SET count = notification_counts_daily.count + excluded.count
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM upserted),
           (SELECT count(*) FROM daily)
    """  # noqa: S608 - constants only
)


# The webhook deliveries' counts, the same way (migration 20261205_dashboard_bounded_reads).
_FOLD_WEBHOOKS = text(
    """
    WITH moved AS (
        DELETE FROM webhook_delivery_count_deltas RETURNING endpoint_name, state, count
    ),
    upserted AS (
        INSERT INTO webhook_delivery_counts (endpoint_name, state, count)
        SELECT endpoint_name, state, sum(count) FROM moved
        GROUP BY 1, 2 HAVING sum(count) <> 0
        ON CONFLICT (endpoint_name, state)
        DO UPDATE SET count = webhook_delivery_counts.count + excluded.count
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM upserted)
    """
)


async def fold_counts(session: AsyncSession) -> int:
    """Move the pending deltas into `notification_counts` (and the daily counts), and the
    webhook deliveries' into `webhook_delivery_counts`; returns how many notification
    deltas were moved."""
    moved, _, _ = (await session.execute(_FOLD)).one()
    await session.execute(_FOLD_WEBHOOKS)
    return int(moved)


@dataclass(frozen=True)
class CountRow:
    hour: datetime
    country: str
    channel: str
    purpose: str
    state: str
    reason: str
    fell_back: bool
    count: int


# Off: long ranges sum the hourly counts as before the daily ones existed. Only
# `notify bench dashboard` turns it off, to time both ways in one run.
READ_DAILY = True


def _day(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def counts(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    country: str | None = None,
    purpose: str | None = None,
    *,
    per_day: bool = False,
) -> list[CountRow]:
    """Every non-zero group of notifications created in [since, until): the folded counts
    plus the deltas not yet folded, so the figures are exact as of this transaction.
    `per_day` (long ranges): summed into UTC days, the whole days read from the daily
    counts and only the partial days at either end (since's, until's) from the hourly."""
    filters = ""
    if country is not None:
        filters += " AND country = :country"
    if purpose is not None:
        filters += " AND purpose = :purpose"
    params: dict[str, object] = {
        "since": since,
        "until": until,
        "country": country,
        "purpose": purpose,
    }
    if not per_day or not READ_DAILY:
        parts = f"""
            SELECT {KEY_COLUMNS}, count FROM notification_counts
            WHERE hour >= :since AND hour < :until {filters}
            UNION ALL
            SELECT {KEY_COLUMNS}, count FROM notification_count_deltas
            WHERE hour >= :since AND hour < :until {filters}"""  # noqa: S608 - constants only
        bucket = "hour"
    else:
        first_whole = _day(since) if _day(since) == since else _day(since) + timedelta(days=1)
        last_whole = _day(until)
        if first_whole > last_whole:  # within one day: no whole day, all hourly
            first_whole = last_whole = until
        params.update(first_whole=first_whole, last_whole=last_whole)
        parts = f"""
            SELECT day AS hour, {GROUP_COLUMNS}, count FROM notification_counts_daily
            WHERE day >= :first_whole AND day < :last_whole {filters}
            UNION ALL
            SELECT {KEY_COLUMNS}, count FROM notification_counts
            WHERE ((hour >= :since AND hour < :first_whole)
                   OR (hour >= :last_whole AND hour < :until)) {filters}
            UNION ALL
            SELECT {KEY_COLUMNS}, count FROM notification_count_deltas
            WHERE hour >= :since AND hour < :until {filters}"""  # noqa: S608 - constants only
        bucket = DAY_OF_HOUR
    rows = await session.execute(
        text(
            f"""
            SELECT {bucket}, {GROUP_COLUMNS}, sum(count) AS count FROM ({parts}
            ) AS all_parts
            GROUP BY 1, 2, 3, 4, 5, 6, 7
            HAVING sum(count) <> 0
            ORDER BY 1
            """  # noqa: S608 - constants and bound parameters only
        ),
        params,
    )
    return [CountRow(*row) for row in rows]


async def recent_round_ids(session: AsyncSession, limit: int) -> list[int]:
    rows = await session.scalars(
        text("SELECT id FROM imo_invitation_rounds ORDER BY id DESC LIMIT :limit"),
        {"limit": limit},
    )
    return list(rows)


@dataclass(frozen=True)
class WebhookRow:
    name: str
    url: str
    events: list[str]
    active: bool
    failing_since: datetime | None
    disabled_at: datetime | None
    pending: int
    failed: int
    delivered: int


# The folded counts plus the deltas not yet folded: exact as of this transaction, and a
# few rows per endpoint whatever the number of deliveries (never `webhook_deliveries`).
_WEBHOOKS = text(
    """
    SELECT e.name, e.url, e.events, e.active, e.failing_since, e.disabled_at,
           CAST(coalesce(sum(c.count) FILTER (WHERE c.state = 'pending'), 0) AS bigint)
               AS pending,
           CAST(coalesce(sum(c.count) FILTER (WHERE c.state = 'failed'), 0) AS bigint)
               AS failed,
           CAST(coalesce(sum(c.count) FILTER (WHERE c.state = 'delivered'), 0) AS bigint)
               AS delivered
    FROM webhook_endpoints AS e
    LEFT JOIN (
        SELECT endpoint_name, state, count FROM webhook_delivery_counts
        UNION ALL
        SELECT endpoint_name, state, count FROM webhook_delivery_count_deltas
    ) AS c ON c.endpoint_name = e.name
    GROUP BY e.name ORDER BY e.name
    """
)


async def webhooks(session: AsyncSession) -> list[WebhookRow]:
    """Every webhook endpoint with its deliveries counted by state (from the counts)."""
    return [WebhookRow(*row) for row in await session.execute(_WEBHOOKS)]


@dataclass(frozen=True)
class FailingDelivery:
    id: int
    endpoint_name: str
    type: str
    occurred_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None


# Given up, or owed after at least one failed try: the ones an operator looks into.
# The WHERE is ix_webhook_deliveries_failing's predicate, word for word, and the order
# its key's: `limit` entries read backwards from the index.
_FAILING = text(
    """
    SELECT d.id, d.endpoint_name, ev.type, d.occurred_at, d.state, d.attempts,
           d.next_attempt_at, d.last_status, d.last_error
    FROM webhook_deliveries AS d JOIN webhook_events AS ev ON ev.id = d.event_id
    WHERE d.state = 'failed' OR (d.state = 'pending' AND d.attempts > 0)
    ORDER BY d.updated_at DESC, d.id DESC
    LIMIT :limit
    """
)


async def failing_deliveries(session: AsyncSession, limit: int) -> list[FailingDelivery]:
    """The latest `limit` deliveries that failed or are being retried."""
    rows = await session.execute(_FAILING, {"limit": limit})
    return [FailingDelivery(*row) for row in rows]
