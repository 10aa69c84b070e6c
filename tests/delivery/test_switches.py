"""Paused switches in the dispatcher, on real PostgreSQL and Redis with the fakes over
sockets: what a pause holds waits `scheduled` on its channel, and goes out on resume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.dispatcher import Dispatcher
from app.models import Notification
from app.switches import service as switch_service
from app.switches.scope import parse_scope
from tests.delivery.test_dispatcher import (
    dispatcher,
    due,
    patient_with,
    reload,
)

__all__ = ["dispatcher"]

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def switch(session: AsyncSession, scope: str, *, paused: bool) -> int:
    _, released = await switch_service.put_switch(
        session, parse_scope(scope), paused=paused, reason="test", by="tests", now=datetime.now(UTC)
    )
    await session.commit()
    return released


class TestPause:
    async def test_a_paused_country_waits_and_goes_out_when_resumed(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        india = await due(db_session, await patient_with(db_session, 3, country="IN"))
        bangladesh = await due(db_session, await patient_with(db_session, 3))
        await switch(db_session, "country=IN", paused=True)

        await dispatcher.dispatch_once()
        held, attempts = await reload(db_session, india)
        assert (held.state, held.paused_by, held.failure_reason) == (
            "scheduled",
            "country=IN",
            "paused: country=IN",
        )
        assert held.due_at == held.expires_at and attempts == []
        assert (await reload(db_session, bangladesh))[0].state == "sent"

        # Held rows are not due: the next batches do not claim them again.
        assert await dispatcher.dispatch_once() == 0

        assert await switch(db_session, "country=IN", paused=False) == 1
        await dispatcher.dispatch_once()
        sent, attempts = await reload(db_session, india)
        assert (sent.state, sent.paused_by) == ("sent", None)
        assert [(a.channel, a.status) for a in attempts] == [("sms", "sent")]

    async def test_a_paused_channel_holds_its_messages_without_falling_back(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        on_imo = await due(db_session, await patient_with(db_session, 3, imo="subscribed"))
        on_sms = await due(db_session, await patient_with(db_session, 3))
        await switch(db_session, "channel=imo", paused=True)

        await dispatcher.dispatch_once()
        held, attempts = await reload(db_session, on_imo)
        assert (held.state, held.channel_chain, held.channel_index) == (
            "scheduled",
            ["imo", "sms"],
            0,
        )
        assert attempts == []
        assert (await reload(db_session, on_sms))[0].state == "sent"

        await switch(db_session, "channel=imo", paused=False)
        await dispatcher.dispatch_once()
        sent, attempts = await reload(db_session, on_imo)
        assert sent.state == "sent"
        assert [a.channel for a in attempts] == ["imo"]

    async def test_a_fallback_onto_a_paused_channel_waits_there(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        # Digit 0: Imo answers nonexistent_user, so the reminder falls back to SMS.
        notification = await due(db_session, await patient_with(db_session, 0, imo="subscribed"))
        await switch(db_session, "channel=sms", paused=True)
        await dispatcher.dispatch_once()
        held, attempts = await reload(db_session, notification)
        assert (held.state, held.channel_index, held.paused_by) == ("scheduled", 1, "channel=sms")
        assert [(a.channel, a.status) for a in attempts] == [("imo", "failed")]

    async def test_a_purpose_pause_holds_that_purpose_only(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        patient = await patient_with(db_session, 3)
        missed = await due(db_session, patient, purpose="missed_visit")
        reminder = await due(db_session, patient, purpose="appointment_reminder")
        await switch(db_session, "country=BD,purpose=missed_visit", paused=True)
        await dispatcher.dispatch_once()
        assert (await reload(db_session, missed))[0].state == "scheduled"
        assert (await reload(db_session, reminder))[0].state == "sent"

    async def test_still_paused_at_its_cut_off_it_expires(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        notification = await due(db_session, await patient_with(db_session, 3, country="IN"))
        await switch(db_session, "country=IN", paused=True)
        await dispatcher.dispatch_once()
        # Time passes to the cut-off: the hold is due then, and the reminder expires.
        past = datetime.now(UTC) - timedelta(seconds=1)
        await db_session.execute(
            update(Notification)
            .where(Notification.id == notification.id)
            .values(expires_at=past, due_at=past)
        )
        await db_session.commit()
        await dispatcher.dispatch_once()
        expired, attempts = await reload(db_session, notification)
        assert (expired.state, expired.paused_by, attempts) == ("expired", None, [])
