"""The reminder pipeline end to end: the real API, a real worker, real PostgreSQL and
Redis, and the fake Imo and Twilio over sockets, calling back like the real ones."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.clock import night_zone
from tests.e2e.helpers import (
    accept_imo_invitation,
    notification_in,
    phone,
    put_patient,
    schedule,
)
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


async def imo_authorization(api: httpx.AsyncClient, patient_id: str) -> str | None:
    data = (await api.get(f"/v1/patients/{patient_id}")).json()
    return data["imo_authorization"]["status"] if data["imo_authorization"] else None


class TestImo:
    async def test_subscribed_patient_gets_imo_and_a_read_receipt_makes_it_read(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        patient = await put_patient(stack_api, phone(3))
        await accept_imo_invitation(stack, patient["id"])
        assert await imo_authorization(stack_api, patient["id"]) == "subscribed"

        notification = await schedule(stack_api, patient["id"])
        read = await notification_in(stack_api, notification["id"], "read")
        [attempt] = read["attempts"]
        assert (attempt["channel"], attempt["status"]) == ("imo", "read")
        assert attempt["provider_message_id"] and attempt["read_at"]
        assert read["read_at"] and read["sent_at"]

    async def test_no_imo_account_falls_back_to_sms_and_downgrades(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        patient = await put_patient(stack_api, phone(0))
        await accept_imo_invitation(stack, patient["id"])
        notification = await schedule(stack_api, patient["id"])
        delivered = await notification_in(stack_api, notification["id"], "delivered")
        assert [(a["channel"], a["status"], a["error_code"]) for a in delivered["attempts"]] == [
            ("imo", "failed", "nonexistent_user"),
            ("sms", "delivered", None),
        ]
        assert await imo_authorization(stack_api, patient["id"]) == "no_imo_account"
        # The next reminder goes straight to SMS.
        second = await schedule(stack_api, patient["id"])
        done = await notification_in(stack_api, second["id"], "delivered")
        assert [a["channel"] for a in done["attempts"]] == ["sms"]


class TestSms:
    async def test_unsubscribed_patient_gets_sms_and_a_status_makes_it_delivered(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        patient = await put_patient(stack_api, phone(4))
        notification = await schedule(stack_api, patient["id"])
        delivered = await notification_in(stack_api, notification["id"], "delivered")
        [attempt] = delivered["attempts"]
        assert (attempt["channel"], attempt["status"]) == ("sms", "delivered")
        assert attempt["provider_message_id"].startswith("SM")
        assert attempt["provider_status"] == "delivered" and attempt["delivered_at"]

    async def test_failed_sms_with_no_channel_left_ends_failed_with_the_reason(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        patient = await put_patient(stack_api, phone(7))
        notification = await schedule(stack_api, patient["id"])
        failed = await notification_in(stack_api, notification["id"], "failed")
        [attempt] = failed["attempts"]
        assert (attempt["status"], attempt["error_code"]) == ("failed", "30006")
        assert "sms" in failed["failure_reason"]

    async def test_bad_twilio_signature_is_403(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        patient = await put_patient(stack_api, phone(5))
        notification = await schedule(stack_api, patient["id"])
        sent = await notification_in(stack_api, notification["id"], "sent", "delivered")
        [attempt] = sent["attempts"]
        async with httpx.AsyncClient(base_url=stack.api_url) as client:
            # The attempt's id is not in the API; any id proves the check comes first.
            for attempt_id in (1, 2):
                answer = await client.post(
                    f"/callbacks/twilio/status/{attempt_id}",
                    data={"MessageSid": attempt["provider_message_id"], "MessageStatus": "failed"},
                    headers={"X-Twilio-Signature": "forged"},
                )
                assert answer.status_code == 403
        final = await notification_in(stack_api, notification["id"], "delivered")
        assert final["attempts"][0]["status"] == "delivered"


class TestScheduling:
    async def test_a_retried_idempotency_key_schedules_and_sends_once(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number)
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        answers = await asyncio.gather(
            *(schedule(stack_api, patient["id"], headers=headers) for _ in range(5))
        )
        assert len({a["id"] for a in answers}) == 1
        await notification_in(stack_api, answers[0]["id"], "delivered")
        listed = (await stack_api.get(f"/v1/patients/{patient['id']}/notifications")).json()
        assert len(listed["items"]) == 1
        assert (await stack.twilio_stats())["to"].get(number, 0) == 1

    async def test_a_cancelled_notification_is_never_sent(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number)
        later = await schedule(stack_api, patient["id"], send_at="2099-01-01T10:00:00+06:00")
        cancelled = await stack_api.post(f"/v1/notifications/{later['id']}/cancel")
        assert cancelled.json()["state"] == "cleared"
        # A sent one, to know the worker has gone past this patient.
        now = await schedule(stack_api, patient["id"])
        await notification_in(stack_api, now["id"], "delivered")
        final = (await stack_api.get(f"/v1/notifications/{later['id']}")).json()
        assert (final["state"], final["attempts"]) == ("cleared", [])
        assert (await stack.twilio_stats())["to"].get(number, 0) == 1

    async def test_nothing_is_sent_outside_the_window(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        number = phone(4)
        patient = await put_patient(stack_api, number, time_zone=night_zone())
        notification = await schedule(stack_api, patient["id"])
        assert notification["state"] == "scheduled"
        # Due in the morning, in the patient's time zone.
        assert moment(notification["due_at"]) > datetime.now(UTC) + timedelta(hours=1)
        # A control scheduled after it, that must go out: the worker claims whatever is
        # due in one batch, so had it taken the night-time one, that would be gone too.
        daytime = await put_patient(stack_api, phone(4))
        probe = await schedule(stack_api, daytime["id"])
        await notification_in(stack_api, probe["id"], "delivered")
        final = (await stack_api.get(f"/v1/notifications/{notification['id']}")).json()
        assert (final["state"], final["attempts"]) == ("scheduled", [])
        assert (await stack.twilio_stats())["to"].get(number, 0) == 0
        assert (await stack.imo_stats())["phones"]["send_notification"].get(number, 0) == 0
