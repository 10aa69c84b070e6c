"""The unread fallback on real PostgreSQL, with the dispatcher and the fakes over sockets:
an Imo reminder not read in time goes once more on SMS, its two attempts kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.channels import registry as channel_registry
from app.delivery import repository as delivery_repository
from app.delivery.dispatcher import Dispatcher
from app.delivery.unread import hand_on_unread
from app.models import Notification
from app.states import AttemptStatus
from tests.delivery.conftest import Fakes
from tests.delivery.test_dispatcher import (
    due,
    make_dispatcher,
    patient_with,
    reload,
    report,
    settings_for,
)
from tests.factories import make_notification, make_patient

pytestmark = pytest.mark.asyncio(loop_scope="session")

RULES = {"appointment_reminder": 6.0}


@pytest.fixture
def build(
    fakes: Fakes,
    http: aiohttp.ClientSession,
    redis: Redis,
    db_sessionmaker: async_sessionmaker[AsyncSession],
) -> Any:
    def make(**overrides: Any) -> Dispatcher:
        settings = settings_for(fakes, **overrides)
        return make_dispatcher(
            settings, db_sessionmaker, redis, channel_registry.build_channels(settings, http)
        )

    return make


async def sent_hours_ago(session: AsyncSession, notification: Notification, hours: float) -> None:
    await session.execute(
        update(Notification)
        .where(Notification.id == notification.id)
        .values(sent_at=datetime.now(UTC) - timedelta(hours=hours))
    )
    await session.commit()


class TestHandOn:
    async def test_unread_on_imo_goes_once_more_on_sms_and_both_attempts_show(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        build: Any,
        api: httpx.AsyncClient,
    ) -> None:
        dispatcher = build(unread_fallback_hours=RULES)
        notification = await due(db_session, await patient_with(db_session, 7, imo="subscribed"))
        await dispatcher.dispatch_once()
        assert (await reload(db_session, notification))[0].state == "sent"

        # Not yet 6 hours: nothing.
        await sent_hours_ago(db_session, notification, 5.9)
        assert await hand_on_unread(db_sessionmaker, dispatcher.settings) == 0

        await sent_hours_ago(db_session, notification, 6.1)
        assert await hand_on_unread(db_sessionmaker, dispatcher.settings) == 1
        handed, _ = await reload(db_session, notification)
        assert (handed.state, handed.channel_index) == ("scheduled", 1)
        assert handed.failure_reason == "imo: not read within 6 h"
        assert handed.unread_fallback_at is not None
        # Again, or from another worker: nothing more.
        assert await hand_on_unread(db_sessionmaker, dispatcher.settings) == 0

        await dispatcher.dispatch_once()
        sent, attempts = await reload(db_session, notification)
        assert sent.state == "sent"
        assert [(a.channel, a.status) for a in attempts] == [("imo", "sent"), ("sms", "sent")]
        # Once: the SMS is the end of the chain, and the reminder was handed on already.
        await sent_hours_ago(db_session, notification, 48)
        assert await hand_on_unread(db_sessionmaker, dispatcher.settings) == 0

        body = (await api.get(f"/v1/notifications/{notification.id}")).json()
        assert [(a["channel"], a["status"]) for a in body["attempts"]] == [
            ("imo", "sent"),
            ("sms", "sent"),
        ]

    async def test_read_after_the_hand_on_but_before_the_second_send_sends_nothing_more(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        build: Any,
    ) -> None:
        dispatcher = build(unread_fallback_hours=RULES)
        notification = await due(db_session, await patient_with(db_session, 7, imo="subscribed"))
        await dispatcher.dispatch_once()
        await sent_hours_ago(db_session, notification, 7)
        assert await hand_on_unread(db_sessionmaker, dispatcher.settings) == 1
        _, [imo] = await reload(db_session, notification)
        await report(db_session, imo.id, AttemptStatus.READ)
        await db_session.commit()
        assert (await reload(db_session, notification))[0].state == "read"
        # The fallback waiting `scheduled` was overtaken by the read: nothing is sent.
        await dispatcher.dispatch_once()
        read, attempts = await reload(db_session, notification)
        assert read.state == "read"
        assert [a.channel for a in attempts] == ["imo"]

    async def test_the_star_rule_covers_other_purposes(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        build: Any,
    ) -> None:
        dispatcher = build(unread_fallback_hours={"missed_visit": 1.0, "*": 12.0})
        patient = await patient_with(db_session, 7, imo="subscribed")
        missed = await due(db_session, patient, purpose="missed_visit")
        other = await due(db_session, patient, purpose="appointment_reminder")
        await dispatcher.dispatch_once()
        await sent_hours_ago(db_session, missed, 2)
        await sent_hours_ago(db_session, other, 2)
        assert await hand_on_unread(db_sessionmaker, dispatcher.settings) == 1
        assert (await reload(db_session, missed))[0].state == "scheduled"
        assert (await reload(db_session, other))[0].state == "sent"

    @pytest.mark.parametrize(
        ("changes", "why"),
        [
            ({"state": "read"}, "read"),
            ({"channel_chain": ["sms", "imo"], "channel_index": 0}, "sent on SMS"),
            ({"channel_chain": ["imo"]}, "no next channel"),
            ({"expires_at": datetime.now(UTC) - timedelta(minutes=1)}, "expired"),
            ({"purpose": "missed_visit"}, "no rule for the purpose"),
        ],
    )
    async def test_what_is_not_handed_on(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        build: Any,
        changes: dict[str, Any],
        why: str,
    ) -> None:
        patient = await make_patient(db_session)
        values: dict[str, Any] = {
            "state": "delivered",
            "channel_chain": ["imo", "sms"],
            "channel_index": 0,
            "sent_at": datetime.now(UTC) - timedelta(hours=7),
            **changes,
        }
        notification = await make_notification(db_session, patient, **values)
        await db_session.commit()
        assert (
            await hand_on_unread(db_sessionmaker, build(unread_fallback_hours=RULES).settings) == 0
        ), why
        assert (await reload(db_session, notification))[0].state == values["state"]

    async def test_off_by_default(
        self,
        db_session: AsyncSession,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        build: Any,
    ) -> None:
        patient = await make_patient(db_session)
        await make_notification(
            db_session,
            patient,
            state="sent",
            channel_chain=["imo", "sms"],
            sent_at=datetime.now(UTC) - timedelta(days=3),
        )
        await db_session.commit()
        assert await hand_on_unread(db_sessionmaker, build().settings) == 0


class TestSetBased:
    async def test_the_search_uses_its_index(self, db_session: AsyncSession) -> None:
        await db_session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            row[0]
            for row in await db_session.execute(
                text("EXPLAIN " + str(delivery_repository._HAND_ON_UNREAD.text)),
                {"purposes": ["*"], "hours": [6.0], "limit": 1000},
            )
        )
        assert "ix_notifications_unread" in plan

    async def test_two_workers_at_once_hand_each_reminder_on_once(
        self, engine: AsyncEngine
    ) -> None:
        # Real commits on two connections (the test transaction cannot be shared).
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        async with sessionmaker() as session:
            patient = await make_patient(session)
            for _ in range(300):
                await make_notification(
                    session,
                    patient,
                    state="delivered",
                    channel_chain=["whatsapp", "sms"],
                    sent_at=datetime.now(UTC) - timedelta(hours=7),
                )
            await session.commit()
        try:
            settings = settings_for(Fakes("", ""), unread_fallback_hours=RULES)
            counts = await asyncio.gather(
                *(hand_on_unread(sessionmaker, settings, batch=50) for _ in range(3))
            )
            assert sum(counts) == 300
            async with sessionmaker() as session:
                states = await session.execute(
                    text(
                        "SELECT state, channel_index, count(*) FROM notifications"
                        " WHERE patient_id = :p GROUP BY 1, 2"
                    ),
                    {"p": patient.id},
                )
                assert [tuple(row) for row in states] == [("scheduled", 1, 300)]
        finally:
            async with engine.begin() as connection:
                await connection.execute(
                    text("DELETE FROM patients WHERE id = :p"), {"p": patient.id}
                )
