"""Scheduling and acting on notifications through the API."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.service import create_api_key
from app.errors import install_error_handlers
from app.models import DeliveryAttempt, Notification
from app.notifications import repository as notification_repository
from app.notifications.schemas import NotificationIn
from app.notifications.service import request_hash
from tests.clock import daytime_zone, night_zone
from tests.factories import api_client, make_notification, make_patient, make_staff

pytestmark = pytest.mark.asyncio(loop_scope="session")


def body(patient_id: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "patient_id": patient_id,
        "purpose": "appointment_reminder",
        "template": "appointment_reminder.basic",
        "variables": {"appointment_date": "2026-12-01"},
        "appointment_id": "a-9",
    }
    values.update(overrides)
    return values


class TestSchedule:
    async def test_renders_in_the_patients_language_and_is_due_now(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, time_zone=daytime_zone())
        answer = await api.post("/v1/notifications", json=body(patient.id))
        assert answer.status_code == 201, answer.text
        data = answer.json()
        assert data["state"] == "pending"
        assert data["locale"] == "bn-BD"
        assert "Rahim Uddin" in data["text"] and "Dhaka Medical" in data["text"]
        assert "2026-12-01" in data["text"]
        assert data["attempts"] == [] and data["channel"] is None
        assert datetime.fromisoformat(data["due_at"]).tzinfo is not None

    async def test_a_patient_who_opted_out_is_denied_at_once(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, opted_out_channels=["*"])
        answer = await api.post("/v1/notifications", json=body(patient.id))
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "denied"

    async def test_falls_back_to_english(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, locale="fr-FR")
        answer = await api.post("/v1/notifications", json=body(patient.id))
        assert answer.status_code == 201
        assert answer.json()["locale"] == "en"
        assert answer.json()["text"].startswith("Dear Rahim Uddin")

    async def test_night_time_waits_for_the_window(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, time_zone=night_zone())
        answer = await api.post("/v1/notifications", json=body(patient.id))
        data = answer.json()
        assert data["state"] == "scheduled"
        assert datetime.fromisoformat(data["due_at"]) > datetime.now(UTC) + timedelta(hours=5)

    async def test_remind_on_a_future_day_opens_with_that_days_window(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, time_zone="Asia/Dhaka")
        day = date.today() + timedelta(days=3)
        answer = await api.post("/v1/notifications", json=body(patient.id, remind_on=str(day)))
        due = datetime.fromisoformat(answer.json()["due_at"])
        assert due == datetime(day.year, day.month, day.day, 2, 0, tzinfo=UTC)  # 08:00 Dhaka

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"template": "nope.basic"}, "template"),
            ({"variables": {}}, "variables.appointment_date"),
            ({"remind_on": "2020-01-01"}, "remind_on"),
            ({"patient_id": "nobody"}, "patient_id"),
            ({"remind_on": "2030-01-01", "send_at": "2030-01-01T10:00:00+06:00"}, ""),
            ({"send_at": "2030-01-01T10:00:00"}, "send_at"),
            ({"purpose": "Not A Slug"}, "purpose"),
            ({"surprise": 1}, "surprise"),
        ],
    )
    async def test_bad_requests_are_422_naming_the_field(
        self,
        api: httpx.AsyncClient,
        db_session: AsyncSession,
        overrides: dict[str, Any],
        field: str,
    ) -> None:
        patient = await make_patient(db_session)
        values = body(**{"patient_id": patient.id, **overrides})
        answer = await api.post("/v1/notifications", json=values)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["message"]
        if field:
            assert field in {d["field"] for d in error["details"]}, error

    async def test_malformed_json_is_422(self, api: httpx.AsyncClient) -> None:
        answer = await api.post(
            "/v1/notifications", content=b"{", headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422
        assert answer.json()["error"]["code"] == "invalid_request"


class TestIdempotency:
    async def test_a_retried_key_returns_the_first_answer(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        first = await api.post("/v1/notifications", json=body(patient.id), headers=headers)
        again = await api.post("/v1/notifications", json=body(patient.id), headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        listed = await api.get(f"/v1/patients/{patient.id}/notifications")
        assert len(listed.json()["items"]) == 1

    async def test_the_same_key_with_another_body_is_422(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        await api.post("/v1/notifications", json=body(patient.id), headers=headers)
        other = body(patient.id, variables={"appointment_date": "2027-01-01"})
        answer = await api.post("/v1/notifications", json=other, headers=headers)
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["field"] == "Idempotency-Key"

    async def test_a_key_taken_by_a_racing_request_replays_it(
        self, api: httpx.AsyncClient, db_session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A retry racing its first try: it checked the key before the first committed,
        # so its insert meets the unique index, inserts nothing, and replays the first.
        patient = await make_patient(db_session)
        headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
        first = await api.post("/v1/notifications", json=body(patient.id), headers=headers)
        looked_up = notification_repository.find_by_idempotency_key
        calls = []

        async def missed_once(*args: Any) -> Notification | None:
            calls.append(args)
            return None if len(calls) == 1 else await looked_up(*args)

        monkeypatch.setattr(notification_repository, "find_by_idempotency_key", missed_once)
        again = await api.post("/v1/notifications", json=body(patient.id), headers=headers)
        assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true" and len(calls) == 2
        other = body(patient.id, variables={"appointment_date": "2027-01-01"})
        calls.clear()
        refused = await api.post("/v1/notifications", json=other, headers=headers)
        assert refused.status_code == 422, refused.text
        listed = await api.get(f"/v1/patients/{patient.id}/notifications")
        assert len(listed.json()["items"]) == 1

    async def test_an_insert_under_a_taken_key_inserts_nothing(
        self, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        api_key, _ = await create_api_key(db_session, f"keyed-{uuid.uuid4()}")
        first = await make_notification(
            db_session, patient, api_key_id=api_key.id, idempotency_key="taken"
        )
        columns = {
            column.key: getattr(first, column.key)
            for column in Notification.__table__.columns
            if column.key not in ("created_at", "updated_at")
        }
        columns["id"] = uuid.uuid4()
        assert await notification_repository.insert_unless_key_taken(db_session, columns) is None
        columns["idempotency_key"] = "free"
        inserted = await notification_repository.insert_unless_key_taken(db_session, columns)
        assert inserted is not None and inserted.created_at is not None

    async def test_keys_are_scoped_per_api_key(
        self,
        api: httpx.AsyncClient,
        api_app: FastAPI,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        db_session: AsyncSession,
    ) -> None:
        """Client B reusing client A's key, with A's very body, schedules its own
        notification and never sees A's."""
        patient = await make_patient(db_session)
        headers = {"Idempotency-Key": "order-1001"}
        first = await api.post("/v1/notifications", json=body(patient.id), headers=headers)
        async with api_client(api_app, db_sessionmaker) as other_client:
            other = await other_client.post(
                "/v1/notifications", json=body(patient.id), headers=headers
            )
            again = await other_client.post(
                "/v1/notifications", json=body(patient.id), headers=headers
            )
        assert first.status_code == other.status_code == again.status_code == 201
        assert other.json()["id"] != first.json()["id"]
        assert "Idempotent-Replayed" not in other.headers
        assert again.json()["id"] == other.json()["id"]


class TestActions:
    async def test_cancel_mute_unmute(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        # In daytime: unmuted at night, the reminder would wait for the window (scheduled).
        patient = await make_patient(db_session, time_zone=daytime_zone())
        created = (await api.post("/v1/notifications", json=body(patient.id))).json()
        url = f"/v1/notifications/{created['id']}"
        assert (await api.post(f"{url}/mute")).json()["state"] == "muted"
        assert (await api.post(f"{url}/mute")).json()["state"] == "muted"
        assert (await api.post(f"{url}/unmute")).json()["state"] == "pending"
        cancelled = await api.post(f"{url}/cancel")
        assert cancelled.json()["state"] == "cleared"
        assert cancelled.json()["failure_reason"] == "cancelled"
        assert (await api.post(f"{url}/cancel")).status_code == 200
        refused = await api.post(f"{url}/unmute")
        assert refused.status_code == 409 and "cleared" in refused.json()["error"]["message"]

    async def test_unmuted_at_night_it_waits_for_the_window(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, time_zone=night_zone())
        created = (await api.post("/v1/notifications", json=body(patient.id))).json()
        url = f"/v1/notifications/{created['id']}"
        assert (await api.post(f"{url}/mute")).json()["state"] == "muted"
        assert (await api.post(f"{url}/unmute")).json()["state"] == "scheduled"

    @pytest.mark.parametrize("state", ["sending", "sent", "delivered", "read"])
    async def test_acting_on_a_sent_notification_is_409(
        self, api: httpx.AsyncClient, db_session: AsyncSession, state: str
    ) -> None:
        notification = await make_notification(
            db_session, await make_patient(db_session), state=state
        )
        for action in ("cancel", "mute", "unmute"):
            answer = await api.post(f"/v1/notifications/{notification.id}/{action}")
            assert answer.status_code == 409, (state, action)
            assert answer.json()["error"]["code"] == "conflict"

    async def test_unknown_or_malformed_ids(self, api: httpx.AsyncClient) -> None:
        assert (await api.get(f"/v1/notifications/{uuid.uuid4()}")).status_code == 404
        assert (await api.post(f"/v1/notifications/{uuid.uuid4()}/cancel")).status_code == 404
        assert (await api.get("/v1/notifications/not-a-uuid")).status_code == 422


class TestRead:
    async def test_shows_every_attempt_in_order(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        notification = await make_notification(
            db_session, await make_patient(db_session), state="sent"
        )
        for channel, status, code in (("imo", "failed", "nonexistent_user"), ("sms", "sent", None)):
            db_session.add(
                DeliveryAttempt(
                    notification_id=notification.id,
                    channel=channel,
                    status=status,
                    error_code=code,
                    provider_message_id=f"{channel}-1",
                )
            )
        await db_session.flush()
        data = (await api.get(f"/v1/notifications/{notification.id}")).json()
        assert [(a["channel"], a["status"], a["error_code"]) for a in data["attempts"]] == [
            ("imo", "failed", "nonexistent_user"),
            ("sms", "sent", None),
        ]
        assert data["channel"] == "sms" and data["state"] == "sent"


class TestSearch:
    """GET /v1/notifications: filters narrow, newest first, a page at a time."""

    async def test_filters_and_order(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        other = await make_patient(db_session)
        base = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
        now = datetime.now(UTC)
        rows = {}
        for hours, name, values in [
            (0, "due", {"due_at": now - timedelta(minutes=5)}),
            (1, "later", {"due_at": now + timedelta(days=2)}),
            (2, "failed", {"state": "failed", "purpose": "missed_visit"}),
            (3, "sent", {"state": "sent"}),
        ]:
            rows[name] = await make_notification(
                db_session, patient, created_at=base + timedelta(hours=hours), **values
            )
        await make_notification(db_session, other, created_at=base)
        db_session.add(
            DeliveryAttempt(notification_id=rows["sent"].id, channel="sms", status="sent")
        )
        await db_session.flush()

        async def ids(**params: Any) -> list[str]:
            answer = await api.get("/v1/notifications", params={"patient_id": patient.id, **params})
            assert answer.status_code == 200, answer.text
            return [item["id"] for item in answer.json()["items"]]

        def of(*names: str) -> list[str]:
            return [str(rows[name].id) for name in names]

        assert await ids() == of("sent", "failed", "later", "due")
        assert await ids(state="pending") == of("due")
        assert await ids(state="scheduled") == of("later")
        assert await ids(state="failed") == of("failed")
        assert await ids(purpose="missed_visit") == of("failed")
        assert await ids(channel="sms") == of("sent")
        assert await ids(channel="imo") == []
        hour = timedelta(hours=1)
        assert await ids(
            created_from=(base + hour).isoformat(), created_until=(base + 3 * hour).isoformat()
        ) == of("failed", "later")
        assert await ids(due_from=now.isoformat(), state="scheduled") == of("later")
        assert await ids(due_until=now.isoformat(), state="scheduled") == []

    async def test_pages_newest_first_without_gaps_or_repeats(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        moment = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
        # Equal creation times too: the id breaks the tie.
        made = [
            await make_notification(
                db_session, patient, created_at=moment + timedelta(seconds=i // 2)
            )
            for i in range(7)
        ]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"patient_id": patient.id, "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get("/v1/notifications", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = sorted(made, key=lambda n: (n.created_at, n.id), reverse=True)
        assert seen == [str(n.id) for n in expected]

    @pytest.mark.parametrize(
        "params",
        [
            {"state": "lost"},
            {"channel": "pigeon"},
            {"purpose": "Not A Purpose"},
            {"created_from": "2026-11-20T08:00:00"},  # no offset
            {"due_until": "yesterday"},
            {"limit": 0},
            {"limit": 501},
        ],
    )
    async def test_bad_filters_are_422_naming_them(
        self, api: httpx.AsyncClient, params: dict[str, Any]
    ) -> None:
        answer = await api.get("/v1/notifications", params=params)
        assert answer.status_code == 422, answer.text
        assert [d["field"] for d in answer.json()["error"]["details"]] == list(params)


class TestStaffRecipient:
    """`staff_id` instead of `patient_id`: one of the two, never both, never neither."""

    async def test_a_staff_user_gets_it_in_their_locale_with_their_name(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        put = await api.put(
            "/v1/templates/staff.duty/en",
            json={"title": "Ward duty", "body": "{staff_name}: ward duty on {day}"},
        )
        assert put.status_code == 200, put.text
        nurse = await make_staff(db_session, name="Nasrin Akter", locale="bn-BD")
        answer = await api.post(
            "/v1/notifications",
            json={"staff_id": nurse.id, "purpose": "rota", "template": "staff.duty",
                  "variables": {"day": "Friday"}},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        data = answer.json()
        assert (data["patient_id"], data["staff_id"]) == (None, nurse.id)
        assert data["text"] == "Nasrin Akter: ward duty on Friday"
        listed = await api.get("/v1/notifications", params={"staff_id": nurse.id})
        assert [n["id"] for n in listed.json()["items"]] == [data["id"]]

    @pytest.mark.parametrize(
        "recipients",
        [{}, {"patient_id": "p-1", "staff_id": "s-1"},
         {"staff_id": "s-1", "appointment_id": "a-1"}],
    )  # fmt: skip
    async def test_both_neither_or_a_staff_appointment_is_a_422(
        self, api: httpx.AsyncClient, recipients: dict[str, str]
    ) -> None:
        values = {"purpose": "rota", "template": "staff.duty", **recipients}
        answer = await api.post("/v1/notifications", json=values)
        assert answer.status_code == 422, answer.text

    async def test_an_unknown_staff_user_is_a_422_naming_it(self, api: httpx.AsyncClient) -> None:
        answer = await api.post(
            "/v1/notifications",
            json={"staff_id": "nobody", "purpose": "rota", "template": "staff.duty"},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["field"] == "staff_id"

    async def test_a_patient_requests_idempotency_hash_is_as_before_staff_id(self) -> None:
        # Keys stored before staff_id existed still match a retry of the same body.
        request = NotificationIn(patient_id="p-1", purpose="rota", template="staff.duty")
        before = request.model_dump(mode="json")
        del before["staff_id"]
        canonical = orjson.dumps(before, option=orjson.OPT_SORT_KEYS)
        assert request_hash(request) == hashlib.sha256(canonical).hexdigest()
        to_staff = NotificationIn(staff_id="s-1", purpose="rota", template="staff.duty")
        assert request_hash(to_staff) != request_hash(request)

    async def test_a_check_violation_validation_missed_is_a_422_never_a_500(
        self, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        app = FastAPI()
        install_error_handlers(app)

        @app.post("/neither")
        async def neither() -> None:
            # What validation would have refused, written anyway: PostgreSQL's CHECK.
            now = datetime.now(UTC)
            async with db_sessionmaker() as session:
                session.add(
                    Notification(
                        id=uuid.uuid4(), patient_id=None, staff_id=None, purpose="rota",
                        template_key="t", locale="en", variables={}, title="t", body="b",
                        state="scheduled", due_at=now, expires_at=now, channel_index=0,
                        retry_count=0,
                    )
                )  # fmt: skip
                await session.flush()

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.post("/neither")
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_input"
        assert "ck_notifications_one_recipient" in answer.json()["error"]["message"]
