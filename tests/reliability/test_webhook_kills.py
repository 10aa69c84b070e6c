"""The webhook sender SIGKILLed in the middle of deliveries, again and again.

A delivery is done only once its 2xx is written down; a worker that dies between the
POST and that write leaves its claim to expire (WEBHOOK_LEASE_SECONDS), and the next
worker sends it again. So every event reaches the receiver at least once, none is lost,
and the receiver, de-duplicating by `webhook-id`, ends with each event exactly once,
though it also fails a fifth of the deliveries on purpose.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from aiohttp import web
from sqlalchemy import text

from app.fakes.webhook_sink import WebhookSink, start_webhook_sink
from app.webhooks import service as webhook_service
from tests.reliability.helpers import database
from tests.stack import Services, Stack, run_stack
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

EVENTS = 1500
KILLS = 4
ENV = {
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_LEASE_SECONDS": "2",
    "WEBHOOK_BATCH_SIZE": "100",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "WEBHOOK_RETRY_MAX_SECONDS": "1",
    "DISPATCH_IDLE_SECONDS": "0.1",
}


@dataclass
class SlowSink(WebhookSink):
    """Records each delivery, then answers it `delay` seconds later: a kill finds some
    received and not yet acknowledged (they come again: duplicates to drop by id).
    Counts the requests it is holding."""

    delay: float = 0.05
    in_flight: int = 0

    async def deliver(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            response = await super().deliver(request)
            await asyncio.sleep(self.delay)
            return response
        finally:
            self.in_flight -= 1


@pytest_asyncio.fixture(loop_scope="session")
async def sink() -> AsyncIterator[tuple[SlowSink, str]]:
    # Failing a fifth of the deliveries too, as the target has it.
    receiver = SlowSink(webhook_service.new_secret(), fail_rate=0.2, echo=False)
    runner, port = await start_webhook_sink(receiver)
    yield receiver, f"http://127.0.0.1:{port}/hooks"
    await runner.cleanup()


async def owe(stack: Stack, url: str, secret: str, count: int) -> set[str]:
    """An endpoint owed `count` events, a few per patient (so the per-patient order
    holds some back), straight into the stack's database -> the event ids."""
    async with database(stack) as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_endpoints (name, url, events, secret, active)"
                " VALUES ('clinic', :url, ARRAY['message.received'], :secret, true)"
            ),
            {"url": url, "secret": secret},
        )
        rows = await conn.execute(
            text(
                """
                WITH events AS (
                    INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
                    SELECT gen_random_uuid(), 'message.received', 'k-' || (i % 300),
                           jsonb_build_object('message_id', i),
                           now() + i * interval '1 microsecond'
                    FROM generate_series(1, :n) AS i
                    RETURNING id, patient_id, occurred_at
                ), owed AS (
                    INSERT INTO webhook_deliveries (event_id, endpoint_name, patient_id,
                                                    occurred_at, state, next_attempt_at)
                    SELECT id, 'clinic', patient_id, occurred_at, 'pending', now()
                    FROM events
                    RETURNING event_id
                )
                SELECT event_id FROM owed
                """
            ),
            {"n": count},
        )
        return {str(row.event_id) for row in rows}


async def delivery_states(stack: Stack) -> dict[str, int]:
    async with database(stack) as conn:
        rows = await conn.execute(
            text("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
        )
        return {state: count for state, count in rows.all()}


async def test_sigkilled_senders_lose_no_event(
    services: Services, sink: tuple[SlowSink, str]
) -> None:
    receiver, url = sink
    rng = random.Random()
    async with run_stack(services, workers=1, env=ENV) as stack:
        expected = await owe(stack, url, receiver.secret, EVENTS)
        in_flight_at_kills = []
        for _ in range(KILLS):
            # Wait for the sender to be in the middle of a batch, then kill it there.
            await wait_until(lambda: bool(stack.ready_workers()), timeout=60, interval=0.05)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await wait_until(lambda: receiver.in_flight > 0, timeout=60, interval=0.002)
            in_flight_at_kills.append(receiver.in_flight)
            await stack.kill_worker(rng.choice(stack.ready_workers()))
            await stack.start_worker(wait=False)

        async def all_delivered() -> bool:
            return await delivery_states(stack) == {"delivered": EVENTS}

        await wait_until(all_delivered, timeout=120, interval=0.5)

    got = [event["id"] for event in receiver.received]
    print(
        f"\nin flight at each kill {in_flight_at_kills}; received {len(got)} events, "
        f"{receiver.duplicates} duplicates dropped by id, {receiver.failed} failed on purpose"
    )
    assert all(in_flight_at_kills), in_flight_at_kills
    # Every event once after de-duplication by id, none missing, none foreign.
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert all(uuid.UUID(event_id) for event_id in got)
    assert receiver.refused == 0
