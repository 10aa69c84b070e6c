"""The loop guard on real Redis, and two dispatchers racing on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from app.channels import registry as channel_registry
from app.delivery import loop_guard
from app.delivery.loop_guard import LoopGuard
from app.models import DeliveryAttempt, Notification
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import make_dispatcher, patient_with, settings_for
from tests.factories import make_notification
from tests.fake_servers import FakeTwilio
from tests.stack import Database, Services

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+8801711000001"


def asks(n: int, text: str = "Your visit is tomorrow.") -> list[tuple[uuid.UUID, str, str]]:
    return [(uuid.uuid4(), PHONE, text) for _ in range(n)]


async def test_more_than_the_limit_are_duplicates(redis: Redis) -> None:
    guard = LoopGuard(redis, 5)
    messages = asks(7)
    assert await guard.duplicates(messages[:5]) == set()
    assert await guard.duplicates(messages[5:]) == {messages[5][0], messages[6][0]}


async def test_asking_again_for_one_notification_answers_the_same(redis: Redis) -> None:
    guard = LoopGuard(redis, 2)
    messages = asks(3)
    assert await guard.duplicates(messages) == {messages[2][0]}
    # A retry of a message that passed passes; of one that did not, does not.
    assert await guard.duplicates(messages) == {messages[2][0]}
    assert await guard.duplicates(messages[:2]) == set()


async def test_another_text_or_number_counts_apart(redis: Redis) -> None:
    guard = LoopGuard(redis, 1)
    first = asks(1)
    other_text = asks(1, "Another text")
    other_number = [(uuid.uuid4(), "+8801711000002", first[0][2])]
    assert await guard.duplicates(first + other_text + other_number) == set()


async def test_the_chain_ends_30_minutes_after_its_last_message(redis: Redis) -> None:
    guard = LoopGuard(redis, 1)
    first, second, third = asks(3)
    await guard.duplicates([first])
    ttl = await redis.pttl(loop_guard.key(PHONE, first[2]))
    assert 29 * 60 * 1000 < ttl <= loop_guard.WINDOW_MS
    assert await guard.duplicates([second]) == {second[0]}
    # 30 minutes without one: the chain is gone, the next message goes out.
    await redis.delete(loop_guard.key(PHONE, first[2]))
    assert await guard.duplicates([third]) == set()


async def test_guards_on_two_connections_racing_let_exactly_the_limit_through(
    services: Services,
) -> None:
    one, two = Redis.from_url(services.redis_url), Redis.from_url(services.redis_url)
    try:
        guards = [LoopGuard(one, 5), LoopGuard(two, 5)]
        messages = asks(40, f"race {uuid.uuid4()}")
        answers = await asyncio.gather(
            *(guards[i % 2].duplicates([m]) for i, m in enumerate(messages))
        )
        assert sum(len(a) for a in answers) == 35
    finally:
        await one.aclose()
        await two.aclose()


async def test_two_dispatchers_racing_send_the_limit_and_mark_the_rest_duplicate(
    fakes: Fakes,
    fake_twilio: FakeTwilio,
    http: aiohttp.ClientSession,
    redis: Redis,
    db: Database,
) -> None:
    settings = settings_for(fakes, duplicate_limit=5, dispatch_batch_size=6)
    channels = channel_registry.build_channels(settings, http)
    dispatchers = [make_dispatcher(settings, db.sessionmaker, redis, channels) for _ in range(2)]
    async with db.sessionmaker() as session:
        patient = await patient_with(session, 1)
        for _ in range(12):
            await make_notification(
                session, patient, due_at=datetime.now(UTC) - timedelta(seconds=1)
            )
        await session.commit()
    # Each claims its own batch at once; both ask the guard for the same number and text.
    await asyncio.gather(*(d.dispatch_once() for d in dispatchers))
    async with db.sessionmaker() as session:
        states = list(
            await session.scalars(
                select(Notification.state).where(Notification.patient_id == patient.id)
            )
        )
        attempts = await session.scalar(
            select(DeliveryAttempt.id)
            .join(Notification, Notification.id == DeliveryAttempt.notification_id)
            .where(Notification.state == "duplicate")
            .limit(1)
        )
    assert sorted(states) == ["duplicate"] * 7 + ["sent"] * 5
    assert attempts is None
    assert fake_twilio.messages_per_phone() == {PHONE: 5}
