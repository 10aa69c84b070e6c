"""SQL of the dashboard: the notification counts (never a scan of `notifications`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

KEY_COLUMNS = "hour, country, channel, purpose, state, reason, fell_back"

# DELETE ... RETURNING takes exactly the deltas committed before it began; deltas
# committed meanwhile stay for the next fold, and a concurrent fold (another worker)
# finds the rows already gone and skips them. So no delta is folded twice or lost.
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
    )
    SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM upserted)
    """  # noqa: S608 - constants only
)


async def fold_counts(session: AsyncSession) -> int:
    """Move the pending deltas into `notification_counts`; returns how many were moved."""
    moved, _ = (await session.execute(_FOLD)).one()
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
    `per_day`: the hours summed into UTC days in the database (long ranges)."""
    filters = "hour >= :since AND hour < :until"
    if country is not None:
        filters += " AND country = :country"
    if purpose is not None:
        filters += " AND purpose = :purpose"
    bucket = "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'" if per_day else "hour"
    rows = await session.execute(
        text(
            f"""
            SELECT {bucket}, {KEY_COLUMNS.removeprefix("hour, ")}, sum(count) AS count FROM (
                SELECT {KEY_COLUMNS}, count FROM notification_counts WHERE {filters}
                UNION ALL
                SELECT {KEY_COLUMNS}, count FROM notification_count_deltas WHERE {filters}
            ) AS both_parts
            GROUP BY 1, 2, 3, 4, 5, 6, 7
            HAVING sum(count) <> 0
            ORDER BY 1
            """  # noqa: S608 - constants and bound parameters only
        ),
        {"since": since, "until": until, "country": country, "purpose": purpose},
    )
    return [CountRow(*row) for row in rows]


async def recent_round_ids(session: AsyncSession, limit: int) -> list[int]:
    rows = await session.scalars(
        text("SELECT id FROM imo_invitation_rounds ORDER BY id DESC LIMIT :limit"),
        {"limit": limit},
    )
    return list(rows)
