"""Provider reports applied in sets: idempotent, monotonic, and not fooled by strays."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import status as delivery_status
from app.delivery.status import UnknownAttempt
from app.delivery.types import Report
from app.models import DeliveryAttempt, Notification
from app.states import AttemptStatus
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def sent_sms(session: AsyncSession) -> tuple[Notification, DeliveryAttempt]:
    notification = await make_notification(session, await make_patient(session), state="sent")
    attempt = DeliveryAttempt(
        notification_id=notification.id, channel="sms", status="sent", provider_message_id="SM1"
    )
    session.add(attempt)
    await session.flush()
    return notification, attempt


class TestApplyReports:
    async def test_a_stray_report_in_the_same_batch_does_not_hide_the_real_one(
        self, db_session: AsyncSession
    ) -> None:
        notification, attempt = await sent_sms(db_session)
        results = await delivery_status.apply_reports(
            db_session,
            [
                Report(attempt.id, AttemptStatus.FAILED, provider_message_id="SM-other"),
                Report(attempt.id, AttemptStatus.DELIVERED, provider_message_id="SM1"),
                Report(attempt.id, AttemptStatus.SENT, provider_message_id="SM1"),
            ],
        )
        assert isinstance(results[0], UnknownAttempt)
        assert results[1:] == [True, False]
        await db_session.refresh(attempt)
        await db_session.refresh(notification)
        assert (attempt.status, notification.state) == ("delivered", "delivered")

    async def test_repeats_and_late_reports_change_nothing(self, db_session: AsyncSession) -> None:
        notification, attempt = await sent_sms(db_session)
        delivered = Report(attempt.id, AttemptStatus.DELIVERED, provider_message_id="SM1")
        assert await delivery_status.apply_reports(db_session, [delivered]) == [True]
        late = [delivered, Report(attempt.id, AttemptStatus.SENT, provider_message_id="SM1")]
        assert await delivery_status.apply_reports(db_session, late) == [False, False]
        await db_session.refresh(notification)
        assert notification.state == "delivered"
