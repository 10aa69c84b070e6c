"""Appointments through the API: reminders from the plan, moves, cancelling, visits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Notification, Patient, ReminderPlan
from tests.appointments.helpers import days, put_appointment, put_plan
from tests.clock import daytime_zone
from tests.factories import make_patient, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


def local_day(patient: Patient, offset: int = 0) -> str:
    """The patient's own today (plus `offset` days): reminders are days of their zone."""
    return (datetime.now(ZoneInfo(patient.time_zone)).date() + timedelta(days=offset)).isoformat()


def by_offset(reminders: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["remind_on"]: r for r in reminders}


async def daytime_patient(session: AsyncSession, **overrides: Any) -> Patient:
    return await make_patient(session, time_zone=daytime_zone(), **overrides)


class TestSchedule:
    async def test_the_default_plans_reminders_are_scheduled_from_the_date(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        plan = await put_plan(api, default=True)
        patient = await daytime_patient(db_session)
        appointment_id = unique_id("a")
        answer = await api.put(
            f"/v1/appointments/{appointment_id}",
            json={
                "patient_id": patient.id,
                "scheduled_date": local_day(patient, 1),
                "facility": {"id": "f-9", "name": "Sylhet Clinic"},
            },
        )
        assert answer.status_code == 201, answer.text
        data = answer.json()
        assert data["reminder_plan"] == plan and data["experiment"] is None
        assert data["status"] == "scheduled"
        assert data["facility"] == {"id": "f-9", "name": "Sylhet Clinic"}
        reminders = by_offset(data["reminders"])
        assert set(reminders) == {
            local_day(patient, 0),
            local_day(patient, 1),
            local_day(patient, 4),
        }
        day_before = reminders[local_day(patient, 0)]
        assert (day_before["purpose"], day_before["state"]) == ("appointment_reminder", "pending")
        assert reminders[local_day(patient, 1)]["state"] == "scheduled"
        missed = reminders[local_day(patient, 4)]
        assert (missed["purpose"], missed["template"]) == ("missed_visit", "missed_visit.basic")

        notification = (await api.get(f"/v1/notifications/{day_before['id']}")).json()
        assert notification["appointment_id"] == appointment_id
        assert "Sylhet Clinic" in notification["text"]
        assert local_day(patient, 1) in notification["text"]

    async def test_reminders_whose_moment_has_passed_are_not_scheduled(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await put_plan(api, default=True)
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, local_day(patient, -1))
        assert [r["remind_on"] for r in data["reminders"]] == [local_day(patient, 2)]

    async def test_a_fresh_installation_has_a_default_plan(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        shipped = (await api.get("/v1/reminder-plans/default")).json()
        assert shipped["default"] is True
        assert shipped["reminders"] == [
            {"offset_days": -1, "template": "appointment_reminder.basic"},
            {"offset_days": 2, "template": "missed_visit.basic"},
        ]
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, local_day(patient, 3))
        assert data["reminder_plan"] == "default" and data["reminders_note"] is None
        assert [(r["remind_on"], r["purpose"]) for r in data["reminders"]] == [
            (local_day(patient, 2), "appointment_reminder"),
            (local_day(patient, 5), "missed_visit"),
        ]

    async def test_without_a_default_plan_the_answer_says_why_there_are_no_reminders(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        # The API cannot unset the default, only move it; an installation that lost it.
        await db_session.execute(update(ReminderPlan).values(is_default=False))
        patient = await daytime_patient(db_session)
        appointment_id = unique_id("a")
        answer = await api.put(
            f"/v1/appointments/{appointment_id}",
            json={"patient_id": patient.id, "scheduled_date": days(3)},
        )
        assert answer.status_code == 201, answer.text
        data = answer.json()
        assert data["reminder_plan"] is None and data["reminders"] == []
        assert "no default plan" in data["reminders_note"]
        read = (await api.get(f"/v1/appointments/{appointment_id}")).json()
        assert read["reminders_note"] == data["reminders_note"]

    async def test_a_plan_whose_days_have_passed_says_so(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, local_day(patient, -5))
        assert data["reminder_plan"] == "default" and data["reminders"] == []
        assert "'default'" in data["reminders_note"] and "passed" in data["reminders_note"]

    async def test_without_a_facility_the_default_plan_refuses_it_naming_what_is_missing(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        # A newcomer's first appointment, with the least the schema asks for: the default
        # plan's texts name the facility, so it is a 422 that says so, and the contract
        # says it too.
        patient = await daytime_patient(db_session, facility_id=None, facility_name=None)
        appointment_id = unique_id("a")
        answer = await api.put(
            f"/v1/appointments/{appointment_id}",
            json={"patient_id": patient.id, "scheduled_date": local_day(patient, 3)},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"] == [
            {"field": "variables.facility_name", "message": "required"}
        ]
        assert (await api.get(f"/v1/appointments/{appointment_id}")).status_code == 404
        operation = (await api.get("/openapi.json")).json()["paths"][
            "/v1/appointments/{appointment_id}"
        ]["put"]
        assert "facility" in operation["responses"]["422"]["description"]

    async def test_facility_defaults_to_the_patients(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, days(3))
        assert data["facility"] == {"id": "f-12", "name": "Dhaka Medical"}


class TestResend:
    async def test_the_same_body_again_changes_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await put_plan(api, default=True)
        patient = await daytime_patient(db_session)
        first = await put_appointment(api, patient.id, days(5), expect=201)
        again = await put_appointment(
            api, patient.id, days(5), appointment_id=first["id"], expect=200
        )
        assert again["reminders"] == first["reminders"]

    async def test_a_new_date_clears_unsent_reminders_and_schedules_the_plan_again(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await put_plan(api, default=True)
        patient = await daytime_patient(db_session)
        first = await put_appointment(api, patient.id, local_day(patient, 1))
        sent = by_offset(first["reminders"])[local_day(patient, 0)]["id"]
        await db_session.execute(
            update(Notification).where(Notification.id == sent).values(state="sent")
        )
        moved = await put_appointment(
            api, patient.id, local_day(patient, 10), appointment_id=first["id"], expect=200
        )
        states = {(r["remind_on"], r["state"]) for r in moved["reminders"]}
        assert states == {
            (local_day(patient, 0), "sent"),  # already out: left alone
            (local_day(patient, 1), "cleared"),
            (local_day(patient, 4), "cleared"),
            (local_day(patient, 9), "scheduled"),
            (local_day(patient, 10), "scheduled"),
            (local_day(patient, 13), "scheduled"),
        }
        cleared = [r for r in moved["reminders"] if r["state"] == "cleared"]
        assert {r["failure_reason"] for r in cleared} == {"appointment rescheduled"}

    async def test_another_patients_appointment_id_is_409(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        first, second = await daytime_patient(db_session), await daytime_patient(db_session)
        data = await put_appointment(api, first.id, days(3))
        await put_appointment(api, second.id, days(3), appointment_id=data["id"], expect=409)


class TestCancel:
    async def test_cancel_clears_every_unsent_reminder_and_is_idempotent(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await put_plan(api, default=True)
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, local_day(patient, 1))
        for _ in range(2):
            answer = await api.post(f"/v1/appointments/{data['id']}/cancel")
            assert answer.status_code == 200, answer.text
            cancelled = answer.json()
            assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
            assert {r["state"] for r in cancelled["reminders"]} == {"cleared"}
            assert len(cancelled["reminders"]) == 3
        # A cancelled appointment is not moved back to life.
        await put_appointment(
            api, patient.id, local_day(patient, 2), appointment_id=data["id"], expect=409
        )
        same = await put_appointment(
            api, patient.id, local_day(patient, 1), appointment_id=data["id"], expect=200
        )
        assert same["status"] == "cancelled"

    async def test_unknown_appointment_is_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.post("/v1/appointments/nobody/cancel")).status_code == 404
        assert (await api.get("/v1/appointments/nobody")).status_code == 404
        visit = await api.post(
            "/v1/appointments/nobody/visit", json={"visited_at": datetime.now(UTC).isoformat()}
        )
        assert visit.status_code == 404


class TestVisit:
    async def test_a_visit_clears_unsent_reminders_missed_visit_included(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        await put_plan(api, default=True)
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, local_day(patient, 1))
        sent = by_offset(data["reminders"])[local_day(patient, 0)]["id"]
        await db_session.execute(
            update(Notification).where(Notification.id == sent).values(state="delivered")
        )
        visited_at = datetime.now(UTC) - timedelta(hours=1)
        answer = await api.post(
            f"/v1/appointments/{data['id']}/visit", json={"visited_at": visited_at.isoformat()}
        )
        assert answer.status_code == 200, answer.text
        visited = answer.json()
        assert visited["status"] == "visited"
        assert datetime.fromisoformat(visited["visited_at"]) == visited_at
        states = {r["purpose"] + "@" + r["remind_on"]: r["state"] for r in visited["reminders"]}
        assert states == {
            f"appointment_reminder@{local_day(patient, 0)}": "delivered",
            f"appointment_reminder@{local_day(patient, 1)}": "cleared",
            f"missed_visit@{local_day(patient, 4)}": "cleared",
        }
        # Again, later: nothing changes, the first visit stands.
        later = await api.post(
            f"/v1/appointments/{data['id']}/visit",
            json={"visited_at": datetime.now(UTC).isoformat()},
        )
        assert later.json()["visited_at"] == visited["visited_at"]
        assert later.json()["reminders"] == visited["reminders"]
        # A visited appointment is not moved.
        await put_appointment(
            api, patient.id, local_day(patient, 9), appointment_id=data["id"], expect=409
        )
        cancel = await api.post(f"/v1/appointments/{data['id']}/cancel")
        assert cancel.status_code == 409

    async def test_a_visit_in_the_future_is_422(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, days(1))
        future = datetime.now(UTC) + timedelta(days=1)
        answer = await api.post(
            f"/v1/appointments/{data['id']}/visit", json={"visited_at": future.isoformat()}
        )
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["field"] == "visited_at"

    async def test_a_naive_visit_time_is_422(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await daytime_patient(db_session)
        data = await put_appointment(api, patient.id, days(1))
        answer = await api.post(
            f"/v1/appointments/{data['id']}/visit", json={"visited_at": "2026-01-01T10:00:00"}
        )
        assert answer.status_code == 422


class TestBadInput:
    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"scheduled_date": "2026-13-01"}, "scheduled_date"),
            ({"scheduled_date": None}, "scheduled_date"),
            ({"patient_id": "nobody"}, "patient_id"),
            ({"facility": {"id": "f-1"}}, "facility.name"),
            ({"surprise": True}, "surprise"),
        ],
    )
    async def test_bad_bodies_are_422_naming_the_field(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        body: dict[str, Any],
        field: str,
    ) -> None:
        patient = await daytime_patient(db_session)
        values = {"patient_id": patient.id, "scheduled_date": days(3), **body}
        answer = await api.put(f"/v1/appointments/{unique_id('a')}", json=values)
        assert answer.status_code == 422, answer.text
        assert field in {d["field"] for d in answer.json()["error"]["details"]}

    async def test_a_bad_id_is_422(self, api: httpx.AsyncClient, db_session: AsyncSession) -> None:
        patient = await daytime_patient(db_session)
        answer = await api.put(
            f"/v1/appointments/{'x' * 65}",
            json={"patient_id": patient.id, "scheduled_date": days(3)},
        )
        assert answer.status_code == 422
