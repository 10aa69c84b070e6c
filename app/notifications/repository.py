"""SQL for notifications as the API sees them (the send path's SQL is in app/delivery)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import DeliveryAttempt, Notification


async def get(session: AsyncSession, notification_id: uuid.UUID) -> Notification | None:
    return await session.get(Notification, notification_id)


async def find_by_idempotency_key(
    session: AsyncSession, api_key_id: int | None, key: str
) -> Notification | None:
    return await session.scalar(
        select(Notification).where(
            Notification.api_key_id == api_key_id, Notification.idempotency_key == key
        )
    )


async def attempts_of(
    session: AsyncSession, notification_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[DeliveryAttempt]]:
    """Every attempt of these notifications, in the order they were made."""
    by_notification: dict[uuid.UUID, list[DeliveryAttempt]] = defaultdict(list)
    if not notification_ids:
        return by_notification
    rows = await session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.notification_id.in_(notification_ids))
        .order_by(DeliveryAttempt.notification_id, DeliveryAttempt.id)
    )
    for attempt in rows:
        by_notification[attempt.notification_id].append(attempt)
    return by_notification


async def transition(
    session: AsyncSession,
    notification_id: uuid.UUID,
    from_states: Collection[str],
    to_state: str,
    **values: Any,
) -> Notification | None:
    """Move one notification atomically; None if it was not in `from_states`.

    One conditional UPDATE, so a dispatcher claiming the row at the same moment either
    wins (and the caller sees None) or waits for this to commit.
    """
    statement = (
        update(Notification)
        .where(Notification.id == notification_id, Notification.state.in_(from_states))
        .values(state=to_state, updated_at=func.now(), **values)
        .returning(Notification)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return (await session.scalars(statement)).one_or_none()


async def page_of_patient(
    session: AsyncSession,
    patient_id: str,
    *,
    limit: int,
    before: tuple[Any, uuid.UUID] | None,
) -> Sequence[Notification]:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = select(Notification).where(Notification.patient_id == patient_id)
    if before is not None:
        query = query.where(tuple_(Notification.created_at, Notification.id) < tuple_(*before))
    query = query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit)
    return (await session.scalars(query)).all()
