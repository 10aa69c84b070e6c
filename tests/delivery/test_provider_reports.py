"""Provider reports applied in sets: idempotent, monotonic, and not fooled by strays."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import provider_reports
from app.delivery.provider_reports import UnknownAttempt
from app.delivery.types import Report
from app.models import DeliveryAttempt, DeliveryReport, Notification
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
        results = await provider_reports.apply_reports(
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
        assert await provider_reports.apply_reports(db_session, [delivered]) == [True]
        late = [delivered, Report(attempt.id, AttemptStatus.SENT, provider_message_id="SM1")]
        assert await provider_reports.apply_reports(db_session, late) == [False, False]
        await db_session.refresh(notification)
        assert notification.state == "delivered"


async def attempt_of(
    session: AsyncSession, notification_state: str, status: str
) -> tuple[Notification, DeliveryAttempt]:
    notification = await make_notification(
        session,
        await make_patient(session),
        state=notification_state,
        channel_chain=["sms"],
        channel_index=0,
    )
    attempt = DeliveryAttempt(
        notification_id=notification.id, channel="sms", status=status, provider_message_id="SM1"
    )
    session.add(attempt)
    await session.flush()
    return notification, attempt


async def reload(session: AsyncSession, *rows: object) -> None:
    for row in rows:
        await session.refresh(row)


class TestLateReports:
    """Regression (issue 11, item 7): a report that does not raise the status changes
    nothing but the raw report log."""

    async def test_failed_after_delivered_sets_no_error_code(
        self, db_session: AsyncSession
    ) -> None:
        notification, attempt = await attempt_of(db_session, "delivered", "delivered")
        late = Report(attempt.id, AttemptStatus.FAILED, "SM1", "undelivered", "30008", "Unknown")
        assert await provider_reports.apply_reports(db_session, [late]) == [False]
        await reload(db_session, notification, attempt)
        assert (attempt.status, attempt.error_code, attempt.error_message) == (
            "delivered",
            None,
            None,
        )
        assert (attempt.failed_at, attempt.provider_status) == (None, None)
        assert notification.state == "delivered"
        logged = await db_session.scalar(
            select(DeliveryReport).where(DeliveryReport.attempt_id == attempt.id)
        )
        assert logged is not None
        assert (logged.status, logged.error_code, logged.applied) == ("failed", "30008", False)

    async def test_delivered_after_failed_sets_no_delivered_at(
        self, db_session: AsyncSession
    ) -> None:
        notification, attempt = await attempt_of(db_session, "failed", "failed")
        late = Report(attempt.id, AttemptStatus.DELIVERED, "SM1", "delivered")
        assert await provider_reports.apply_reports(db_session, [late]) == [False]
        await reload(db_session, notification, attempt)
        assert (attempt.status, attempt.delivered_at, attempt.sent_at) == ("failed", None, None)
        assert (notification.state, notification.delivered_at) == ("failed", None)

    @pytest.mark.parametrize("notification_state", ["failed", "scheduled", "sent"])
    async def test_read_after_failed_reads_the_attempt_and_its_notification(
        self, db_session: AsyncSession, notification_state: str
    ) -> None:
        """A read receipt proves the patient has the message: the failure was wrong. The
        notification follows, from `failed` or from a fallback not yet sent (which then
        is not sent) or sent on the next channel."""
        notification, attempt = await attempt_of(db_session, notification_state, "failed")
        read = Report(attempt.id, AttemptStatus.READ, "SM1", "read")
        assert await provider_reports.apply_reports(db_session, [read]) == [True]
        await reload(db_session, notification, attempt)
        assert (notification.state, attempt.status) == ("read", "read")
        assert notification.read_at is not None and attempt.read_at is not None
