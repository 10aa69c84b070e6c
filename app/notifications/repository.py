"""SQL for notifications as the API sees them (the send path's SQL is in app/delivery)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import DeliveryAttempt, Notification


async def get(session: AsyncSession, notification_id: uuid.UUID) -> Notification | None:
    return await session.get(Notification, notification_id)


_NOTIFICATIONS = cast(Table, Notification.__table__)
# Built once, its columns given at execution: `.values()` per request coerced every
# column anew.
_INSERT_UNLESS_KEY_TAKEN = (
    insert(_NOTIFICATIONS)
    .on_conflict_do_nothing(
        index_elements=[_NOTIFICATIONS.c.api_key_id, _NOTIFICATIONS.c.idempotency_key],
        index_where=_NOTIFICATIONS.c.idempotency_key.is_not(None),
    )
    .returning(_NOTIFICATIONS.c.created_at, _NOTIFICATIONS.c.updated_at)
)


async def insert_unless_key_taken(
    session: AsyncSession, columns: dict[str, Any]
) -> Notification | None:
    """Inserts one notification in one Core statement; None if its (api_key_id,
    idempotency_key) is taken (by a request that raced this one). No unit of work and no
    savepoint (three of a keyed request's seven round trips). The row returned is not in
    the session: it is the answer, not something to change."""
    stamps = (await session.execute(_INSERT_UNLESS_KEY_TAKEN, columns)).one_or_none()
    if stamps is None:
        return None
    return Notification(**columns, created_at=stamps.created_at, updated_at=stamps.updated_at)


@dataclass(frozen=True, slots=True)
class Addressee:
    """What scheduling a message to a patient reads of them."""

    full_name: str
    facility_name: str | None
    locale: str
    time_zone: str
    opted_out_channels: list[str]


_ADDRESSEE = text(
    "SELECT full_name, facility_name, locale, time_zone, opted_out_channels"
    " FROM patients WHERE id = :id"
)


async def addressee(session: AsyncSession, patient_id: str) -> Addressee | None:
    """Scheduling's read of a patient: five columns, not the ORM entity (every
    scheduled message reads one)."""
    row = (await session.execute(_ADDRESSEE, {"id": patient_id})).one_or_none()
    return None if row is None else Addressee(*row)


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


@dataclass(frozen=True, slots=True)
class NotificationFilter:
    """Each given field narrows the search. `state` is a stored state; times are
    half-open ranges, `*_from` included and `*_until` excluded."""

    state: str | None = None
    purpose: str | None = None
    channel: str | None = None
    patient_id: str | None = None
    staff_id: str | None = None
    # Where it came from: an event's trigger rules, a broadcast to a group.
    event_id: str | None = None
    group_name: str | None = None
    created_from: datetime | None = None
    created_until: datetime | None = None
    due_from: datetime | None = None
    due_until: datetime | None = None


async def search(
    session: AsyncSession,
    where: NotificationFilter,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> Sequence[Notification]:
    """Notifications matching `where`, newest first, keyset-paginated on (created_at, id)."""
    return (await session.scalars(search_query(where, limit=limit, before=before))).all()


def search_query(
    where: NotificationFilter, *, limit: int, before: tuple[datetime, uuid.UUID] | None
) -> Select[Notification]:
    """The statement of `search`.

    Read along ix_notifications_created (or ..._state_created, ..._patient_created,
    ..._staff_created, ..._group_created, ..._group_moved for a group's state other than
    `scheduled`; an event's few along uq_notifications_event_rule); a
    channel is an attempt over it, looked up per candidate by its notification's index.
    """
    query = select(Notification)
    if where.state is not None:
        query = query.where(Notification.state == where.state)
    if where.purpose is not None:
        query = query.where(Notification.purpose == where.purpose)
    if where.patient_id is not None:
        query = query.where(Notification.patient_id == where.patient_id)
    if where.staff_id is not None:
        query = query.where(Notification.staff_id == where.staff_id)
    if where.event_id is not None:
        query = query.where(Notification.event_id == where.event_id)
    if where.group_name is not None:
        query = query.where(Notification.group_name == where.group_name)
        if where.state is not None and where.state != "scheduled":
            # Said again as a constant (not a parameter): what lets the generic plan of
            # this prepared statement use ix_notifications_group_moved, whose predicate
            # it must prove whatever the state asked.
            query = query.where(text("notifications.state <> 'scheduled'"))
    if where.created_from is not None:
        query = query.where(Notification.created_at >= where.created_from)
    if where.created_until is not None:
        query = query.where(Notification.created_at < where.created_until)
    if where.due_from is not None:
        query = query.where(Notification.due_at >= where.due_from)
    if where.due_until is not None:
        query = query.where(Notification.due_at < where.due_until)
    if where.channel is not None:
        query = query.where(
            select(DeliveryAttempt.id)
            .where(
                DeliveryAttempt.notification_id == Notification.id,
                DeliveryAttempt.channel == where.channel,
            )
            .exists()
        )
    if before is not None:
        query = query.where(tuple_(Notification.created_at, Notification.id) < tuple_(*before))
    return query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit)
