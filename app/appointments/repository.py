"""SQL for appointments and the notifications that are their reminders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Appointment, Notification
from app.states import EVENT_TARGET, UNSENT_STATES, NotificationEvent, sql_in


async def insert_if_absent(session: AsyncSession, values: dict[str, Any]) -> bool:
    """True if this inserted the appointment; False if it existed (or a concurrent
    request inserted it first)."""
    inserted = await session.scalar(
        insert(Appointment).values(**values).on_conflict_do_nothing().returning(Appointment.id)
    )
    return inserted is not None


async def get(session: AsyncSession, appointment_id: str) -> Appointment | None:
    return await session.get(Appointment, appointment_id)


async def get_for_update(session: AsyncSession, appointment_id: str) -> Appointment | None:
    """The appointment, row locked: requests about one appointment run one at a time."""
    return await session.scalar(
        select(Appointment)
        .where(Appointment.id == appointment_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def reminders_of(session: AsyncSession, appointment_id: str) -> Sequence[Notification]:
    return (
        await session.scalars(
            select(Notification)
            .where(Notification.appointment_id == appointment_id)
            .order_by(Notification.created_at, Notification.due_at, Notification.id)
            .execution_options(populate_existing=True)
        )
    ).all()


_CLEAR_UNSENT = text(
    f"""
    UPDATE notifications
    SET state = '{EVENT_TARGET[NotificationEvent.CANCEL]}', failure_reason = :reason,
        updated_at = now()
    WHERE appointment_id = :appointment_id AND {sql_in("state", UNSENT_STATES)}
    RETURNING id
    """  # noqa: S608 - constants only
)


async def clear_unsent(session: AsyncSession, appointment_id: str, reason: str) -> int:
    """Every reminder of the appointment not yet sent -> `cleared`, in one statement.

    One a worker has claimed (`sending`) is past stopping and is left alone: the row
    lock of the claim makes this wait for it, then skip it.
    """
    result = await session.execute(
        _CLEAR_UNSENT, {"appointment_id": appointment_id, "reason": reason}
    )
    return len(result.all())
