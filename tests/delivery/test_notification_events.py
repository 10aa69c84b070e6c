"""`notification.*` and `imo.subscribed` webhook events, written with the change that
causes them (the dispatcher's settle, a provider's report, an opt-out, an Imo accept):
once per change, and not at all while no endpoint wants them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.consent import service as consent_service
from app.consent.keywords import Keyword
from app.delivery.dispatcher import Dispatcher, sweep
from app.delivery.policy import STAFF_NO_EMAIL
from app.imo import service as imo_service
from app.models import (
    DeliveryAttempt,
    ImoAuthorization,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from app.states import HELD_STATE, AttemptStatus
from app.webhooks import service as webhook_service
from tests.delivery.test_dispatcher import dispatcher, due, patient_with, report
from tests.factories import make_staff

pytestmark = pytest.mark.asyncio(loop_scope="session")

__all__ = ["dispatcher"]  # the fixture, shared with test_dispatcher.py

SETTINGS = Settings(app_env="test", webhook_allow_private=True)


async def subscribe(session: AsyncSession, *events: str) -> WebhookEndpoint:
    endpoint, _ = await webhook_service.put_endpoint(
        session, SETTINGS, f"clinic-{uuid.uuid4().hex[:8]}", "http://127.0.0.1:9/", events, True
    )
    await session.commit()
    return endpoint


async def events_about(session: AsyncSession, key: str, value: str) -> list[WebhookEvent]:
    rows = await session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.data[key].astext == value)
        .order_by(WebhookEvent.occurred_at, WebhookEvent.type)
    )
    return list(rows)


async def owed_to(session: AsyncSession, endpoint: WebhookEndpoint) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(WebhookDelivery.event_id).where(WebhookDelivery.endpoint_name == endpoint.name)
    )
    return list(rows)


class TestNotificationEvents:
    async def test_nothing_is_recorded_while_no_endpoint_wants_them(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        await subscribe(db_session, "message.received")
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()
        assert await events_about(db_session, "notification_id", str(notification.id)) == []

    async def test_sent_by_the_worker_then_delivered_by_the_provider_each_once(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        endpoint = await subscribe(db_session, "notification.sent", "notification.delivered")
        notification = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()

        [sent] = await events_about(db_session, "notification_id", str(notification.id))
        assert sent.type == "notification.sent"
        assert sent.patient_id == notification.patient_id
        data: dict[str, Any] = sent.data
        assert data["state"] == "sent" and data["channel"] == "sms"
        assert data["purpose"] == notification.purpose and data["sent_at"] is not None
        assert "body" not in data  # no message text in an event about a notification
        assert await owed_to(db_session, endpoint) == [sent.id]

        attempt_id = await db_session.scalar(
            select(DeliveryAttempt.id).where(DeliveryAttempt.notification_id == notification.id)
        )
        assert attempt_id is not None
        await report(db_session, attempt_id, AttemptStatus.DELIVERED)
        # Written again (a retried write-back, a second writer): no second event.
        await webhook_service.notifications_changed(db_session, [notification.id])
        await db_session.commit()

        # (The test's one transaction stamps both alike: ordered by type.)
        events = await events_about(db_session, "notification_id", str(notification.id))
        assert [e.type for e in events] == ["notification.delivered", "notification.sent"]
        assert events[0].data["delivered_at"] is not None
        assert sorted(await owed_to(db_session, endpoint)) == sorted(e.id for e in events)

    async def test_a_staff_members_carries_staff_id_and_no_patient(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        await subscribe(db_session, "notification.denied")
        member = await make_staff(db_session, email="")  # no address: denied at once
        notification = await due(
            db_session, await patient_with(db_session, 3), patient_id=None, staff_id=member.id
        )
        await dispatcher.dispatch_once()

        [event] = await events_about(db_session, "notification_id", str(notification.id))
        assert event.type == "notification.denied"
        assert event.patient_id is None
        assert (event.data["staff_id"], event.data["patient_id"]) == (member.id, None)
        assert event.data["failure_reason"] == STAFF_NO_EMAIL

    async def test_only_the_types_subscribed(
        self, db_session: AsyncSession, dispatcher: Dispatcher
    ) -> None:
        endpoint = await subscribe(db_session, "notification.denied")
        denied = await due(db_session, await patient_with(db_session, 3, reminder_consent="denied"))
        sent = await due(db_session, await patient_with(db_session, 3))
        await dispatcher.dispatch_once()

        assert await events_about(db_session, "notification_id", str(sent.id)) == []
        [event] = await events_about(db_session, "notification_id", str(denied.id))
        assert event.type == "notification.denied"
        assert event.data["failure_reason"] == "no reminder consent"
        assert await owed_to(db_session, endpoint) == [event.id]

    async def test_an_opt_out_denies_what_is_not_sent_with_an_event_each(
        self, db_session: AsyncSession
    ) -> None:
        await subscribe(db_session, "notification.denied")
        patient = await patient_with(db_session, 3)
        waiting = [await due(db_session, patient) for _ in range(2)]
        assert patient.mobile_e164 is not None
        await consent_service.apply_keyword(
            db_session,
            Settings(app_env="test", opt_out_scope="all"),
            Keyword.STOP,
            patient_id=patient.id,
            locale=patient.locale,
            phone=patient.mobile_e164,
            channel="sms",
        )
        for notification in waiting:
            [event] = await events_about(db_session, "notification_id", str(notification.id))
            assert (event.type, event.data["failure_reason"]) == (
                "notification.denied",
                "opted out",
            )

    async def test_a_dead_workers_claim_settled_by_the_sweeper_has_its_event(
        self, db_session: AsyncSession, db_sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        await subscribe(db_session, "notification.sent")
        # A worker claimed it an hour ago and began the send, then died.
        notification = await due(
            db_session,
            await patient_with(db_session, 3),
            state=HELD_STATE,
            claimed_at=datetime.now(UTC) - timedelta(hours=1),
        )
        db_session.add(
            DeliveryAttempt(
                notification_id=notification.id, channel="sms", status=AttemptStatus.SENDING
            )
        )
        await db_session.commit()

        assert await sweep(db_sessionmaker, SETTINGS, datetime.now(UTC)) == (0, 1)

        [event] = await events_about(db_session, "notification_id", str(notification.id))
        assert (event.type, event.data["state"]) == ("notification.sent", "sent")


class TestImoSubscribed:
    async def test_once_per_subscription_and_a_replayed_accept_is_no_second(
        self, db_session: AsyncSession
    ) -> None:
        endpoint = await subscribe(db_session, "imo.subscribed")
        patient = await patient_with(db_session, 3, imo="invited")
        for _ in range(2):
            accepted = await imo_service.mark_subscribed(db_session, patient.id)
            assert accepted is imo_service.Accept.APPLIED
        [event] = await events_about(db_session, "patient_id", patient.id)
        assert event.type == "imo.subscribed"
        assert event.data["subscribed_at"] is not None
        assert await owed_to(db_session, endpoint) == [event.id]

        # Imo dropped the patient, who was invited and accepted again: a new event.
        await db_session.execute(
            update(ImoAuthorization)
            .where(ImoAuthorization.patient_id == patient.id)
            .values(status="invited", updated_at=datetime.now(UTC) + timedelta(seconds=1))
        )
        await imo_service.mark_subscribed(db_session, patient.id)
        assert len(await events_about(db_session, "patient_id", patient.id)) == 2

    async def test_none_without_a_subscription(self, db_session: AsyncSession) -> None:
        await subscribe(db_session, "notification.read")
        patient = await patient_with(db_session, 3, imo="invited")
        await imo_service.mark_subscribed(db_session, patient.id)
        assert await events_about(db_session, "patient_id", patient.id) == []
