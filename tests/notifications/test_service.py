"""How long a notification stays worth sending: per purpose, and never past its visit."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import Appointment, Patient
from app.notifications import service as notification_service
from app.notifications.schemas import NotificationIn
from tests.factories import make_patient, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Noon in Dhaka (UTC+6), inside the messaging window.
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
SETTINGS = Settings(notification_expiry_days_by_purpose={"missed_visit": 7})


async def appointment_on(session: AsyncSession, patient: Patient, day: date) -> Appointment:
    appointment = Appointment(
        id=unique_id("a"), patient_id=patient.id, scheduled_date=day, status="scheduled"
    )
    session.add(appointment)
    await session.flush()
    return appointment


async def expiry(
    session: AsyncSession, patient: Patient, purpose: str, **extra: object
) -> timedelta:
    request = NotificationIn(
        patient_id=patient.id,
        purpose=purpose,
        template="appointment_reminder.basic",
        variables={"appointment_date": "2026-11-30"},
        **extra,  # type: ignore[arg-type]
    )
    notification, _ = await notification_service.schedule(session, request, SETTINGS, now=NOW)
    return notification.expires_at - notification.due_at


class TestExpiry:
    async def test_four_days_by_default_or_the_purposes_own(self, db_session: AsyncSession) -> None:
        patient = await make_patient(db_session)
        assert await expiry(db_session, patient, "appointment_reminder") == timedelta(days=4)
        assert await expiry(db_session, patient, "missed_visit") == timedelta(days=7)

    async def test_a_reminder_before_its_appointment_expires_when_that_day_ends(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        tomorrow = await appointment_on(db_session, patient, date(2026, 11, 24))
        # Due at noon on the 23rd in Dhaka; the 24th ends at midnight Dhaka time.
        assert await expiry(
            db_session, patient, "appointment_reminder", appointment_id=tomorrow.id
        ) == timedelta(hours=36)

    async def test_a_reminder_after_its_appointment_keeps_its_purposes_days(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        past = await appointment_on(db_session, patient, date(2026, 11, 20))
        assert await expiry(
            db_session, patient, "missed_visit", appointment_id=past.id
        ) == timedelta(days=7)

    async def test_another_patients_appointment_does_not_count(
        self, db_session: AsyncSession
    ) -> None:
        patient, other = await make_patient(db_session), await make_patient(db_session)
        theirs = await appointment_on(db_session, other, date(2026, 11, 24))
        assert await expiry(
            db_session, patient, "appointment_reminder", appointment_id=theirs.id
        ) == timedelta(days=4)
