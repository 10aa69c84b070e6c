"""S1: every bad input is a 4xx naming the problem, never a 500 (issue 11).

Each case here answered 500 before `app/validation.py`: null bytes and lone surrogates
that PostgreSQL cannot store, numbers JSONB or orjson cannot hold, dates whose
arithmetic leaves the calendar, and control or bidi characters that would reach a
message text.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Patient
from tests.appointments.helpers import CASCADE, put_appointment, put_plan
from tests.factories import make_patient, patient_body, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


def assert_clear_4xx(answer: httpx.Response, field: str | None = None) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    error = answer.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert field in answer.text, answer.text


def notification(patient_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "patient_id": patient_id,
        "purpose": "appointment_reminder",
        "template": "appointment_reminder.basic",
        "variables": {"appointment_date": "2026-12-01"},
        **overrides,
    }


class TestNullBytes:
    @pytest.mark.parametrize(
        "overrides",
        [
            {"full_name": "Rahim\x00Uddin"},
            {"facility": {"id": "f\x0012", "name": "Dhaka Medical"}},
            {"facility": {"id": "f-12", "name": "Dhaka\x00Medical"}},
            {"full_name": "Rahim \ud800 Uddin"},
        ],
        ids=["name", "facility-id", "facility-name", "lone-surrogate"],
    )
    async def test_in_a_patient(self, api: httpx.AsyncClient, overrides: dict[str, Any]) -> None:
        # json.dumps escapes a lone surrogate as JSON allows; httpx would refuse to send it.
        answer = await api.put(
            f"/v1/patients/{unique_id()}",
            content=json.dumps(patient_body(**overrides)),
            headers={"Content-Type": "application/json"},
        )
        assert_clear_4xx(answer)

    async def test_in_a_template_body(self, api: httpx.AsyncClient) -> None:
        answer = await api.put(
            "/v1/templates/hardening.nul/en", json={"title": "T", "body": "Dear\x00 {patient_name}"}
        )
        assert_clear_4xx(answer, "body")

    async def test_in_a_variable(self, api: httpx.AsyncClient, db_session: AsyncSession) -> None:
        patient = await make_patient(db_session)
        answer = await api.post(
            "/v1/notifications",
            json=notification(patient.id, variables={"appointment_date": "2026\x00-12-01"}),
        )
        assert_clear_4xx(answer, "variables")

    async def test_in_an_experiment_filter(self, api: httpx.AsyncClient) -> None:
        plan = await put_plan(api, CASCADE)
        answer = await api.post(
            "/v1/experiments",
            json={
                "name": unique_id("exp"),
                "start_date": "2027-01-01",
                "end_date": "2027-02-01",
                "eligibility": {"facility_ids": ["f\x001"]},
                "groups": [
                    {"name": "control", "weight": 1, "reminder_plan": None},
                    {"name": "plan", "weight": 1, "reminder_plan": plan},
                ],
            },
        )
        assert_clear_4xx(answer, "facility_ids")

    async def test_one_bad_patient_in_a_batch_fails_alone(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        good, bad = unique_id(), unique_id()
        answer = await api.post(
            "/v1/patients/batch",
            json={
                "patients": [
                    {"id": good, **patient_body()},
                    {"id": bad, **patient_body(full_name="Rahim\x00Uddin")},
                ]
            },
        )
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["status"] for r in results] == ["created", "error"]
        assert "full_name" in str(results[1]["error"])
        assert await db_session.get(Patient, good) is not None
        assert await db_session.get(Patient, bad) is None

    async def test_a_lone_surrogate_id_in_a_batch_fails_alone(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        # Found by the fuzz test: the item's outcome quoted the id back, and no JSON
        # answer can encode a lone surrogate.
        good = unique_id()
        body = {"patients": [{"id": good, **patient_body()}, {"id": "\ud800", **patient_body()}]}
        answer = await api.post(
            "/v1/patients/batch",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [(r["status"], r["id"]) for r in results] == [("created", good), ("error", None)]
        assert await db_session.get(Patient, good) is not None


class TestNamesThatWouldReachAMessage:
    @pytest.mark.parametrize(
        "name",
        ["Rahim \u202eniddU", "Rahim\u2066Uddin", "Rahim\x1b[2JUddin", "Rahim\nUddin", "Rahim\x85"],
        ids=["rlo", "isolate", "escape", "newline", "c1"],
    )
    async def test_control_and_bidi_characters_are_refused(
        self, api: httpx.AsyncClient, name: str
    ) -> None:
        answer = await api.put(f"/v1/patients/{unique_id()}", json=patient_body(full_name=name))
        assert_clear_4xx(answer, "full_name")

    async def test_a_bidi_override_in_a_variable_is_refused(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.post(
            "/v1/notifications",
            json=notification(patient.id, variables={"appointment_date": "\u202e10-21-6202"}),
        )
        assert_clear_4xx(answer, "variables")

    async def test_bengali_and_newlines_in_a_template_stay_welcome(
        self, api: httpx.AsyncClient
    ) -> None:
        answer = await api.put(
            "/v1/templates/hardening.bn/bn-BD",
            json={"title": "অনুস্মারক", "body": "প্রিয় {patient_name},\nআপনার ভিজিট।"},
        )
        assert answer.status_code in (200, 201), answer.text


class TestNumbers:
    @pytest.mark.parametrize(
        "raw",
        ["NaN", "Infinity", "-Infinity", "1e400", str(2**64), str(-(2**63) - 1)],
    )
    async def test_in_variables(
        self, api: httpx.AsyncClient, db_session: AsyncSession, raw: str
    ) -> None:
        patient = await make_patient(db_session)
        # Written out: json.dumps cannot produce 1e400 or a non-finite number as it is.
        content = json.dumps(notification(patient.id)).replace('"2026-12-01"', raw)
        answer = await api.post(
            "/v1/notifications", content=content, headers={"Content-Type": "application/json"}
        )
        assert_clear_4xx(answer, "variables")


class TestDatesAtTheEdges:
    @pytest.mark.parametrize(
        "moment",
        [{"send_at": "9999-12-31T23:59:59+00:00"}, {"remind_on": "9999-12-31"}],
        ids=["send_at", "remind_on"],
    )
    async def test_a_notification_at_the_end_of_time(
        self, api: httpx.AsyncClient, db_session: AsyncSession, moment: dict[str, str]
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.post("/v1/notifications", json=notification(patient.id, **moment))
        assert_clear_4xx(answer, next(iter(moment)))

    @pytest.mark.parametrize("scheduled_date", ["0001-01-01", "9999-06-01"])
    async def test_an_appointment_whose_plan_leaves_the_calendar(
        self, api: httpx.AsyncClient, db_session: AsyncSession, scheduled_date: str
    ) -> None:
        await put_plan(api, [{"offset_days": -365, "template": "appointment_reminder.basic"},
                             {"offset_days": 365, "template": "missed_visit.basic"}],
                       default=True)  # fmt: skip
        patient = await make_patient(db_session)
        answer = await api.put(
            f"/v1/appointments/{unique_id('a')}",
            json={"patient_id": patient.id, "scheduled_date": scheduled_date},
        )
        assert_clear_4xx(answer, "scheduled_date")

    async def test_a_visit_at_the_start_of_time(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        appointment = await put_appointment(api, patient.id, "2027-01-15")
        answer = await api.post(
            f"/v1/appointments/{appointment['id']}/visit",
            json={"visited_at": "0001-01-01T00:00:00+14:00"},
        )
        assert_clear_4xx(answer, "visited_at")


class TestTimesOfEventsAndBroadcasts:
    """Found auditing issue 11: the bodies added after it took any time with an offset,
    and `0001-01-01T00:00:00+14:00` (before year 1 in UTC) cannot be sent to PostgreSQL."""

    @pytest.mark.parametrize(
        "moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "9999-12-31T00:00Z"]
    )
    async def test_an_event_at_the_edge_of_the_calendar(
        self, api: httpx.AsyncClient, db_session: AsyncSession, moment: str
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.post(
            "/v1/events",
            json={
                "id": unique_id("e"),
                "type": "enrolment",
                "patient_id": patient.id,
                "occurred_at": moment,
            },
        )
        assert_clear_4xx(answer, "occurred_at")

    @pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z"])
    async def test_a_broadcast_at_the_edge_of_the_calendar(
        self, api: httpx.AsyncClient, moment: str
    ) -> None:
        answer = await api.post(
            "/v1/broadcasts",
            json={
                "group": "anyone",
                "template": "appointment_reminder.basic",
                "purpose": "camp",
                "send_at": moment,
            },
        )
        assert_clear_4xx(answer, "send_at")


class TestWhatATriggerRuleMakes:
    """Found auditing issue 11: CEL's escapes make any character of a rule's parameter,
    and its value went into the message unchecked: a null character was a 500 for the
    clinic system's event, a bidi override reached the message text."""

    @pytest.mark.parametrize(
        "expression", ['"a\\x00b"', '"\\u202e" + patient.full_name', 'event.data["\\x00"]']
    )
    async def test_is_held_to_the_rule_of_variables_and_fails_the_rule_alone(
        self, api: httpx.AsyncClient, db_session: AsyncSession, expression: str
    ) -> None:
        event_type = unique_id("t").replace("-", "_")
        template = await api.put(
            "/v1/templates/hardening.cel/en", json={"title": "T", "body": "Hi {who}"}
        )
        assert template.is_success, template.text
        rule = unique_id("r")
        saved = await api.put(
            f"/v1/trigger-rules/{rule}",
            json={
                "event_type": event_type,
                "template": "hardening.cel",
                "parameters": {"who": expression},
                "purpose": "camp",
            },
        )
        assert saved.status_code == 200, saved.text
        patient = await make_patient(db_session)
        answer = await api.post(
            "/v1/events",
            json={
                "id": unique_id("e"),
                "type": event_type,
                "patient_id": patient.id,
                "occurred_at": "2026-11-23T10:00:00+06:00",
                "data": {"x": 1},
            },
        )
        assert answer.status_code == 201, answer.text
        assert list(answer.json()["rule_errors"]) == [rule], answer.text
        messages = await api.get(f"/v1/events/{answer.json()['id']}/messages")
        assert messages.json()["items"] == []


class TestUnknownKeys:
    async def test_a_lone_surrogate_in_an_unknown_key_is_a_clear_422(
        self, api: httpx.AsyncClient
    ) -> None:
        # Found by tests/test_fuzz.py: the error named the key and could not be encoded.
        body = patient_body()
        body["phone_numbers"] = [{"\ud800": "01711000001", "type": "mobile"}]
        answer = await api.put(
            f"/v1/patients/{unique_id()}",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert_clear_4xx(answer, "phone_numbers")


class TestQueriesAndPaths:
    @pytest.mark.parametrize(
        "url",
        [
            "/v1/patients?facility_id=f%00x",
            "/v1/patients?cursor=%00",
            "/v1/notifications?patient_id=%E2%80%AEx",
            "/v1/templates/appointment_reminder.basic/en%00",
        ],
    )
    async def test_unstorable_text_in_a_query_or_path_is_a_clear_422(
        self, api: httpx.AsyncClient, url: str
    ) -> None:
        # Found by tests/test_fuzz.py: a null byte in a list filter reached PostgreSQL.
        assert_clear_4xx(await api.get(url))


class TestEveryBodyIsAnInputModel:
    """S1 holds for routes added later only if their bodies inherit `InputModel` (the
    gateway and switch bodies did not, and a null byte in a gateway's name was a 500)."""

    # Its items are validated one by one by the service, each as a PatientBatchItemIn.
    VALIDATED_BY_THE_SERVICE = frozenset({"PatientBatchIn"})

    async def test_every_json_body_model(self) -> None:
        from fastapi.routing import APIRoute
        from pydantic import BaseModel

        from app.config import Settings
        from app.main import create_app
        from app.validation import InputModel

        def routes(router: Any) -> Any:
            # FastAPI includes routers through wrappers that keep the original router.
            for route in router.routes:
                inner = getattr(route, "original_router", None)
                if inner is not None:
                    yield from routes(inner)
                elif isinstance(route, APIRoute):
                    yield route

        bodies = {}
        for route in routes(create_app(Settings(app_env="test")).router):
            # The API's bodies; the dashboard's forms (not in the schema) are not JSON.
            if route.body_field is not None and route.include_in_schema:
                model = route.body_field.field_info.annotation
                if isinstance(model, type) and issubclass(model, BaseModel):
                    bodies[model.__name__] = model
        assert len(bodies) > 15, sorted(bodies)
        not_guarded = sorted(
            name
            for name, model in bodies.items()
            if not issubclass(model, InputModel) and name not in self.VALIDATED_BY_THE_SERVICE
        )
        assert not_guarded == []
