"""WhatsApp end to end, through each provider: a reminder to an Indian patient goes out on
WhatsApp through the fake, is delivered and read; a number not on WhatsApp falls back to
SMS and is not tried on WhatsApp again. Real API, worker, fakes and webhooks."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.channels import whatsapp
from tests.conftest import SHARED_STACK_FAKE_OPTIONS
from tests.e2e.helpers import notification_in, put_patient, schedule
from tests.stack import Services, Stack, run_stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

VARIABLES = {"patient_name": "Asha Verma", "appointment_date": "7 December"}


@pytest_asyncio.fixture(loop_scope="session", scope="module", params=["cloud", "twilio"])
async def whatsapp_stack(
    request: pytest.FixtureRequest, services: Services
) -> AsyncIterator[tuple[str, Stack]]:
    provider: str = request.param
    async with run_stack(
        services,
        fake_imo_options=SHARED_STACK_FAKE_OPTIONS,
        fake_twilio_options=SHARED_STACK_FAKE_OPTIONS,
        fake_whatsapp_options=SHARED_STACK_FAKE_OPTIONS,
        env={"WHATSAPP_PROVIDER": provider, "DISPATCH_IDLE_SECONDS": "0.1"},
    ) as stack:
        yield provider, stack


@pytest.fixture
def stack(whatsapp_stack: tuple[str, Stack]) -> Stack:
    """The module's stack (one per provider), for `stack_api`."""
    return whatsapp_stack[1]


def indian_phone(last_digit: int) -> str:
    return f"+9198{random.randrange(1_000_000, 9_999_999)}{last_digit}"


async def whatsapp_template(api: httpx.AsyncClient) -> str:
    key = f"e2e_{uuid.uuid4().hex[:8]}.reminder"
    body = {
        "title": "Appointment Reminder",
        "body": "Dear {patient_name}, your visit is on {appointment_date}.",
        "whatsapp": {
            "name": "appointment_reminder",
            "language": "en_US",
            "parameters": ["patient_name", "appointment_date"],
            "content_sid": "HX" + "c" * 32,
        },
    }
    answer = await api.put(f"/v1/templates/{key}/en", json=body)
    assert answer.status_code == 200, answer.text
    return key


async def indian_patient(api: httpx.AsyncClient, last_digit: int) -> dict[str, Any]:
    return await put_patient(
        api, indian_phone(last_digit), country="IN", locale="en", full_name="Asha Verma"
    )


def channels(notification: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["channel"], a["status"]) for a in notification["attempts"]]


class TestWhatsApp:
    async def test_a_reminder_goes_out_on_whatsapp_and_is_read(
        self, whatsapp_stack: tuple[str, Stack], stack_api: httpx.AsyncClient
    ) -> None:
        key = await whatsapp_template(stack_api)
        patient = await indian_patient(stack_api, 5)
        scheduled = await schedule(stack_api, patient["id"], template=key, variables=VARIABLES)

        read = await notification_in(stack_api, scheduled["id"], "read")
        assert channels(read) == [("whatsapp", "read")]
        [attempt] = read["attempts"]
        assert attempt["provider_message_id"]
        assert attempt["sent_at"] and attempt["delivered_at"] and attempt["read_at"]
        assert read["sent_at"] and read["delivered_at"] and read["read_at"]

    async def test_delivered_but_never_read_stays_delivered(
        self, whatsapp_stack: tuple[str, Stack], stack_api: httpx.AsyncClient
    ) -> None:
        key = await whatsapp_template(stack_api)
        patient = await indian_patient(stack_api, 1)
        scheduled = await schedule(stack_api, patient["id"], template=key, variables=VARIABLES)
        delivered = await notification_in(stack_api, scheduled["id"], "delivered")
        assert channels(delivered) == [("whatsapp", "delivered")]

    async def test_not_on_whatsapp_falls_back_to_sms_and_is_not_tried_again(
        self, whatsapp_stack: tuple[str, Stack], stack_api: httpx.AsyncClient
    ) -> None:
        provider, stack = whatsapp_stack
        key = await whatsapp_template(stack_api)
        patient = await indian_patient(stack_api, 0)
        first = await schedule(stack_api, patient["id"], template=key, variables=VARIABLES)

        delivered = await notification_in(stack_api, first["id"], "delivered")
        assert channels(delivered) == [("whatsapp", "failed"), ("sms", "delivered")]
        assert delivered["attempts"][0]["error_code"] in whatsapp.NO_ACCOUNT_CODES

        second = await schedule(stack_api, patient["id"], template=key, variables=VARIABLES)
        again = await notification_in(stack_api, second["id"], "delivered")
        assert channels(again) == [("sms", "delivered")]
        number = patient["phone_numbers"][0]["number"]
        if provider == "cloud":
            assert (await stack.whatsapp_stats())["to"].get(number) == 1
        else:
            assert (await stack.twilio_stats())["to"].get(f"whatsapp:{number}") == 1

    async def test_a_template_without_a_mapping_goes_by_sms_with_the_reason(
        self, whatsapp_stack: tuple[str, Stack], stack_api: httpx.AsyncClient
    ) -> None:
        patient = await indian_patient(stack_api, 5)
        scheduled = await schedule(stack_api, patient["id"])  # appointment_reminder.basic: unmapped
        delivered = await notification_in(stack_api, scheduled["id"], "delivered")
        assert channels(delivered) == [("whatsapp", "failed"), ("sms", "delivered")]
        assert delivered["attempts"][0]["error_code"] == whatsapp.NO_TEMPLATE
