"""A cht-gateway phone end to end: real API and worker processes, the fake gateway
polling over a socket as the app does. Reminders go out through the phone and are
delivered; a phone that goes silent has its messages taken back, and Twilio sends them."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio

from app.fakes.gateway import FakeGateway, FakeGatewayConfig
from tests.conftest import SHARED_STACK_FAKE_OPTIONS
from tests.dashboard.recount import counts_agree_with_a_recount
from tests.e2e.helpers import notification_in, phone, put_patient, schedule
from tests.stack import Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# Outside production a gateway phone (a real SIM) reaches ALLOWED_RECIPIENTS only.
# The last digit 1: the fake Twilio delivers.
NUMBERS = [phone(1) for _ in range(3)]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gateway_stack(services: Services) -> AsyncIterator[Stack]:
    async with run_stack(
        services,
        fake_imo_options=SHARED_STACK_FAKE_OPTIONS,
        fake_twilio_options=SHARED_STACK_FAKE_OPTIONS,
        env={
            "CHANNEL_CHAINS": json.dumps({"BD": ["gateway", "sms"], "*": ["sms"]}),
            "ALLOWED_RECIPIENTS": ",".join(NUMBERS),
            "DISPATCH_IDLE_SECONDS": "0.1",
            # Silent for 3 s is offline; the cron job looks every second.
            "GATEWAY_OFFLINE_AFTER_MINUTES": "0.05",
            "SWEEP_INTERVAL_SECONDS": "1",
        },
    ) as stack:
        yield stack


@pytest.fixture
def stack(gateway_stack: Stack) -> Stack:
    return gateway_stack


@pytest_asyncio.fixture(loop_scope="session")
async def fake_gateway(
    request: pytest.FixtureRequest, gateway_stack: Stack, stack_api: httpx.AsyncClient
) -> AsyncIterator[FakeGateway]:
    """A fake phone polling the stack; `fail_rate` by indirect parametrisation."""
    created = await stack_api.post(
        "/v1/gateways", json={"name": f"phone-{random.randrange(10**6)}", "country": "BD"}
    )
    assert created.status_code == 201, created.text
    config = FakeGatewayConfig(
        url=f"{gateway_stack.api_url}/gateway/api/sms",
        user=created.json()["name"],
        password=created.json()["secret"],
        fail_rate=getattr(request, "param", 0.0),
    )
    async with aiohttp.ClientSession() as session:
        yield FakeGateway(config, session)


async def test_reminders_go_through_the_phone_and_fall_back_when_it_goes_silent(
    stack: Stack, stack_api: httpx.AsyncClient, fake_gateway: FakeGateway
) -> None:
    assert await fake_gateway.check()
    first = await put_patient(stack_api, NUMBERS[0])
    reminder = await schedule(stack_api, first["id"])

    async def offered() -> list[dict[str, str]] | None:
        return await fake_gateway.poll() or None

    [message] = await wait_until(offered, timeout=20, interval=0.2)
    assert message["to"] == NUMBERS[0]
    # The next polls acknowledge it, then report it sent and delivered.
    await fake_gateway.poll()
    await fake_gateway.poll()
    done = await notification_in(stack_api, reminder["id"], "delivered")
    [attempt] = done["attempts"]
    assert attempt["channel"] == "gateway" and attempt["status"] == "delivered"
    assert [h["state"] for h in attempt["state_history"]] == [
        "forwarded-to-gateway",
        "received-by-gateway",
        "sent",
        "delivered",
    ]

    # The phone takes the next message and falls silent: Twilio sends it.
    second = await put_patient(stack_api, NUMBERS[1])
    stranded = await schedule(stack_api, second["id"])
    [message] = await wait_until(offered, timeout=20, interval=0.2)
    assert message["to"] == NUMBERS[1]

    async def on_sms() -> dict[str, Any] | None:
        # Sent on SMS: its attempt is written before Twilio answers (the notification is
        # `sending` meanwhile), so the answer is awaited too.
        answer = dict((await stack_api.get(f"/v1/notifications/{stranded['id']}")).json())
        settled = len(answer["attempts"]) == 2 and answer["state"] != "sending"
        return answer if settled else None

    fallen_back = await wait_until(on_sms, timeout=30, interval=0.2)
    assert fallen_back["state"] in ("sent", "delivered")
    channels = [(a["channel"], a["status"]) for a in fallen_back["attempts"]]
    assert channels[0] == ("gateway", "failed") and channels[1][0] == "sms"
    assert fallen_back["attempts"][0]["state_history"][-1]["state"] == "taken-back"
    listed = (await stack_api.get("/v1/gateways")).json()["data"]
    mine = next(g for g in listed if g["name"] == fake_gateway.config.user)
    assert mine["counts"] == {"delivered": 1, "taken-back": 1}
    # The dashboard's counts: the phone's delivery and the SMS it fell back to.
    counted = await counts_agree_with_a_recount(stack.database_url)
    assert any(key[2] == "gateway" and key[4] == "delivered" for key in counted), counted
    assert any(key[2] == "sms" and key[6] for key in counted), counted


@pytest.mark.parametrize("fake_gateway", [1.0], indirect=True)
async def test_a_message_the_phone_reports_failed_goes_to_twilio(
    stack_api: httpx.AsyncClient, fake_gateway: FakeGateway
) -> None:
    patient = await put_patient(stack_api, NUMBERS[2])
    reminder = await schedule(stack_api, patient["id"])

    async def offered() -> list[dict[str, str]] | None:
        return await fake_gateway.poll() or None

    [message] = await wait_until(offered, timeout=20, interval=0.2)
    assert message["to"] == NUMBERS[2]
    await fake_gateway.poll()  # UNSENT, then FAILED with its reason
    await fake_gateway.poll()

    async def on_sms() -> dict[str, Any] | None:
        answer = dict((await stack_api.get(f"/v1/notifications/{reminder['id']}")).json())
        return answer if len(answer["attempts"]) == 2 else None

    done = await wait_until(on_sms, timeout=30, interval=0.2)
    gateway_attempt, sms_attempt = done["attempts"]
    assert gateway_attempt["status"] == "failed"
    assert gateway_attempt["error_message"] == "generic failure"
    assert gateway_attempt["state_history"][-1] == {
        "state": "failed",
        "at": gateway_attempt["state_history"][-1]["at"],
        "reason": "generic failure",
    }
    assert sms_attempt["channel"] == "sms"
