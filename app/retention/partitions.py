"""Monthly range partitions: the tables, their partitions' names and bounds, and the job
that creates them ahead and drops the expired ones.

A partitioned log has one partition per calendar month (UTC) of its time column, named
`<table>_yYYYYmMM`, and a `<table>_default` partition that only catches a row no month
partition covers yet (the job fell behind): the job moves such rows into the month's
partition when it creates it, so nothing is lost and no insert ever fails for want of a
partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class MonthlyLog:
    table: str
    # The timestamptz column the table is partitioned by (RANGE, one month each).
    column: str


# Append-mostly logs partitioned by month. See docs/retention.md for the tables that are
# not, and why.
MONTHLY_LOGS = (MonthlyLog("delivery_reports", "received_at"),)

# Months created ahead of the current one: the job runs daily, so three months ahead
# survive a long outage of every worker.
MONTHS_AHEAD = 3

_PARTITION = re.compile(r"^(?P<table>[a-z_]+)_(?:y(?P<year>\d{4})m(?P<month>\d{2})|default)$")


def month_start(day: date, shift: int = 0) -> date:
    """The first day of `day`'s month, `shift` months later (earlier if negative)."""
    index = day.year * 12 + day.month - 1 + shift
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_y{month.year:04d}m{month.month:02d}"


def default_partition_name(table: str) -> str:
    return f"{table}_default"


def is_partition(name: str) -> bool:
    """A partition of a partitioned log (what Alembic's autogenerate must not compare:
    the models name the parent only)."""
    found = _PARTITION.match(name)
    return found is not None and any(log.table == found["table"] for log in MONTHLY_LOGS)


def _bound(day: date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


async def _lock(session: AsyncSession, table: str) -> None:
    # Every worker runs the job: one at a time per table, the others then find it done.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('partitions.' || :table))"),
        {"table": table},
    )


async def month_partitions(session: AsyncSession, log: MonthlyLog) -> list[date]:
    """The months that have a partition of `log`, oldest first."""
    rows = await session.execute(
        text(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            WHERE parent.relname = :table AND parent.relnamespace = 'public'::regnamespace
            """
        ),
        {"table": log.table},
    )
    months = []
    for (name,) in rows:
        found = _PARTITION.match(name)
        if found and found["year"]:
            months.append(date(int(found["year"]), int(found["month"]), 1))
    return sorted(months)


async def create_ahead(
    session: AsyncSession, log: MonthlyLog, today: date, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the partitions of this month and `months_ahead` more that are missing;
    rows the default partition caught for such a month move into it. Returns the names
    created. The caller commits."""
    await _lock(session, log.table)
    existing = set(await month_partitions(session, log))
    created = []
    for shift in range(months_ahead + 1):
        month = month_start(today, shift)
        if month not in existing:
            await _create_month(session, log, month)
            created.append(partition_name(log.table, month))
    return created


async def _create_month(session: AsyncSession, log: MonthlyLog, month: date) -> None:
    name = partition_name(log.table, month)
    default = default_partition_name(log.table)
    low, high = _bound(month), _bound(month_start(month, 1))
    in_range = f"{log.column} >= '{low}' AND {log.column} < '{high}'"
    # Names and bounds below are the module's constants and dates, never input.
    exists = f"SELECT EXISTS (SELECT FROM {default} WHERE {in_range})"  # noqa: S608
    caught = await session.scalar(text(exists))
    if not caught:
        await session.execute(
            text(
                f"CREATE TABLE {name} PARTITION OF {log.table}"
                f" FOR VALUES FROM ('{low}') TO ('{high}')"
            )
        )
        return
    # PostgreSQL refuses a partition whose rows the default partition holds: build it
    # beside the table, move those rows in, then attach it (one transaction: a reader
    # sees the rows in the default partition or in the month's, never in neither).
    await session.execute(
        text(f"CREATE TABLE {name} (LIKE {log.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    await session.execute(
        text(
            f"WITH moved AS (DELETE FROM {default} WHERE {in_range} RETURNING *)"  # noqa: S608
            f" INSERT INTO {name} SELECT * FROM moved"
        )
    )
    await session.execute(
        text(
            f"ALTER TABLE {log.table} ATTACH PARTITION {name}"
            f" FOR VALUES FROM ('{low}') TO ('{high}')"
        )
    )


async def drop_expired(
    session: AsyncSession, log: MonthlyLog, today: date, retention_months: int
) -> list[str]:
    """Detach and drop the partitions of months that ended more than `retention_months`
    months before this month began: every row is kept at least that long. 0 keeps all.
    Returns the names dropped. The caller commits."""
    if retention_months <= 0:
        return []
    await _lock(session, log.table)
    keep_from = month_start(today, -retention_months)
    dropped = []
    for month in await month_partitions(session, log):
        if month_start(month, 1) <= keep_from:
            name = partition_name(log.table, month)
            await session.execute(text(f"ALTER TABLE {log.table} DETACH PARTITION {name}"))
            await session.execute(text(f"DROP TABLE {name}"))
            dropped.append(name)
    return dropped


async def maintain(
    session: AsyncSession, retention_months: int, now: datetime | None = None
) -> dict[str, list[str]]:
    """The daily job: every partitioned log gets its months ahead and loses its expired
    months. Returns what was created and dropped. The caller commits."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    created: list[str] = []
    dropped: list[str] = []
    for log in MONTHLY_LOGS:
        created += await create_ahead(session, log, today)
        dropped += await drop_expired(session, log, today, retention_months)
    return {"created": created, "dropped": dropped}
