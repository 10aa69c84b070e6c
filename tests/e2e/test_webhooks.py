"""Webhooks end to end: the real API and worker, the webhook sink over a socket, the
fake Twilio playing the patient. Every event arrives once with a valid signature,
including those raised while the sink was down."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from app.embedded import free_port
from app.fakes.webhook_sink import WebhookSink, start_webhook_sink
from app.webhooks import service as webhook_service
from tests.conftest import SHARED_STACK_FAKE_OPTIONS
from tests.e2e.helpers import notification_in, phone, put_patient, schedule
from tests.e2e.test_two_way import patient_writes
from tests.stack import Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def webhook_stack(services: Services) -> AsyncIterator[Stack]:
    async with run_stack(
        services,
        fake_imo_options=SHARED_STACK_FAKE_OPTIONS,
        fake_twilio_options=SHARED_STACK_FAKE_OPTIONS,
        fake_whatsapp_options=SHARED_STACK_FAKE_OPTIONS,
        env={
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
            "WEBHOOK_RETRY_MAX_SECONDS": "1",
            "DISPATCH_IDLE_SECONDS": "0.1",
        },
    ) as stack:
        yield stack


@pytest.fixture
def stack(webhook_stack: Stack) -> Stack:
    """The module's stack, for `stack_api`."""
    return webhook_stack


async def received(sink: WebhookSink, count: int) -> list[dict[str, object]]:
    async def check() -> list[dict[str, object]] | None:
        return sink.received if len(sink.received) >= count else None

    try:
        return await wait_until(check, timeout=30, interval=0.1)
    except AssertionError:
        raise AssertionError(f"got {len(sink.received)} of {count}: {sink.received}") from None


class TestWebhooks:
    async def test_every_event_once_signed_across_a_sink_outage(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        sink = WebhookSink("whsec_" + "A" * 43 + "=", echo=False)
        port = free_port()
        runner, _ = await start_webhook_sink(sink, port=port)
        answer = await stack_api.put(
            "/v1/webhooks/clinic",
            json={
                "url": f"http://127.0.0.1:{port}/events",
                "events": [
                    "message.received",
                    "conversation.opened",
                    "conversation.closed",
                    "consent.changed",
                ],
            },
        )
        assert answer.status_code == 201, answer.text
        sink.use_secret(answer.json()["secret"])

        number = phone(4)
        patient = await put_patient(stack_api, number)
        await patient_writes(stack, number, "আমি আসব")  # message.received, conversation.opened
        await received(sink, 2)

        await runner.cleanup()  # the clinic system is down
        await patient_writes(stack, number, "বন্ধ")  # message.received, consent.changed
        await patient_writes(stack, number, "START")  # message.received, consent.changed
        conversation_id = (await stack_api.get(f"/v1/patients/{patient['id']}/messages")).json()[
            "items"
        ][-1]["conversation_id"]
        await stack_api.post(f"/v1/conversations/{conversation_id}/close")  # closed
        runner, _ = await start_webhook_sink(sink, port=port)  # back up
        try:
            events = await received(sink, 7)
        finally:
            await runner.cleanup()

        assert sink.refused == 0
        assert Counter(str(e["type"]) for e in events) == {
            "message.received": 3,
            "conversation.opened": 1,
            "consent.changed": 2,
            "conversation.closed": 1,
        }
        assert len({e["id"] for e in events}) == 7
        # Per patient, in the order they happened.
        texts = [e["data"]["text"] for e in events if e["type"] == "message.received"]  # type: ignore[index]
        assert texts == ["আমি আসব", "বন্ধ", "START"]
        consent = [
            e["data"]["opted_out_channels"] for e in events if e["type"] == "consent.changed"
        ]  # type: ignore[index]
        assert consent == [["*"], []]

    async def test_a_reminders_progress_reaches_the_clinic_system(
        self, stack: Stack, stack_api: httpx.AsyncClient
    ) -> None:
        sink = WebhookSink("whsec_" + "A" * 43 + "=", echo=False)
        runner, port = await start_webhook_sink(sink)
        try:
            answer = await stack_api.put(
                "/v1/webhooks/progress",
                json={
                    "url": f"http://127.0.0.1:{port}/events",
                    "events": ["notification.sent", "notification.delivered"],
                },
            )
            assert answer.status_code == 201, answer.text
            sink.use_secret(answer.json()["secret"])
            # The workers read who subscribes at most every few seconds.
            await asyncio.sleep(webhook_service.SUBSCRIPTIONS.ttl + 0.5)

            patient = await put_patient(stack_api, phone(4))  # Twilio delivers it
            notification = await schedule(stack_api, patient["id"])
            await notification_in(stack_api, notification["id"], "delivered")
            events = await received(sink, 2)
        finally:
            await runner.cleanup()
        assert sink.refused == 0
        assert [(e["type"], e["data"]["notification_id"]) for e in events] == [  # type: ignore[index]
            ("notification.sent", notification["id"]),
            ("notification.delivered", notification["id"]),
        ]
        assert events[1]["data"]["channel"] == "sms"  # type: ignore[index]
