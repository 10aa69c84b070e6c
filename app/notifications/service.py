"""Notification rules: scheduling (with idempotency), reading, cancel, mute, unmute."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta

import orjson
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.config import Settings
from app.consent.rules import OPTED_OUT, opted_out_everywhere
from app.errors import Conflict, InvalidInput, NotFound, field_error
from app.ids import time_ordered_uuid
from app.models import Appointment, DeliveryAttempt, Notification, Patient, StaffMember
from app.notifications import repository as notification_repository
from app.notifications.repository import Addressee, NotificationFilter
from app.notifications.schemas import NotificationIn
from app.notifications.window import MessagingWindow, zone
from app.observability import NOTIFICATIONS_SCHEDULED
from app.states import (
    ACCEPTED_STATES,
    EVENT_SOURCES,
    EVENT_TARGET,
    HELD_STATE,
    NotificationEvent,
    NotificationState,
)
from app.templates import service as template_service
from app.webhooks import service as webhook_service

S = NotificationState


def window_of(settings: Settings) -> MessagingWindow:
    return MessagingWindow(settings.messaging_window_start, settings.messaging_window_end)


def request_hash(request: BaseModel) -> str:
    """SHA-256 of a request body, to refuse an Idempotency-Key reused with another.

    A field added to a body later (NotificationIn's `staff_id`) counts only when given:
    a retry of a request stored before it was added still matches its first hash."""
    body = request.model_dump(mode="json")
    for name in getattr(request, "HASHED_ONLY_WHEN_SET", ()):
        if body.get(name) is None:
            body.pop(name, None)
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def due_moment(
    request: NotificationIn, time_zone: str, window: MessagingWindow, now: datetime
) -> datetime:
    """When the notification falls due, inside the window of the recipient's time zone."""
    if request.remind_on is not None:
        moment = window.moment_on(request.remind_on, time_zone, now)
        if moment is None:
            raise field_error(
                "remind_on", f"the messaging window of {request.remind_on} has closed already"
            )
        return moment
    wanted = max(request.send_at, now) if request.send_at is not None else now
    return window.next_moment(wanted, time_zone)


def expiry_moment(
    settings: Settings,
    purpose: str,
    due_at: datetime,
    time_zone: str,
    appointment: Appointment | None,
) -> datetime:
    """When the notification stops being worth sending: `expiry_days(purpose)` after it
    falls due, and for one due before its appointment's day is over, when that day ends
    in the patient's time zone (a reminder must never arrive after the visit)."""
    expires_at = due_at + timedelta(days=settings.expiry_days(purpose))
    if appointment is not None:
        day_after = appointment.scheduled_date + timedelta(days=1)
        day_ends = datetime.combine(day_after, time(0), tzinfo=zone(time_zone))
        if due_at < day_ends:
            expires_at = min(expires_at, day_ends)
    return expires_at


def standard_variables(patient: Patient | Addressee) -> dict[str, str]:
    """Variables every template may use without the caller sending them."""
    variables = {"patient_name": patient.full_name}
    if patient.facility_name:
        variables["facility_name"] = patient.facility_name
    return variables


async def schedule(
    session: AsyncSession,
    request: NotificationIn,
    settings: Settings,
    *,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> tuple[Notification, bool]:
    """Schedule one message; returns it and whether it was created now.

    A repeated `idempotency_key` of the same API key (`api_key_id`) with the same body
    returns the first notification; with another body it is an InvalidInput. Another
    key's `idempotency_key` never matches: clients cannot see each other's. Raises
    InvalidInput for an unknown patient or staff user, template or missing variable.
    Flushes.
    """
    digest = request_hash(request)
    if idempotency_key is not None:
        existing = await _replay(session, api_key_id, idempotency_key, digest)
        if existing is not None:
            return existing, False

    now = now or datetime.now(UTC)
    recipient = await _recipient_of(session, request, settings)
    given = {k: str(v) for k, v in request.variables.items()}
    variables = {**recipient.standard_variables, **given}
    rendered = await template_service.render(session, request.template, recipient.locale, variables)
    due_at = due_moment(request, recipient.time_zone, window_of(settings), now)
    appointment = (
        await session.get(Appointment, request.appointment_id)
        if request.appointment_id is not None
        else None
    )
    if appointment is not None and appointment.patient_id != request.patient_id:
        appointment = None

    # A patient who opted out of every channel is refused now, as the dispatcher would.
    opted_out = opted_out_everywhere(recipient.opted_out_channels)
    columns = dict(
        id=time_ordered_uuid(),
        patient_id=request.patient_id,
        staff_id=request.staff_id,
        purpose=request.purpose,
        template_key=rendered.key,
        locale=rendered.locale,
        variables=request.variables,
        title=rendered.title,
        body=rendered.body,
        appointment_id=request.appointment_id,
        remind_on=request.remind_on,
        send_at=request.send_at,
        state=S.DENIED if opted_out else S.SCHEDULED,
        failure_reason=OPTED_OUT if opted_out else None,
        due_at=due_at,
        expires_at=expiry_moment(
            settings, request.purpose, due_at, recipient.time_zone, appointment
        ),
        channel_index=0,
        retry_count=0,
        api_key_id=api_key_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    notification = await notification_repository.insert_unless_key_taken(session, columns)
    if notification is None:
        # Two requests with one key racing: the unique index picked the other one (only
        # a keyed row can meet it), committed by now: the insert waited for it.
        assert idempotency_key is not None
        existing = await _replay(session, api_key_id, idempotency_key, digest)
        if existing is None:
            raise AssertionError("an idempotency key conflicted with no notification")
        return existing, False
    if opted_out:
        await webhook_service.notifications_changed(session, [notification.id])
    NOTIFICATIONS_SCHEDULED.inc()
    return notification, True


@dataclass(frozen=True, slots=True)
class _Recipient:
    """Who a scheduled message goes to, and what scheduling it needs of them."""

    locale: str
    time_zone: str
    standard_variables: dict[str, str]
    # A patient's; a staff user has none (reached by email, app/delivery/policy.py).
    opted_out_channels: list[str]


async def _recipient_of(
    session: AsyncSession, request: NotificationIn, settings: Settings
) -> _Recipient:
    """The request's patient, or its staff user (their locale, STAFF_TIME_ZONE: staff
    have no time zone of their own; `staff_name` filled). Raises InvalidInput naming
    an unknown one."""
    if request.staff_id is not None:
        staff = await session.get(StaffMember, request.staff_id)
        if staff is None:
            raise field_error("staff_id", f"no staff user '{request.staff_id}'")
        return _Recipient(staff.locale, settings.staff_time_zone, {"staff_name": staff.name}, [])
    assert request.patient_id is not None  # one of the two: NotificationIn's rule
    patient = await notification_repository.addressee(session, request.patient_id)
    if patient is None:
        raise field_error("patient_id", f"no patient '{request.patient_id}'")
    return _Recipient(
        patient.locale, patient.time_zone, standard_variables(patient), patient.opted_out_channels
    )


async def _replay(
    session: AsyncSession, api_key_id: int | None, key: str, digest: str
) -> Notification | None:
    existing = await notification_repository.find_by_idempotency_key(session, api_key_id, key)
    if existing is not None and existing.request_hash != digest:
        raise InvalidInput(
            "this Idempotency-Key was used with a different request body",
            details=[{"field": "Idempotency-Key", "message": "reused with another body"}],
        )
    return existing


@dataclass(frozen=True, slots=True)
class NotificationPage:
    notifications: Sequence[Notification]
    attempts: dict[uuid.UUID, list[DeliveryAttempt]]
    next_cursor: str | None


async def search(
    session: AsyncSession,
    where: NotificationFilter,
    *,
    limit: int,
    cursor: str | None,
    now: datetime | None = None,
) -> NotificationPage:
    """A page of the notifications matching `where`, newest first, with their attempts.

    `where.state` is a state as the API reports it: `pending` is a stored `scheduled`
    that is due, `scheduled` one that is not yet. Raises InvalidInput for a bad cursor.
    """
    before = pagination.decode(cursor, datetime, uuid.UUID) if cursor else None
    if where.state in (NotificationState.PENDING, NotificationState.SCHEDULED):
        # Timestamps are whole microseconds: "due by now" is "due before now + 1 µs".
        due_now = (now or datetime.now(UTC)) + timedelta(microseconds=1)
        if where.state is NotificationState.PENDING:
            until = due_now if where.due_until is None else min(where.due_until, due_now)
            where = replace(where, due_until=until)
        else:
            start = due_now if where.due_from is None else max(where.due_from, due_now)
            where = replace(where, due_from=start)
        where = replace(where, state=NotificationState.SCHEDULED)
    rows = await notification_repository.search(session, where, limit=limit + 1, before=before)
    page, next_cursor = pagination.split(rows, limit, lambda n: (n.created_at, n.id))
    attempts = await notification_repository.attempts_of(session, [n.id for n in page])
    return NotificationPage(page, attempts, next_cursor)


async def get_with_attempts(
    session: AsyncSession, notification_id: uuid.UUID
) -> tuple[Notification, list[DeliveryAttempt]]:
    notification = await notification_repository.get(session, notification_id)
    if notification is None:
        raise NotFound(f"no notification '{notification_id}'")
    attempts = await notification_repository.attempts_of(session, [notification_id])
    return notification, attempts.get(notification_id, [])


async def _act(
    session: AsyncSession, notification_id: uuid.UUID, event: NotificationEvent, **values: object
) -> Notification:
    """Move a notification that has not been sent, as the notification table allows
    `event`; a repeat of the same act is a no-op. Raises NotFound, or Conflict naming
    the state that does not allow it."""
    to_state = EVENT_TARGET[event]
    action = event.value
    moved = await notification_repository.transition(
        session, notification_id, EVENT_SOURCES[event], to_state, **values
    )
    if moved is not None:
        return moved
    current = await notification_repository.get(session, notification_id)
    if current is None:
        raise NotFound(f"no notification '{notification_id}'")
    if current.state == to_state:
        return current
    if current.state == HELD_STATE:
        raise Conflict(f"cannot {action}: the notification is being sent right now")
    if current.state in ACCEPTED_STATES:
        raise Conflict(f"cannot {action}: the notification was already sent ({current.state})")
    raise Conflict(f"cannot {action}: the notification is {current.state}")


async def cancel(session: AsyncSession, notification_id: uuid.UUID) -> Notification:
    return await _act(
        session, notification_id, NotificationEvent.CANCEL, failure_reason="cancelled"
    )


async def mute(session: AsyncSession, notification_id: uuid.UUID) -> Notification:
    return await _act(session, notification_id, NotificationEvent.MUTE)


async def unmute(session: AsyncSession, notification_id: uuid.UUID) -> Notification:
    return await _act(session, notification_id, NotificationEvent.UNMUTE)
