"""Two-way messaging end to end: the real API and worker, the fake Twilio playing the
patient (its signed inbound webhook over a socket), real PostgreSQL and Redis."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import notification_in, phone, put_patient, schedule
from tests.stack import Stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def patient_writes(stack: Stack, sender: str, text: str) -> str | None:
    """The patient sends `text`; the service's answer to them, if any."""
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{stack.twilio_url}/_fake/inbound",
            json={"url": f"{stack.api_url}/callbacks/twilio/inbound", "from": sender, "body": text},
        )
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["status"] == 200, data
    reply: str | None = data["reply"]
    return reply


async def open_conversation(api: httpx.AsyncClient, patient_id: str, subject: str) -> str:
    answer = await api.post(
        "/v1/conversations", json={"patient_id": patient_id, "subject": subject}
    )
    assert answer.status_code == 201, answer.text
    conversation_id: str = answer.json()["id"]
    return conversation_id


async def texts_on(api: httpx.AsyncClient, conversation_id: str) -> list[tuple[str, str]]:
    exchange = (await api.get(f"/v1/conversations/{conversation_id}")).json()
    return [(m["direction"], m["text"]) for m in exchange["messages"]]


class TestReplies:
    async def test_a_reply_by_sms_lands_on_the_conversation_and_staff_answer(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number, locale="en")
        reminder = await schedule(stack_api, patient["id"])
        await notification_in(stack_api, reminder["id"], "delivered")
        visit = await open_conversation(stack_api, patient["id"], "Your visit on 1 December")

        assert await patient_writes(stack, number, "I can't come Tuesday") is None
        assert await texts_on(stack_api, visit) == [("in", "I can't come Tuesday")]

        answer = await stack_api.post(
            f"/v1/conversations/{visit}/messages",
            json={"text": "Come on Thursday then", "broadcast_to": ["patient"]},
        )
        assert answer.status_code == 201, answer.text
        delivered = await notification_in(stack_api, answer.json()["notification_id"], "delivered")
        assert delivered["text"] == "Come on Thursday then"
        exchange = (await stack_api.get(f"/v1/conversations/{visit}")).json()
        assert [(m["direction"], m["delivery_state"]) for m in exchange["messages"]] == [
            ("in", None),
            ("out", "delivered"),
        ]

    async def test_a_reply_by_whatsapp_through_twilio_lands_there_too(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number)
        visit = await open_conversation(stack_api, patient["id"], "Your visit")
        assert await patient_writes(stack, f"whatsapp:{number}", "আসব") is None
        exchange = (await stack_api.get(f"/v1/conversations/{visit}")).json()
        assert [(m["channel"], m["text"]) for m in exchange["messages"]] == [("whatsapp", "আসব")]

    async def test_a_reply_by_whatsapp_cloud_lands_there_and_staff_answer_in_free_text(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = f"+9198{random.randrange(1_000_000, 9_999_999)}5"
        patient = await put_patient(stack_api, number, country="IN", locale="en")
        visit = await open_conversation(stack_api, patient["id"], "Your visit")
        async with httpx.AsyncClient() as client:
            wrote = await client.post(
                f"{stack.whatsapp_url}/_fake/inbound", json={"from": number, "body": "Running late"}
            )
        assert wrote.status_code == 200 and wrote.json()["status"] == 200, wrote.text
        exchange = (await stack_api.get(f"/v1/conversations/{visit}")).json()
        assert [(m["channel"], m["text"]) for m in exchange["messages"]] == [
            ("whatsapp", "Running late")
        ]
        # Inside the 24-hour window: the staff answer (no WhatsApp template) goes as text.
        answer = await stack_api.post(
            f"/v1/conversations/{visit}/messages",
            json={"text": "No problem, we wait", "broadcast_to": ["patient"]},
        )
        read = await notification_in(stack_api, answer.json()["notification_id"], "read")
        assert [(a["channel"], a["status"]) for a in read["attempts"]] == [("whatsapp", "read")]

    async def test_three_open_a_numbered_list_then_2_please_and_out_of_range_re_asks(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number, locale="en")
        bill = await open_conversation(stack_api, patient["id"], "Your bill")
        labs = await open_conversation(stack_api, patient["id"], "Lab results")
        visit = await open_conversation(stack_api, patient["id"], "Your visit")

        question = await patient_writes(stack, number, "Is it ready?")
        assert question == (
            "Which topic is your message about? Reply with its number:\n"
            "1. New topic\n2. Your visit\n3. Lab results\n4. Your bill"
        )
        assert await patient_writes(stack, number, "9") == question
        assert await patient_writes(stack, number, "3 please") is None
        assert await texts_on(stack_api, labs) == [("in", "Is it ready?")]
        assert await texts_on(stack_api, visit) == [] and await texts_on(stack_api, bill) == []
        # Both directions in the patient's history, newest first.
        history = (await stack_api.get(f"/v1/patients/{patient['id']}/messages")).json()
        assert [m["text"] for m in history["items"]] == ["3 please", "9", "Is it ready?"]

    async def test_on_whatsapp_cloud_the_numbered_list_is_sent_by_a_worker(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = f"+9198{random.randrange(1_000_000, 9_999_999)}5"
        patient = await put_patient(stack_api, number, country="IN", locale="en")
        for subject in ("Lab results", "Your visit"):
            await open_conversation(stack_api, patient["id"], subject)
        before = (await stack.whatsapp_stats())["to"].get(number, 0)
        async with httpx.AsyncClient() as client:
            wrote = await client.post(
                f"{stack.whatsapp_url}/_fake/inbound", json={"from": number, "body": "Ready?"}
            )
        assert wrote.status_code == 200 and wrote.json()["status"] == 200, wrote.text

        async def answer_sent() -> dict[str, Any] | None:
            history = (await stack_api.get(f"/v1/patients/{patient['id']}/messages")).json()
            replies = [m for m in history["items"] if m["audience"] == "reply"]
            return replies[0] if replies and replies[0]["delivery_state"] == "sent" else None

        reply = await wait_until(answer_sent, timeout=30, interval=0.2)
        assert reply["direction"] == "out" and reply["channel"] == "whatsapp"
        assert reply["text"].startswith("Which topic is your message about?")
        assert (await stack.whatsapp_stats())["to"].get(number, 0) == before + 1


class TestConsent:
    async def test_stop_in_bengali_denies_the_next_reminder_and_start_restores(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number)
        later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        waiting = await schedule(stack_api, patient["id"], send_at=later)

        confirmation = await patient_writes(stack, number, "বন্ধ")
        assert confirmation is not None and confirmation.startswith("আপনি আর ক্লিনিক")
        withdrawn: dict[str, Any] = (
            await stack_api.get(f"/v1/notifications/{waiting['id']}")
        ).json()
        assert (withdrawn["state"], withdrawn["failure_reason"]) == ("denied", "opted out")
        shown = (await stack_api.get(f"/v1/patients/{patient['id']}")).json()
        assert shown["opted_out_channels"] == ["*"]
        refused = await schedule(stack_api, patient["id"])
        assert (refused["state"], refused["failure_reason"]) == ("denied", "opted out")

        restored = await patient_writes(stack, number, "START")
        assert restored is not None and restored.startswith("আপনি আবার")
        shown = (await stack_api.get(f"/v1/patients/{patient['id']}")).json()
        assert shown["opted_out_channels"] == []
        again = await schedule(stack_api, patient["id"])
        await notification_in(stack_api, again["id"], "delivered")
