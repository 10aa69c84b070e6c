"""HTTP for staff users: the clinic system's copy of each, with the address they are
reached at."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from app.db.session import DbSession
from app.notifications import history
from app.notifications.history import HistoryFilter
from app.notifications.schemas import NotificationPage
from app.pagination import Cursor, Limit
from app.staff import service as staff_service
from app.staff.schemas import STAFF_ID_PATTERN, StaffIn, StaffOut

router = APIRouter(prefix="/staff", tags=["staff"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}

StaffIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=STAFF_ID_PATTERN,
        description="The clinic system's id: 1-64 letters, digits and `._:@~+=-`",
        examples=["s-1"],
    ),
]


@router.put(
    "/{staff_id}",
    summary="Create or replace a staff user",
    description="Staff are reached by email only. 200 when an existing staff user was "
    "replaced, 201 when one was created.",
    responses={
        **_ERRORS,
        200: {"description": "Replaced an existing staff user"},
        201: {"model": StaffOut, "description": "Created a new staff user"},
        422: {"description": "A malformed body or an invalid email address"},
    },
)
async def upsert_staff(
    staff_id: StaffIdPath, body: StaffIn, response: Response, session: DbSession
) -> StaffOut:
    stored = await staff_service.put_staff(session, staff_id, body)
    response.status_code = status.HTTP_201_CREATED if stored.created else status.HTTP_200_OK
    return StaffOut.from_model(stored.staff)


@router.get(
    "/{staff_id}",
    summary="One staff user",
    responses={**_ERRORS, 404: {"description": "No such staff user"}},
)
async def get_staff(staff_id: StaffIdPath, session: DbSession) -> StaffOut:
    return StaffOut.from_model(await staff_service.get_staff(session, staff_id))


@router.get(
    "/{staff_id}/messages",
    summary="The messages to a staff user, newest first",
    description="Sent and scheduled (trigger rules with `recipient: staff`, broadcasts "
    "to groups they are in), each with its state, channel (email) and attempts; filter "
    "by state, purpose and creation time; a page at a time to the very first.",
    responses={
        **_ERRORS,
        404: {"description": "No such staff user"},
        422: {"description": "A bad filter, limit or cursor"},
    },
)
async def list_staff_messages(
    staff_id: StaffIdPath,
    where: HistoryFilter,
    session: DbSession,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    await staff_service.get_staff(session, staff_id)
    return await history.page(
        session, history.of_staff(where, staff_id), limit=limit, cursor=cursor
    )
