"""Events and trigger rules through the API: scheduling, idempotency, correction, voiding,
validation and the sandbox of expressions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import Notification
from tests.clock import daytime_zone
from tests.factories import make_patient, make_staff, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def put_template(api: httpx.AsyncClient, key: str, body: str) -> None:
    answer = await api.put(f"/v1/templates/{key}/en", json={"title": "Clinic", "body": body})
    assert answer.status_code == 200, answer.text


def rule(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "event_type": "enrolment",
        "condition": "true",
        "template": "anc.welcome",
        "parameters": {"week": "string(event.data.gestational_week)"},
        "purpose": "anc",
    }
    values.update(overrides)
    return values


def event(patient_id: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": unique_id("e"),
        "type": "enrolment",
        "patient_id": patient_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "data": {"gestational_week": 30},
    }
    values.update(overrides)
    return values


async def messages_of(db_session: AsyncSession, event_id: str) -> list[Notification]:
    rows = await db_session.scalars(
        select(Notification)
        .where(Notification.event_id == event_id)
        .order_by(Notification.due_at)
        .execution_options(populate_existing=True)
    )
    return list(rows)


@pytest_asyncio.fixture(loop_scope="session")
async def two_rules(api: httpx.AsyncClient) -> tuple[str, str]:
    """An `enrolment` with two rules: a welcome now and a follow-up 7 days later at 07:00
    local (before the window opens, so moved to its opening)."""
    event_type = unique_id("enrolment").replace("-", "_")
    await put_template(api, "anc.welcome", "Welcome {patient_name}, week {week}")
    await put_template(api, "anc.followup", "Week {week}: come for your check-up")
    now_rule, later_rule = unique_id("welcome"), unique_id("followup")
    for name, template, send_at in [
        (now_rule, "anc.welcome", {"days": 0}),
        (later_rule, "anc.followup", {"days": 7, "at": "07:00"}),
    ]:
        answer = await api.put(
            f"/v1/trigger-rules/{name}",
            json=rule(event_type=event_type, template=template, send_at=send_at),
        )
        assert answer.status_code == 200, answer.text
    return event_type, later_rule


class TestEnrolment:
    async def test_two_rules_schedule_now_and_in_seven_days_in_the_window(
        self, api: httpx.AsyncClient, db_session: AsyncSession, two_rules: tuple[str, str]
    ) -> None:
        event_type, later_rule = two_rules
        patient = await make_patient(db_session, time_zone=daytime_zone(), locale="en")
        answer = await api.post("/v1/events", json=event(patient.id, type=event_type))
        assert answer.status_code == 201, answer.text
        assert answer.json()["rule_errors"] == {}
        now_message, later_message = await messages_of(db_session, answer.json()["id"])
        assert now_message.body == "Welcome Rahim Uddin, week 30"
        assert now_message.due_at <= datetime.now(UTC)
        assert later_message.rule_name == later_rule
        assert timedelta(days=6) < later_message.due_at - datetime.now(UTC) < timedelta(days=8)
        # 07:00 is before the window: moved to its opening.
        local = later_message.due_at.astimezone(ZoneInfo(patient.time_zone))
        assert local.time() == Settings().messaging_window_start

    async def test_the_same_event_twice_schedules_nothing_new(
        self, api: httpx.AsyncClient, db_session: AsyncSession, two_rules: tuple[str, str]
    ) -> None:
        event_type, _ = two_rules
        patient = await make_patient(db_session, time_zone=daytime_zone(), locale="en")
        body = event(patient.id, type=event_type)
        first = await api.post("/v1/events", json=body)
        again = await api.post("/v1/events", json=body)
        assert (first.status_code, again.status_code) == (201, 200)
        messages = await messages_of(db_session, body["id"])
        assert len(messages) == 2

    async def test_a_false_condition_schedules_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        event_type = unique_id("t").replace("-", "_")
        await put_template(api, "anc.welcome", "Welcome {patient_name}, week {week}")
        condition = 'event.data.gestational_week >= 28 && patient.locale == "hi"'
        answer = await api.put(
            f"/v1/trigger-rules/{unique_id('r')}",
            json=rule(event_type=event_type, condition=condition),
        )
        assert answer.status_code == 200, answer.text
        patient = await make_patient(db_session, locale="en")
        posted = await api.post("/v1/events", json=event(patient.id, type=event_type))
        assert posted.status_code == 201
        assert await messages_of(db_session, posted.json()["id"]) == []

    async def test_voiding_clears_what_is_not_sent(
        self, api: httpx.AsyncClient, db_session: AsyncSession, two_rules: tuple[str, str]
    ) -> None:
        event_type, later_rule = two_rules
        patient = await make_patient(db_session, time_zone=daytime_zone(), locale="en")
        body = event(patient.id, type=event_type)
        await api.post("/v1/events", json=body)
        first, _ = await messages_of(db_session, body["id"])
        first.state = "sent"
        await db_session.flush()
        answer = await api.delete(f"/v1/events/{body['id']}")
        assert answer.status_code == 200 and answer.json()["voided_at"] is not None
        sent, later = await messages_of(db_session, body["id"])
        assert (sent.state, later.state, later.rule_name) == ("sent", "cleared", later_rule)
        assert (await api.post("/v1/events", json=body)).status_code == 409

    async def test_a_corrected_event_reevaluates_unsent_messages(
        self, api: httpx.AsyncClient, db_session: AsyncSession, two_rules: tuple[str, str]
    ) -> None:
        event_type, _ = two_rules
        patient = await make_patient(db_session, time_zone=daytime_zone(), locale="en")
        body = event(patient.id, type=event_type)
        await api.post("/v1/events", json=body)
        first, _ = await messages_of(db_session, body["id"])
        first.state = "sent"
        await db_session.flush()
        corrected = await api.post("/v1/events", json={**body, "data": {"gestational_week": 31}})
        assert corrected.status_code == 201
        sent, later = await messages_of(db_session, body["id"])
        assert "30" in sent.body and later.body == "Week 31: come for your check-up"
        assert len(await messages_of(db_session, body["id"])) == 2


class TestRuleErrors:
    async def test_a_failing_rule_is_recorded_and_the_others_go_on(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        event_type = unique_id("t").replace("-", "_")
        await put_template(api, "anc.welcome", "Welcome {patient_name}, week {week}")
        broken, working = "a-" + unique_id("broken"), "b-" + unique_id("working")
        await api.put(
            f"/v1/trigger-rules/{broken}",
            json=rule(event_type=event_type, parameters={"week": "event.data.missing + 1"}),
        )
        await api.put(f"/v1/trigger-rules/{working}", json=rule(event_type=event_type))
        patient = await make_patient(db_session, locale="en")
        answer = await api.post("/v1/events", json=event(patient.id, type=event_type))
        assert answer.status_code == 201
        assert list(answer.json()["rule_errors"]) == [broken]
        assert "missing" in answer.json()["rule_errors"][broken]
        [message] = await messages_of(db_session, answer.json()["id"])
        assert message.rule_name == working
        metrics = (await api.get("/metrics")).text
        assert f'notify_trigger_rule_errors_total{{rule="{broken}"}} 1.0' in metrics


class TestRuleValidation:
    @pytest.mark.parametrize(
        ("overrides", "field", "words"),
        [
            ({"condition": "event.data.week >= "}, "condition", "line 1, column 20"),
            ({"parameters": {"week": "1 +* 2"}}, "parameters.week", "line 1"),
            ({"template": "no.such.template"}, "template", "no template"),
            ({"parameters": {}}, "parameters.week", "give it an expression"),
        ],
    )
    async def test_a_bad_rule_is_a_422_naming_the_fault(
        self, api: httpx.AsyncClient, overrides: dict[str, Any], field: str, words: str
    ) -> None:
        await put_template(api, "anc.welcome", "Welcome {patient_name}, week {week}")
        answer = await api.put(f"/v1/trigger-rules/{unique_id('r')}", json=rule(**overrides))
        assert answer.status_code == 422, answer.text
        [detail] = answer.json()["error"]["details"]
        assert detail["field"] == field and words in detail["message"], detail


class TestSandbox:
    """CEL has no I/O; an expression naming anything beyond CEL's own functions is
    refused on saving, and nothing of Python is reachable through the values."""

    @pytest.mark.parametrize(
        "expression",
        [
            'open("/etc/passwd")',
            'exec("import os")',
            '__import__("os").system("touch /tmp/pwned")',
            'http.get("http://127.0.0.1:9")',
            'os.system("id")',
            'subprocess("id")',
        ],
    )
    async def test_no_file_network_or_process(
        self, api: httpx.AsyncClient, expression: str
    ) -> None:
        await put_template(api, "anc.welcome", "Welcome {patient_name}, week {week}")
        answer = await api.put(
            f"/v1/trigger-rules/{unique_id('r')}", json=rule(condition=expression)
        )
        assert answer.status_code == 422, answer.text

    async def test_attribute_access_reaches_only_the_given_values(self) -> None:
        from app.events.expressions import compile_expression

        expression = compile_expression("event.data.__class__")
        with pytest.raises(KeyError):
            expression.evaluate({"event": {"data": {}}})


class TestStaffRecipient:
    """`recipient: staff`: the event's staff member, in their locale; an event without
    one is the rule's evaluation error, recorded, and the other rules go on."""

    async def staff_rule(self, api: httpx.AsyncClient, event_type: str, name: str) -> None:
        await put_template(api, "anc.nurse", "{patient_name} enrolled, week {week}")
        bengali = await api.put(
            "/v1/templates/anc.nurse/bn",
            json={"title": "ক্লিনিক", "body": "{patient_name} নথিভুক্ত, সপ্তাহ {week}"},
        )
        assert bengali.status_code == 200, bengali.text
        answer = await api.put(
            f"/v1/trigger-rules/{name}",
            json=rule(event_type=event_type, template="anc.nurse", recipient="staff"),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["recipient"] == "staff"
        assert (await api.get(f"/v1/trigger-rules/{name}")).json()["recipient"] == "staff"

    async def test_goes_to_the_events_staff_member_in_their_locale(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        event_type, name = unique_id("t").replace("-", "_"), unique_id("nurse")
        await self.staff_rule(api, event_type, name)
        nurse = await make_staff(db_session, locale="bn-BD")
        patient = await make_patient(db_session, time_zone=daytime_zone(), locale="en")
        answer = await api.post(
            "/v1/events", json=event(patient.id, type=event_type, staff_id=nurse.id)
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["rule_errors"] == {}
        [message] = await messages_of(db_session, answer.json()["id"])
        assert (message.patient_id, message.staff_id) == (None, nurse.id)
        assert message.body == "Rahim Uddin নথিভুক্ত, সপ্তাহ 30"
        assert message.country == patient.country

        listed = await api.get(f"/v1/events/{answer.json()['id']}/messages")
        [item] = listed.json()["items"]
        assert (item["patient_id"], item["staff_id"]) == (None, nurse.id)

    @pytest.mark.parametrize("staff_id", [None, "nobody-by-this-id"])
    async def test_no_staff_member_is_the_rules_error_and_the_others_go_on(
        self, api: httpx.AsyncClient, db_session: AsyncSession, staff_id: str | None
    ) -> None:
        event_type = unique_id("t").replace("-", "_")
        to_staff, to_patient = "a-" + unique_id("nurse"), "b-" + unique_id("welcome")
        await self.staff_rule(api, event_type, to_staff)
        await put_template(api, "anc.welcome", "Welcome {patient_name}, week {week}")
        await api.put(f"/v1/trigger-rules/{to_patient}", json=rule(event_type=event_type))
        patient = await make_patient(db_session, locale="en")
        body = event(patient.id, type=event_type)
        if staff_id is not None:
            body["staff_id"] = staff_id
        answer = await api.post("/v1/events", json=body)
        assert answer.status_code == 201, answer.text
        errors = answer.json()["rule_errors"]
        assert list(errors) == [to_staff]
        assert errors[to_staff].startswith("RecipientError: ")
        assert ("no staff_id" if staff_id is None else staff_id) in errors[to_staff]
        [message] = await messages_of(db_session, answer.json()["id"])
        assert (message.rule_name, message.patient_id) == (to_patient, patient.id)

    async def test_a_corrected_staff_id_or_recipient_moves_the_unsent_message(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        event_type, name = unique_id("t").replace("-", "_"), unique_id("nurse")
        await self.staff_rule(api, event_type, name)
        first, second = await make_staff(db_session), await make_staff(db_session)
        patient = await make_patient(db_session, locale="en")
        body = event(patient.id, type=event_type, staff_id=first.id)
        assert (await api.post("/v1/events", json=body)).status_code == 201

        corrected = await api.post("/v1/events", json={**body, "staff_id": second.id})
        assert corrected.status_code == 201, corrected.text  # changed: evaluated again
        [message] = await messages_of(db_session, body["id"])
        assert (message.patient_id, message.staff_id) == (None, second.id)

        # The rule now for the patient: the one message moves whole (never both set: the
        # CHECK holds, and the answer is no 500).
        changed = await api.put(
            f"/v1/trigger-rules/{name}",
            json=rule(event_type=event_type, template="anc.nurse", recipient="patient"),
        )
        assert changed.status_code == 200, changed.text
        again = await api.post("/v1/events", json={**body, "data": {"gestational_week": 31}})
        assert again.status_code == 201, again.text
        [message] = await messages_of(db_session, body["id"])
        assert (message.patient_id, message.staff_id) == (patient.id, None)
