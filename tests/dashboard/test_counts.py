"""The dashboard's hourly counts agree exactly with a recount of `notifications`: after
inserts, state moves, fallbacks, failures and deletes, folded or not."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.dashboard import repository as dashboard_repository
from app.db.session import create_engine_and_sessionmaker
from app.models import Notification
from tests.dashboard.recount import Key, recount, rolled_up
from tests.e2e.helpers import accept_imo_invitation, phone, put_patient, schedule
from tests.factories import make_notification, make_patient
from tests.stack import Stack
from tests.waiting import wait_until

FINAL = ("delivered", "read", "failed", "denied", "cleared", "expired")


@pytest.mark.asyncio(loop_scope="session")
async def test_counts_follow_every_kind_of_write(db_session: AsyncSession) -> None:
    before = await rolled_up(db_session)
    bangladesh = await make_patient(db_session)
    india = await make_patient(db_session, country="IN", time_zone="Asia/Kolkata")
    rows = [await make_notification(db_session, bangladesh) for _ in range(6)]
    rows += [await make_notification(db_session, india, purpose="missed_visit") for _ in range(3)]
    ids = [row.id for row in rows]
    await db_session.execute(
        update(Notification)
        .where(Notification.id.in_(ids))
        .values(state="sending", channel_chain=["imo", "sms"], channel_index=0)
    )
    assert await rolled_up(db_session) - before == await recount(db_session) - before
    await dashboard_repository.fold_counts(db_session)
    # A fallback, a failure with its reason, a denial, deliveries and reads.
    await db_session.execute(
        update(Notification).where(Notification.id == ids[0]).values(channel_index=1, state="sent")
    )
    await db_session.execute(
        update(Notification)
        .where(Notification.id.in_(ids[1:3]))
        .values(state="failed", failure_reason="sms: 30006 landline or unreachable carrier")
    )
    await db_session.execute(
        update(Notification)
        .where(Notification.id == ids[3])
        .values(state="denied", failure_reason="no consent")
    )
    await db_session.execute(
        update(Notification).where(Notification.id.in_(ids[4:7])).values(state="delivered")
    )
    await db_session.execute(
        update(Notification).where(Notification.id == ids[7]).values(state="read")
    )
    # A write that moves nothing between groups adds no delta.
    pending = (
        await db_session.execute(text("SELECT count(*) FROM notification_count_deltas"))
    ).scalar()
    await db_session.execute(
        update(Notification).where(Notification.id.in_(ids)).values(retry_count=2)
    )
    assert (
        await db_session.execute(text("SELECT count(*) FROM notification_count_deltas"))
    ).scalar() == pending
    assert await rolled_up(db_session) - before == await recount(db_session) - before
    await dashboard_repository.fold_counts(db_session)
    await db_session.execute(delete(Notification).where(Notification.id == ids[8]))
    after = await rolled_up(db_session)
    assert after - before == await recount(db_session) - before
    assert (
        await db_session.execute(text("SELECT count(*) FROM notification_count_deltas"))
    ).scalar() == 1
    assert {key[1] for key in after - before} == {"BD", "IN"}


@pytest.mark.asyncio(loop_scope="session")
async def test_email_and_gateway_channels_count_like_the_others(db_session: AsyncSession) -> None:
    """Each channel of a chain is a group of its own: a gateway message delivered, one
    taken back from a silent phone and sent by SMS, an email sent, one refused (550) and
    sent by SMS; folded in between."""
    before = await rolled_up(db_session)
    patient = await make_patient(db_session)
    gateway = [await make_notification(db_session, patient) for _ in range(3)]
    email = [await make_notification(db_session, patient, purpose="missed_visit") for _ in "ab"]
    chains = {row.id: ["gateway", "sms"] for row in gateway}
    chains |= {row.id: ["email", "sms"] for row in email}
    for notification_id, chain in chains.items():
        await db_session.execute(
            update(Notification)
            .where(Notification.id == notification_id)
            .values(state="sending", channel_chain=chain, channel_index=0)
        )
    await dashboard_repository.fold_counts(db_session)
    moves = [
        (gateway[0].id, {"state": "delivered"}),
        (gateway[1].id, {"state": "sent"}),
        (gateway[1].id, {"state": "sent", "channel_index": 1}),  # taken back: SMS now
        (gateway[2].id, {"state": "failed", "failure_reason": "gateway: FAILED no credit"}),
        (email[0].id, {"state": "sent"}),
        (email[1].id, {"state": "sent", "channel_index": 1}),  # 550: SMS now
        (email[1].id, {"state": "delivered"}),
    ]
    for notification_id, values in moves:
        await db_session.execute(
            update(Notification).where(Notification.id == notification_id).values(**values)
        )
        assert await rolled_up(db_session) - before == await recount(db_session) - before
    await dashboard_repository.fold_counts(db_session)
    mine = await recount(db_session) - before
    assert await rolled_up(db_session) - before == mine
    channels = {(key[2], key[4], key[6]): n for key, n in mine.items()}
    assert channels == {
        ("gateway", "delivered", False): 1,
        ("gateway", "failed", False): 1,
        ("sms", "sent", True): 1,
        ("email", "sent", False): 1,
        ("sms", "delivered", True): 1,
    }


def per_day(counted: Counter[Key], since: datetime, until: datetime) -> Counter[Key]:
    days: Counter[Key] = Counter()
    for key, n in counted.items():
        if since <= key[0] < until and n:
            days[(key[0].replace(hour=0), *key[1:])] += n
    return +days


async def rolled_up_daily(session: AsyncSession, since: datetime, until: datetime) -> Counter[Key]:
    counted: Counter[Key] = Counter()
    for row in await dashboard_repository.counts(session, since, until, per_day=True):
        key = (row.hour, row.country, row.channel, row.purpose, row.state, row.reason)
        counted[(*key, row.fell_back)] += row.count
    return counted


DAILY = """SELECT day, country, channel, purpose, state, reason, fell_back, count
             FROM notification_counts_daily WHERE count <> 0"""
HOURS_PER_DAY = """SELECT date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                          country, channel, purpose, state, reason, fell_back, sum(count)
                   FROM notification_counts GROUP BY 1, 2, 3, 4, 5, 6, 7
                   HAVING sum(count) <> 0"""


async def daily_table_is_the_sum_of_hours(session: AsyncSession) -> bool:
    differing = await session.execute(
        text(
            f"SELECT count(*) FROM (({DAILY} EXCEPT {HOURS_PER_DAY})"
            f" UNION ALL ({HOURS_PER_DAY} EXCEPT {DAILY})) AS differing"
        )
    )
    return differing.scalar() == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_daily_counts_agree_with_a_recount_per_day(db_session: AsyncSession) -> None:
    """Long ranges read whole days from the daily counts and the partial days at either
    end from the hourly ones; both folded from the same deltas."""
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    patient = await make_patient(db_session)
    created = [today - timedelta(days=d, hours=h) for d in (0, 1, 2, 3) for h in (-1, 3, 20)]
    created = [moment for moment in created if moment < now]
    rows = [await make_notification(db_session, patient, created_at=c) for c in created]
    await db_session.execute(
        update(Notification)
        .where(Notification.id.in_([row.id for row in rows[::2]]))
        .values(state="failed", failure_reason="sms: 30003", channel_chain=["sms"])
    )
    # Ranges with partial days at the start, at the end, both, and exact midnights.
    ranges = [
        (today - timedelta(days=3, hours=5), now + timedelta(hours=1)),
        (today - timedelta(days=2), today),
        (today - timedelta(days=2, hours=2), today - timedelta(hours=6)),
        (today - timedelta(hours=2), today + timedelta(hours=3)),
        (today + timedelta(hours=1), today + timedelta(hours=2)),
    ]
    for fold in (False, True):
        if fold:
            await dashboard_repository.fold_counts(db_session)
            assert await daily_table_is_the_sum_of_hours(db_session)
        counted = await recount(db_session)
        for since, until in ranges:
            assert await rolled_up_daily(db_session, since, until) == per_day(
                counted, since, until
            ), (fold, since, until)
    # A later move of an old day's notification reaches that day's row at the next fold.
    await db_session.execute(
        update(Notification).where(Notification.id == rows[-1].id).values(state="delivered")
    )
    await dashboard_repository.fold_counts(db_session)
    assert await daily_table_is_the_sum_of_hours(db_session)
    since, until = ranges[0]
    assert await rolled_up_daily(db_session, since, until) == per_day(
        await recount(db_session), since, until
    )


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_counts_agree_with_a_recount_after_sends_callbacks_and_fallbacks(
    stack: Stack, stack_api: httpx.AsyncClient
) -> None:
    engine, sessionmaker = create_engine_and_sessionmaker(stack.database_url, pool_size=2)
    try:
        await _send_a_mix(stack, stack_api, sessionmaker)
    finally:
        await engine.dispose()


async def _send_a_mix(
    stack: Stack, api: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ids = []
    # 3: Imo, read; 0: no Imo account, falls back to SMS; 4: SMS delivered; 7: SMS failed
    # (30006); 6: SMS undelivered; 8: SMS refused (21211).
    for digit in (3, 3, 0, 0, 4, 4, 7, 6, 8):
        patient = await put_patient(api, phone(digit))
        if digit in (0, 3):
            await accept_imo_invitation(stack, patient["id"])
        ids.append((await schedule(api, patient["id"]))["id"])
    # Folding while messages move, as a worker's cron does at any moment.
    async with sessionmaker() as session:
        await dashboard_repository.fold_counts(session)
        await session.commit()

    async def all_final() -> bool:
        states = [(await api.get(f"/v1/notifications/{i}")).json()["state"] for i in ids]
        return all(state in FINAL for state in states)

    await wait_until(all_final, timeout=30, interval=0.2)
    await asyncio.sleep(0.5)  # late read receipts
    async with sessionmaker() as session:
        assert await rolled_up(session) == await recount(session)
        await dashboard_repository.fold_counts(session)
        await session.commit()
    async with sessionmaker() as session:
        counted = await recount(session)
        assert await rolled_up(session) == counted
        left = await session.execute(text("SELECT count(*) FROM notification_count_deltas"))
        assert left.scalar() == 0
    fell_back = sum(n for key, n in counted.items() if key[6])
    assert fell_back >= 2
    assert any(key[4] == "failed" and key[5] for key in counted), counted
