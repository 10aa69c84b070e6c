"""The consent rules on a real database: who a STOP stops, and on which channels."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.consent import service as consent_service
from app.consent.keywords import Keyword
from app.models import Patient
from tests.factories import make_notification, make_patient_at, unique_mobile

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def keyword(
    session: AsyncSession, settings: Settings, word: Keyword, patient: Patient, channel: str
) -> consent_service.KeywordOutcome:
    assert patient.mobile_e164 is not None
    return await consent_service.apply_keyword(
        session,
        settings,
        word,
        patient_id=patient.id,
        locale=patient.locale,
        phone=patient.mobile_e164,
        channel=channel,
    )


class TestStop:
    async def test_a_family_phone_stops_every_patient_messaged_there(
        self, db_session: AsyncSession
    ) -> None:
        phone = unique_mobile()
        mother, child = (
            await make_patient_at(db_session, phone),
            await make_patient_at(db_session, phone),
        )
        elsewhere = await make_patient_at(db_session)
        reminder = await make_notification(db_session, child)
        outcome = await keyword(db_session, Settings(app_env="test"), Keyword.STOP, mother, "sms")
        assert sorted(outcome.changed_patient_ids) == sorted([mother.id, child.id])
        for patient, expected in ((mother, ["*"]), (child, ["*"]), (elsewhere, [])):
            await db_session.refresh(patient)
            assert patient.opted_out_channels == expected
        await db_session.refresh(reminder)
        assert (reminder.state, reminder.failure_reason) == ("denied", "opted out")

    async def test_scope_channel_stops_that_channel_and_leaves_reminders_to_the_dispatcher(
        self, db_session: AsyncSession
    ) -> None:
        settings = Settings(app_env="test", opt_out_scope="channel")
        patient = await make_patient_at(db_session)
        reminder = await make_notification(db_session, patient)
        await keyword(db_session, settings, Keyword.STOP, patient, "whatsapp")
        await keyword(db_session, settings, Keyword.STOP, patient, "sms")
        await keyword(db_session, settings, Keyword.STOP, patient, "sms")
        await db_session.refresh(patient)
        await db_session.refresh(reminder)
        assert patient.opted_out_channels == ["sms", "whatsapp"]
        assert reminder.state == "scheduled"
        await keyword(db_session, settings, Keyword.START, patient, "sms")
        await db_session.refresh(patient)
        assert patient.opted_out_channels == ["whatsapp"]

    async def test_a_provider_opt_out_is_recorded_once(self, db_session: AsyncSession) -> None:
        patient = await make_patient_at(db_session)
        await consent_service.record_provider_opt_outs(db_session, {patient.id: "sms"})
        await consent_service.record_provider_opt_outs(db_session, {patient.id: "sms"})
        await db_session.refresh(patient)
        assert patient.opted_out_channels == ["sms"]
