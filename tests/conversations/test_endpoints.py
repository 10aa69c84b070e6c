"""Conversations through the API."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.base import ChannelName
from app.channels.inbound import IncomingMessage
from app.config import Settings
from app.messages import service as message_service
from tests.factories import make_patient, make_patient_at, unique_mobile

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TestOpenReadClose:
    async def test_open_read_and_close(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.post(
            "/v1/conversations",
            json={"patient_id": patient.id, "subject": "Your visit", "reference": "a-9"},
        )
        assert answer.status_code == 201, answer.text
        opened = answer.json()
        assert (opened["state"], opened["subject"], opened["reference"]) == (
            "open",
            "Your visit",
            "a-9",
        )
        read = await api.get(f"/v1/conversations/{opened['id']}")
        assert read.status_code == 200
        assert read.json()["messages"] == [] and read.json()["next_cursor"] is None
        closed = await api.post(f"/v1/conversations/{opened['id']}/close")
        assert (closed.status_code, closed.json()["state"], closed.json()["close_reason"]) == (
            200,
            "closed",
            "api",
        )
        again = await api.post(f"/v1/conversations/{opened['id']}/close")
        assert again.json()["closed_at"] == closed.json()["closed_at"]

    async def test_an_unknown_patient_is_a_422(self, api: httpx.AsyncClient) -> None:
        answer = await api.post("/v1/conversations", json={"patient_id": "nobody", "subject": "x"})
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["field"] == "patient_id"

    @pytest.mark.parametrize(
        "body", [{"subject": "x"}, {"patient_id": "p", "subject": ""}, {"patient_id": "p"}]
    )
    async def test_a_bad_body_is_a_422(self, api: httpx.AsyncClient, body: dict[str, str]) -> None:
        assert (await api.post("/v1/conversations", json=body)).status_code == 422

    async def test_an_unknown_conversation_is_a_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.get(f"/v1/conversations/{uuid.uuid4()}")).status_code == 404
        assert (await api.post(f"/v1/conversations/{uuid.uuid4()}/close")).status_code == 404

    async def test_a_foreign_cursor_is_a_422(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        opened = await api.post(
            "/v1/conversations", json={"patient_id": patient.id, "subject": "x"}
        )
        answer = await api.get(f"/v1/conversations/{opened.json()['id']}?cursor=bm90IGl0")
        assert answer.status_code == 422


async def conversation_of(api: httpx.AsyncClient, patient_id: str) -> str:
    answer = await api.post("/v1/conversations", json={"patient_id": patient_id, "subject": "x"})
    assert answer.status_code == 201, answer.text
    conversation_id: str = answer.json()["id"]
    return conversation_id


class TestStaffMessages:
    async def test_a_note_stays_with_staff(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        conversation = await conversation_of(api, patient.id)
        answer = await api.post(
            f"/v1/conversations/{conversation}/messages", json={"text": "Called her, no answer"}
        )
        assert answer.status_code == 201, answer.text
        note = answer.json()
        assert (note["direction"], note["audience"], note["notification_id"]) == (
            "out",
            "note",
            None,
        )
        assert (await api.get(f"/v1/patients/{patient.id}/notifications")).json()["items"] == []

    async def test_a_message_to_the_patient_is_a_notification(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        conversation = await conversation_of(api, patient.id)
        answer = await api.post(
            f"/v1/conversations/{conversation}/messages",
            json={"text": "Please come on Thursday instead", "broadcast_to": ["patient"]},
        )
        assert answer.status_code == 201, answer.text
        sent = answer.json()
        assert sent["audience"] == "patient" and sent["delivery_state"] == "scheduled"
        notification = await api.get(f"/v1/notifications/{sent['notification_id']}")
        assert notification.json()["text"] == "Please come on Thursday instead"
        assert notification.json()["purpose"] == "conversation"
        exchange = (await api.get(f"/v1/conversations/{conversation}")).json()
        assert [(m["id"], m["delivery_state"]) for m in exchange["messages"]] == [
            (sent["id"], "scheduled")
        ]

    async def test_a_retried_message_with_its_key_reaches_the_patient_once(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        conversation = await conversation_of(api, patient.id)
        url = f"/v1/conversations/{conversation}/messages"
        body = {"text": "Please come on Thursday instead", "broadcast_to": ["patient"]}
        headers = {"Idempotency-Key": "staff-reply-1"}
        first = await api.post(url, json=body, headers=headers)
        again = await api.post(url, json=body, headers=headers)
        assert (first.status_code, again.status_code) == (201, 201), again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        sent = (await api.get(f"/v1/patients/{patient.id}/notifications")).json()["items"]
        assert [n["id"] for n in sent] == [first.json()["notification_id"]]
        exchange = (await api.get(f"/v1/conversations/{conversation}")).json()
        assert [m["id"] for m in exchange["messages"]] == [first.json()["id"]]
        # The same key with another text: refused, nothing sent.
        other = await api.post(url, json={**body, "text": "Friday, then"}, headers=headers)
        assert other.status_code == 422
        assert other.json()["error"]["details"][0]["field"] == "Idempotency-Key"
        # The same key on another conversation is that conversation's own.
        elsewhere = await conversation_of(api, patient.id)
        own = await api.post(f"/v1/conversations/{elsewhere}/messages", json=body, headers=headers)
        assert own.status_code == 201 and own.json()["id"] != first.json()["id"]
        too_long = await api.post(url, json=body, headers={"Idempotency-Key": "k" * 201})
        assert too_long.status_code == 422

    async def test_a_message_of_several_lines_keeps_them(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        # Staff write letters, not template variables: an email carries the lines.
        patient = await make_patient(db_session)
        conversation = await conversation_of(api, patient.id)
        text = "Dear Rahim,\n\nPlease come on Thursday instead.\n\tThe clinic"
        answer = await api.post(
            f"/v1/conversations/{conversation}/messages",
            json={"text": text, "broadcast_to": ["patient"]},
        )
        assert answer.status_code == 201, answer.text
        notification = await api.get(f"/v1/notifications/{answer.json()['notification_id']}")
        assert notification.json()["text"] == text

    async def test_to_an_opted_out_patient_it_is_denied(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session, opted_out_channels=["*"])
        conversation = await conversation_of(api, patient.id)
        answer = await api.post(
            f"/v1/conversations/{conversation}/messages",
            json={"text": "Hello", "broadcast_to": ["patient"]},
        )
        assert answer.status_code == 201 and answer.json()["delivery_state"] == "denied"

    async def test_a_closed_conversation_is_a_409(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        conversation = await conversation_of(api, patient.id)
        await api.post(f"/v1/conversations/{conversation}/close")
        answer = await api.post(f"/v1/conversations/{conversation}/messages", json={"text": "x"})
        assert answer.status_code == 409

    @pytest.mark.parametrize(
        "body",
        [{"text": ""}, {"text": "x" * 501}, {"text": "x", "broadcast_to": ["everyone"]}, {}],
    )
    async def test_a_bad_body_is_a_422(
        self, api: httpx.AsyncClient, db_session: AsyncSession, body: dict[str, object]
    ) -> None:
        patient = await make_patient(db_session)
        conversation = await conversation_of(api, patient.id)
        answer = await api.post(f"/v1/conversations/{conversation}/messages", json=body)
        assert answer.status_code == 422


class TestPatientMessages:
    async def test_both_ways_newest_first_page_by_page(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        number = unique_mobile()
        patient = await make_patient_at(db_session, number)
        conversation = await conversation_of(api, patient.id)
        incoming = IncomingMessage(ChannelName.SMS, f"SM{uuid.uuid4().hex}", number, "Hello")
        await message_service.receive(db_session, Settings(app_env="test"), incoming)
        for text in ("note one", "note two"):
            await api.post(f"/v1/conversations/{conversation}/messages", json={"text": text})
        first = (await api.get(f"/v1/patients/{patient.id}/messages?limit=2")).json()
        assert [m["text"] for m in first["items"]] == ["note two", "note one"]
        rest = (
            await api.get(f"/v1/patients/{patient.id}/messages?cursor={first['next_cursor']}")
        ).json()
        assert [(m["text"], m["direction"]) for m in rest["items"]] == [("Hello", "in")]
        assert rest["next_cursor"] is None

    async def test_an_unknown_patient_is_a_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.get("/v1/patients/nobody/messages")).status_code == 404
