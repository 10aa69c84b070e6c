"""HTTP for notifications: schedule, read, cancel, mute, unmute."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from app import idempotency
from app.channels.base import ChannelName
from app.db.session import DbSession
from app.idempotency import IdempotencyKey
from app.notifications import service as notification_service
from app.notifications.repository import NotificationFilter
from app.notifications.schemas import (
    PURPOSE_PATTERN,
    NotificationIn,
    NotificationOut,
    NotificationPage,
)
from app.pagination import Cursor, Limit
from app.states import NotificationState
from app.validation import BoundedDatetime

router = APIRouter(prefix="/notifications", tags=["notifications"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_ACT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"description": "No such notification"},
    409: {"description": "Already sent, or being sent"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Schedule one message to a patient or a staff user",
    description="`patient_id` or `staff_id`, one of them. A staff user is reached by "
    "email only, in their locale, inside the messaging window of `STAFF_TIME_ZONE`; "
    "templates may use `{staff_name}`.",
    responses={
        **_ERRORS,
        422: {
            "description": "Bad body (both or neither of patient_id and staff_id), unknown "
            "patient, staff user, template or variable"
        },
    },
)
async def schedule_notification(
    body: NotificationIn,
    request: Request,
    response: Response,
    session: DbSession,
    idempotency_key: IdempotencyKey = None,
) -> NotificationOut:
    notification, created = await notification_service.schedule(
        session,
        body,
        request.app.state.settings,
        api_key_id=request.state.api_key_id,
        idempotency_key=idempotency.checked(idempotency_key),
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
        return await _answer(session, notification.id)
    return NotificationOut.from_model(notification)


@router.get(
    "",
    summary="Find notifications by state, purpose, channel, patient, staff user or time",
    description="Every filter given narrows the search; none lists every notification. "
    "Newest first (by `created_at`), a page at a time. Time ranges include their `_from` "
    "and exclude their `_until`; `due_*` is the time the message is scheduled to go.",
    responses={**_ERRORS, 422: {"description": "A bad filter, limit or cursor"}},
)
async def list_notifications(
    session: DbSession,
    state: NotificationState | None = None,
    purpose: Annotated[str | None, Query(pattern=PURPOSE_PATTERN)] = None,
    channel: Annotated[
        ChannelName | None, Query(description="Notifications with an attempt over it")
    ] = None,
    patient_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    staff_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    created_from: BoundedDatetime | None = None,
    created_until: BoundedDatetime | None = None,
    due_from: BoundedDatetime | None = None,
    due_until: BoundedDatetime | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    where = NotificationFilter(
        state=state,
        purpose=purpose,
        channel=channel,
        patient_id=patient_id,
        staff_id=staff_id,
        created_from=created_from,
        created_until=created_until,
        due_from=due_from,
        due_until=due_until,
    )
    page = await notification_service.search(session, where, limit=limit, cursor=cursor)
    return NotificationPage.from_models(page.notifications, page.attempts, page.next_cursor)


@router.get(
    "/{notification_id}",
    summary="A notification with its state, text and every delivery attempt",
    responses={**_ERRORS, 404: {"description": "No such notification"}},
)
async def get_notification(notification_id: uuid.UUID, session: DbSession) -> NotificationOut:
    return await _answer(session, notification_id)


async def _answer(session: DbSession, notification_id: uuid.UUID) -> NotificationOut:
    notification, attempts = await notification_service.get_with_attempts(session, notification_id)
    return NotificationOut.from_model(notification, attempts)


@router.post(
    "/{notification_id}/cancel",
    summary="Stop a notification that has not been sent (state `cleared`)",
    responses=_ACT_ERRORS,
)
async def cancel_notification(notification_id: uuid.UUID, session: DbSession) -> NotificationOut:
    await notification_service.cancel(session, notification_id)
    return await _answer(session, notification_id)


@router.post(
    "/{notification_id}/mute",
    summary="Pause a notification that has not been sent (state `muted`)",
    responses=_ACT_ERRORS,
)
async def mute_notification(notification_id: uuid.UUID, session: DbSession) -> NotificationOut:
    await notification_service.mute(session, notification_id)
    return await _answer(session, notification_id)


@router.post(
    "/{notification_id}/unmute",
    summary="Resume a muted notification",
    responses=_ACT_ERRORS,
)
async def unmute_notification(notification_id: uuid.UUID, session: DbSession) -> NotificationOut:
    await notification_service.unmute(session, notification_id)
    return await _answer(session, notification_id)
