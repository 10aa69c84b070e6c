"""Provider webhooks in disorder, against the real stack: early, repeated, out of order,
for unknown messages, forged. Final states come out right and never move back.

The fakes call back at once (`callback_delay` 0), so statuses and read receipts race
the dispatcher's own write of the provider's answer; then every message's callbacks are
replayed shuffled and doubled, with callbacks for messages that do not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app import callback_urls
from app.channels import twilio_signature
from app.config import Settings
from app.security import TokenSigner
from app.states import NOTIFICATION_RANK, NotificationState
from tests.reliability.helpers import Seeded, attempts, seed, states, wait_until_settled
from tests.stack import (
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    TEST_SECRET_KEY,
    Services,
    Stack,
    run_stack,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

ACCEPTED = frozenset({"sent", "delivered", "read"})
ENV = {"DISPATCH_IDLE_SECONDS": "0.2", "DISPATCH_BATCH_SIZE": "50"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(services: Services) -> AsyncIterator[Stack]:
    instant = {"callback_delay": 0.0}
    async with run_stack(
        services, workers=2, env=ENV, fake_imo_options=instant, fake_twilio_options=instant
    ) as running:
        yield running


def rank(state: str) -> int:
    return NOTIFICATION_RANK[NotificationState(state)]


async def watch(
    stack: Stack, seeded: list[Seeded], stop: asyncio.Event
) -> list[tuple[uuid.UUID, str, str]]:
    """Poll states until `stop`; every step back from an accepted state, as seen."""
    last: dict[uuid.UUID, str] = {}
    backwards = []
    while not stop.is_set():
        for notification_id, (state, _) in (await states(stack, seeded)).items():
            before = last.get(notification_id)
            if before in ACCEPTED and rank(state) < rank(before):
                backwards.append((notification_id, before, state))
            last[notification_id] = state
        await asyncio.sleep(0.05)
    return backwards


def expected_state(s: Seeded) -> str:
    """The fakes, steered by the last digit: Imo reads 4 and 5, never 9; Twilio
    delivers 4, 5 and 9."""
    if s.channel == "sms":
        return "delivered"
    return "sent" if s.phone.endswith("9") else "read"


class Chaos:
    """Builds callbacks as the providers would send them, and worse."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.settings = Settings(public_base_url=stack.api_url)
        self.signer = TokenSigner(TEST_SECRET_KEY)

    def twilio(self, attempt_id: int, sid: str, status: str) -> tuple[str, dict[str, Any]]:
        url = callback_urls.twilio_status_url(self.settings, attempt_id)
        params = {
            "AccountSid": FAKE_TWILIO_ACCOUNT_SID,
            "MessageSid": sid,
            "MessageStatus": status,
        }
        signature = twilio_signature.sign(FAKE_TWILIO_AUTH_TOKEN, url, params)
        return url, {"data": params, "headers": {twilio_signature.SIGNATURE_HEADER: signature}}

    def imo_read(
        self, attempt_id: int, post_id: str, signer: TokenSigner | None = None
    ) -> tuple[str, dict[str, Any]]:
        url = callback_urls.imo_read_receipt_url(self.settings, signer or self.signer, attempt_id)
        return url, {"json": {"event": "read_receipt", "post_id": post_id}}


async def test_early_repeated_disordered_and_unknown_webhooks(stack: Stack) -> None:
    seeded = await seed(stack, 300, series=20)
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(stack, seeded, stop))
    try:
        await wait_until_settled(stack, seeded, timeout=60, done=ACCEPTED, due_later_is_done=False)

        # Read receipts and delivery statuses come after the send settles: wait for them.
        async def all_final() -> bool:
            current = await states(stack, seeded)
            return all(current[s.id][0] == expected_state(s) for s in seeded)

        with contextlib.suppress(AssertionError):  # the assertion below says what is not
            await wait_until(all_final, timeout=30, interval=0.2)
        current = await states(stack, seeded)
        wrong = [s for s in seeded if current[s.id][0] != expected_state(s)]
        assert not wrong, Counter((expected_state(s), current[s.id][0]) for s in wrong)
        before_attempts = {a["id"]: a["status"] for a in await attempts(stack, seeded)}

        chaos = Chaos(stack)
        calls: list[tuple[str, dict[str, Any], int]] = []
        for attempt in await attempts(stack, seeded):
            attempt_id, sid = attempt["id"], attempt["provider_message_id"]
            if attempt["channel"] == "sms":
                for status in ("queued", "sent", "delivered", "sent", "undelivered", "failed"):
                    calls.append((*chaos.twilio(attempt_id, sid, status), 200))
                # Another message's sid on this attempt: refused.
                calls.append((*chaos.twilio(attempt_id, "SM" + "0" * 32, "failed"), 404))
            else:
                for _ in range(2):
                    calls.append((*chaos.imo_read(attempt_id, sid), 200))
                forged = TokenSigner("not-the-service-key-0123456789abcdef")
                calls.append((*chaos.imo_read(attempt_id, sid, forged), 404))
        calls.append((*chaos.twilio(2**62, "SM" + "1" * 32, "delivered"), 404))
        calls.append((*chaos.imo_read(2**62, "p-unknown"), 404))
        random.shuffle(calls)

        limit = asyncio.Semaphore(50)
        async with httpx.AsyncClient(timeout=30) as client:

            async def call(url: str, kwargs: dict[str, Any], expected: int) -> tuple[int, int]:
                async with limit:
                    return (await client.post(url, **kwargs)).status_code, expected

            answers = await asyncio.gather(*(call(*c) for c in calls))
        mismatched = Counter(answer for answer in answers if answer[0] != answer[1])
        assert not mismatched, mismatched

        # Only the read receipts for messages Imo never reported read moved anything.
        after = await states(stack, seeded)
        moved = Counter(
            (expected_state(s), after[s.id][0])
            for s in seeded
            if after[s.id][0] != expected_state(s)
        )
        unread = sum(1 for s in seeded if s.channel == "imo" and expected_state(s) == "sent")
        assert moved == Counter({("sent", "read"): unread}), moved
        after_attempts = {a["id"]: a["status"] for a in await attempts(stack, seeded)}
        changed = {i: s for i, s in after_attempts.items() if s != before_attempts[i]}
        assert changed == {i: "read" for i, s in before_attempts.items() if s == "sent"}
    finally:
        stop.set()
        backwards = await watcher
    assert not backwards, backwards[:5]
