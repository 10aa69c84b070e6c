from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidInput, NotFound
from app.models import ImoAuthorization
from app.patients import service as patient_service
from app.patients.schemas import PatientIn
from tests.factories import make_notification, make_patient, patient_body, unique_id


@pytest.mark.asyncio(loop_scope="session")
class TestGetPatient:
    async def test_found(self, db_session: AsyncSession) -> None:
        patient = await make_patient(db_session)
        assert await patient_service.get_patient(db_session, patient.id) is patient

    async def test_unknown(self, db_session: AsyncSession) -> None:
        with pytest.raises(NotFound):
            await patient_service.get_patient(db_session, unique_id())
        with pytest.raises(NotFound):
            await patient_service.get_patient_with_authorization(db_session, unique_id())

    async def test_with_authorization(self, db_session: AsyncSession) -> None:
        patient = await make_patient(db_session)
        assert await patient_service.get_patient_with_authorization(db_session, patient.id) == (
            patient,
            None,
        )
        db_session.add(ImoAuthorization(patient_id=patient.id, status="subscribed"))
        await db_session.flush()
        _, authorization = await patient_service.get_patient_with_authorization(
            db_session, patient.id
        )
        assert authorization is not None
        assert authorization.status == "subscribed"


class TestToRecord:
    def test_normalises(self) -> None:
        body = patient_body(
            phone_numbers=[
                {"number": "029660001", "type": "landline"},
                {"number": "01711000001", "type": "mobile"},
            ],
            facility=None,
        )
        del body["time_zone"]
        record = patient_service.to_record("p-1", PatientIn.model_validate(body))
        assert record.phone_numbers == [
            {"number": "+88029660001", "type": "landline"},
            {"number": "+8801711000001", "type": "mobile"},
        ]
        assert record.mobile_e164 == "+8801711000001"
        assert record.time_zone == "Asia/Dhaka"
        assert (record.facility_id, record.facility_name) == (None, None)

    def test_names_every_bad_number(self) -> None:
        body = patient_body(
            phone_numbers=[
                {"number": "1", "type": "mobile"},
                {"number": "01711000001", "type": "mobile"},
                {"number": "2", "type": "mobile"},
            ]
        )
        with pytest.raises(InvalidInput) as raised:
            patient_service.to_record("p-1", PatientIn.model_validate(body))
        assert [d["field"] for d in raised.value.details] == [
            "phone_numbers[0].number",
            "phone_numbers[2].number",
        ]


@pytest.mark.asyncio(loop_scope="session")
class TestNotificationsOf:
    async def test_a_full_last_page_has_no_next_cursor(self, db_session: AsyncSession) -> None:
        patient = await make_patient(db_session)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for minute in range(4):
            await make_notification(
                db_session, patient, created_at=start + timedelta(minutes=minute)
            )
        first = await patient_service.notifications_of(db_session, patient.id, limit=2, cursor=None)
        assert [n.created_at.minute for n in first.notifications] == [3, 2]
        assert first.next_cursor is not None
        second = await patient_service.notifications_of(
            db_session, patient.id, limit=2, cursor=first.next_cursor
        )
        assert [n.created_at.minute for n in second.notifications] == [1, 0]
        assert second.next_cursor is None

    async def test_unknown_patient(self, db_session: AsyncSession) -> None:
        with pytest.raises(NotFound):
            await patient_service.notifications_of(db_session, unique_id(), limit=5, cursor=None)
