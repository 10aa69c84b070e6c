"""The sweeper settles what dead workers left in `sending`, and never resends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.delivery import dispatcher
from app.delivery import repository as delivery_repository
from app.delivery.repository import AttemptResult
from app.delivery.types import Outcome
from app.models import DeliveryAttempt, Notification
from app.states import NotificationState as S
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

SETTINGS = Settings(sending_stale_after_seconds=300)
NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(minutes=10)


async def left_sending(
    session: AsyncSession, attempt: str | None, *, claimed_at: datetime = LONG_AGO
) -> Notification:
    notification = await make_notification(
        session, await make_patient(session), state="sending", claimed_at=claimed_at
    )
    if attempt is not None:
        session.add(DeliveryAttempt(notification_id=notification.id, channel="sms", status=attempt))
    await session.flush()
    return notification


async def after_sweep(
    session: AsyncSession, notification: Notification
) -> tuple[str, str | None, list[str]]:
    await session.refresh(notification)
    statuses = await session.scalars(
        select(DeliveryAttempt.status).where(DeliveryAttempt.notification_id == notification.id)
    )
    return notification.state, notification.failure_reason, list(statuses)


class TestSweep:
    async def test_settles_each_kind_of_leftover_once(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        never_sent = await left_sending(db_session, None)
        only_failed = await left_sending(db_session, "failed")
        in_flight = await left_sending(db_session, "sending")
        confirmed = await left_sending(db_session, "delivered")
        still_working = await left_sending(db_session, "sending", claimed_at=NOW)
        await db_session.commit()

        assert await dispatcher.sweep(db_sessionmaker, SETTINGS, NOW) == (2, 2)

        assert (await after_sweep(db_session, never_sent))[0::2] == ("scheduled", [])
        assert (await after_sweep(db_session, only_failed))[0::2] == ("scheduled", ["failed"])
        state, reason, statuses = await after_sweep(db_session, in_flight)
        assert (state, statuses) == ("sent", ["unconfirmed"])
        assert reason is not None and reason.startswith("unconfirmed")
        assert (await after_sweep(db_session, confirmed))[0::2] == ("delivered", ["delivered"])
        assert (await after_sweep(db_session, still_working))[0::2] == ("sending", ["sending"])
        # Nothing left to settle: a second sweep (another worker's) changes nothing.
        assert await dispatcher.sweep(db_sessionmaker, SETTINGS, NOW) == (0, 0)

    async def test_a_worker_that_answers_after_the_sweep_that_its_send_failed_falls_back(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        """The sweeper settled a slow worker's claim `sent` (attempt `unconfirmed`); the
        worker's answer then says the send failed and the next channel is to be tried:
        the next channel is tried after all, by whichever worker claims it next."""
        notification = await left_sending(db_session, "sending")
        attempt_id = await db_session.scalar(
            select(DeliveryAttempt.id).where(DeliveryAttempt.notification_id == notification.id)
        )
        assert attempt_id is not None
        await db_session.commit()
        await dispatcher.sweep(db_sessionmaker, SETTINGS, NOW)
        assert (await after_sweep(db_session, notification))[0::2] == ("sent", ["unconfirmed"])

        failed = AttemptResult(attempt_id, "failed", None, None, "30003", "unreachable")
        await delivery_repository.record_attempts(db_session, [failed])
        next_channel = Outcome(S.SENDING, channel_chain=["sms", "whatsapp"], channel_index=1)
        await delivery_repository.settle(db_session, {notification.id: next_channel})
        await db_session.commit()
        assert (await after_sweep(db_session, notification))[0::2] == ("sending", ["failed"])

        # The slow worker no longer holds it (its claim is fenced); the sweeper frees it.
        later = datetime.now(UTC) + timedelta(seconds=SETTINGS.sending_stale_after_seconds + 5)
        assert await dispatcher.sweep(db_sessionmaker, SETTINGS, later) == (1, 0)
        await db_session.refresh(notification)
        assert (notification.state, notification.channel_index) == ("scheduled", 1)
