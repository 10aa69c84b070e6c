"""An email we sent, as the dispatcher leaves it: a notification `sent` on its chain's
email channel, its attempt `sent` under the Message-ID it went out with."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import DeliveryAttempt, DeliveryReport, Notification
from tests.factories import make_notification, make_patient


async def sent_email(
    session: AsyncSession, address: str, chain: tuple[str, ...] = ("email", "sms")
) -> tuple[Notification, DeliveryAttempt]:
    patient = await make_patient(session, email=address)
    notification = await make_notification(
        session, patient, state="sent", channel_chain=list(chain), channel_index=0
    )
    attempt = DeliveryAttempt(
        notification_id=notification.id,
        channel="email",
        status="sent",
        provider_message_id=f"{uuid.uuid4().hex}@clinic.example",
        provider_status="250",
    )
    session.add(attempt)
    await session.flush()
    return notification, attempt


async def reloaded(
    session: AsyncSession, notification: Notification, attempt: DeliveryAttempt
) -> tuple[Notification, DeliveryAttempt]:
    await session.refresh(notification)
    await session.refresh(attempt)
    return notification, attempt


async def raw_log(session: AsyncSession, attempt: DeliveryAttempt) -> list[tuple[str, str, bool]]:
    """The raw report log of `attempt`: (status, provider status, applied), oldest first."""
    rows = await session.execute(
        select(DeliveryReport.status, DeliveryReport.provider_status, DeliveryReport.applied)
        .where(DeliveryReport.attempt_id == attempt.id)
        .order_by(DeliveryReport.id)
    )
    return [(r.status, r.provider_status or "", r.applied) for r in rows]
