"""An experiment end to end: appointments arrive over the API, the plan's reminders go
out through the fake Imo and Twilio on the plan's schedule, visits clear the rest, and
the results endpoint counts it all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from app.experiments.assignment import assign
from tests.clock import daytime_zone
from tests.e2e.helpers import accept_imo_invitation, notification_in, phone
from tests.factories import unique_id
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

PLAN = [
    {"offset_days": -1, "template": "appointment_reminder.basic"},  # passed: not scheduled
    {"offset_days": 0, "template": "appointment_reminder.basic"},  # due now
    {"offset_days": 2, "template": "missed_visit.basic"},  # cleared by a visit
]


async def put_patient_in(
    api: httpx.AsyncClient, experiment: dict[str, Any], group: int, number: str, zone: str
) -> str:
    """A patient whose hash puts them in group `group`."""
    weights = [g["weight"] for g in experiment["groups"]]
    while True:
        patient_id = unique_id()
        if assign(uuid.UUID(experiment["id"]), patient_id, weights) == group:
            break
    body = {
        "full_name": "Rahim Uddin",
        "phone_numbers": [{"number": number, "type": "mobile"}],
        "country": "BD",
        "locale": "bn-BD",
        "time_zone": zone,
        "facility": {"id": "f-12", "name": "Dhaka Medical"},
        "reminder_consent": "granted",
    }
    answer = await api.put(f"/v1/patients/{patient_id}", json=body)
    assert answer.status_code == 201, answer.text
    return patient_id


class TestExperimentEndToEnd:
    async def test_reminders_go_out_visits_clear_them_and_results_count_it(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        zone = daytime_zone()
        today = datetime.now(ZoneInfo(zone)).date()
        utc_today = datetime.now(UTC).date()
        plan = unique_id("cascade")
        answer = await stack_api.put(f"/v1/reminder-plans/{plan}", json={"reminders": PLAN})
        assert answer.status_code == 201, answer.text
        answer = await stack_api.post(
            "/v1/experiments",
            json={
                "name": unique_id("e2e"),
                "start_date": (utc_today - timedelta(days=2)).isoformat(),
                "end_date": (utc_today + timedelta(days=30)).isoformat(),
                "max_patients_per_day": 1000,
                "eligibility": {"countries": ["BD"], "facility_ids": ["f-12"]},
                "return_window_days": 7,
                "groups": [
                    {"name": "control", "weight": 1, "reminder_plan": None},
                    {"name": "cascade", "weight": 1, "reminder_plan": plan},
                ],
            },
        )
        assert answer.status_code == 201, answer.text
        experiment = answer.json()

        control_numbers = [phone(4), phone(4)]
        controls = [
            await put_patient_in(stack_api, experiment, 0, n, zone) for n in control_numbers
        ]
        by_sms = await put_patient_in(stack_api, experiment, 1, phone(4), zone)
        by_imo = await put_patient_in(stack_api, experiment, 1, phone(3), zone)
        unreachable = await put_patient_in(stack_api, experiment, 1, phone(7), zone)
        await accept_imo_invitation(stack, by_imo)

        appointments: dict[str, dict[str, Any]] = {}
        for patient_id in [*controls, by_sms, by_imo, unreachable]:
            answer = await stack_api.put(
                f"/v1/appointments/{unique_id('a')}",
                json={"patient_id": patient_id, "scheduled_date": today.isoformat()},
            )
            assert answer.status_code == 201, answer.text
            appointments[patient_id] = answer.json()
        for patient_id in controls:
            assert appointments[patient_id]["experiment"]["group"] == "control"
            assert appointments[patient_id]["reminders"] == []
        for patient_id in (by_sms, by_imo, unreachable):
            reminders = appointments[patient_id]["reminders"]
            assert [(r["purpose"], r["remind_on"]) for r in reminders] == [
                ("appointment_reminder", today.isoformat()),
                ("missed_visit", (today + timedelta(days=2)).isoformat()),
            ]

        def due_now(patient_id: str) -> str:
            return str(appointments[patient_id]["reminders"][0]["id"])

        delivered = await notification_in(stack_api, due_now(by_sms), "delivered")
        assert [(a["channel"], a["status"]) for a in delivered["attempts"]] == [
            ("sms", "delivered")
        ]
        read = await notification_in(stack_api, due_now(by_imo), "read")
        assert [(a["channel"], a["status"]) for a in read["attempts"]] == [("imo", "read")]
        await notification_in(stack_api, due_now(unreachable), "failed")

        # The control group got nothing, on any channel.
        twilio, imo = await stack.twilio_stats(), await stack.imo_stats()
        for number in control_numbers:
            assert twilio["to"].get(number, 0) == 0
            assert imo["phones"]["send_notification"].get(number, 0) == 0

        # A control patient and the SMS patient come back; the visit clears the rest.
        for patient_id in (controls[0], by_sms):
            answer = await stack_api.post(
                f"/v1/appointments/{appointments[patient_id]['id']}/visit",
                json={"visited_at": datetime.now(UTC).isoformat()},
            )
            assert answer.status_code == 200, answer.text
            assert [r["state"] for r in answer.json()["reminders"]] == (
                ["delivered", "cleared"] if patient_id == by_sms else []
            )

        answer = await stack_api.get(f"/v1/experiments/{experiment['id']}/results")
        assert answer.status_code == 200, answer.text
        control, cascade = answer.json()["groups"]
        assert (control["enrolled"], control["returned"], control["reminders"]) == (2, 1, 0)
        assert control["return_rate"] == 0.5
        assert (cascade["enrolled"], cascade["returned"]) == (3, 1)
        assert cascade["evicted_by_reason"] == {"undeliverable": 1}
        assert cascade["reminders_by_state"] == {
            "delivered": 1,
            "read": 1,
            "failed": 1,
            "cleared": 1,
            "scheduled": 2,
        }
        assert (cascade["patients_reached"], cascade["reminders_reached"]) == (2, 2)
        channels = cascade["attempts_by_channel"]
        assert channels["imo"] == {"attempts": 1, "reached": 1, "by_status": {"read": 1}}
        assert channels["sms"]["reached"] == 1
        assert channels["sms"]["by_status"] == {"delivered": 1, "failed": 1}
        versus = cascade["versus_control"]
        assert versus["difference"] == pytest.approx(1 / 3 - 1 / 2)
        assert versus["ci95"][0] < versus["difference"] < versus["ci95"][1]
