"""The dashboard's notification counts against a recount of the rows, computed here in
Python (not with the triggers' SQL): for the counts tests and for the end-to-end tests
of each channel (email, gateway) that send through the real pipeline."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard import repository as dashboard_repository
from app.db.session import create_engine_and_sessionmaker

Key = tuple[datetime, str, str, str, str, str, bool]
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


async def recount(session: AsyncSession) -> Counter[Key]:
    """Computed here, in Python, from the rows: not the triggers' SQL."""
    rows = await session.execute(
        text(
            "SELECT created_at, country, channel_chain, channel_index, purpose, state,"
            " failure_reason FROM notifications"
        )
    )
    counted: Counter[Key] = Counter()
    for created, country, chain, index, purpose, state, reason in rows:
        hour = created.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        channel = chain[index] if chain and index < len(chain) else ""
        failure = (reason or "")[:200] if state in ("failed", "denied") else ""
        counted[(hour, country or "", channel, purpose, state, failure, index > 0)] += 1
    return counted


async def rolled_up(session: AsyncSession) -> Counter[Key]:
    counted: Counter[Key] = Counter()
    for row in await dashboard_repository.counts(session, *EVER):
        key = (row.hour, row.country, row.channel, row.purpose, row.state, row.reason)
        counted[(*key, row.fell_back)] += row.count
    return counted


async def counts_agree_with_a_recount(database_url: str) -> Counter[Key]:
    """Asserts that the counts (unfolded deltas included), and then the folded counts,
    are exactly a recount of `notifications`, each read in one snapshot (REPEATABLE READ:
    a worker may still be moving messages); -> the last recount."""
    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)

    async def compared() -> Counter[Key]:
        async with sessionmaker() as session:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            counted = await recount(session)
            assert await rolled_up(session) == counted
            return counted

    try:
        await compared()
        async with sessionmaker() as session:  # as the workers' cron does, at any moment
            await dashboard_repository.fold_counts(session)
            await session.commit()
        return await compared()
    finally:
        await engine.dispose()
