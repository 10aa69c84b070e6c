"""HTTP for groups."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.db.session import DbSession
from app.groups import service as group_service
from app.groups.schemas import (
    GROUP_NAME_PATTERN,
    MAX_MEMBERS_PER_REQUEST,
    MembersIn,
    PatientGroupIn,
    PatientGroupOut,
)
from app.notifications import history
from app.notifications.history import HistoryFilter
from app.notifications.schemas import NotificationPage
from app.pagination import Cursor, Limit

router = APIRouter(prefix="/groups", tags=["groups"])

GroupName = Annotated[str, Path(pattern=GROUP_NAME_PATTERN)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_SIZE = f"at most {MAX_MEMBERS_PER_REQUEST:,} patient and staff ids a request"


@router.put(
    "/{name}",
    summary="Create or replace a group: a static member list or a filter over patients",
    description=f"`members` (patients) and/or `staff` ({_SIZE}; add more with POST "
    ".../members), or `filter` (patients only). A filter is evaluated when a broadcast "
    "starts; staff members are reached by email.",
    responses={
        **_ERRORS,
        422: {"description": "Both kinds or neither, unknown patients or staff, too many"},
    },
)
async def upsert_group(
    name: GroupName, body: PatientGroupIn, session: DbSession
) -> PatientGroupOut:
    return _out(await group_service.put_group(session, name, body))


@router.get(
    "/{name}",
    summary="A group and how many patients and staff are in it now",
    responses={**_ERRORS, 404: {"description": "No such group"}},
)
async def get_group(name: GroupName, session: DbSession) -> PatientGroupOut:
    group = await group_service.get_group(session, name)
    return _out(await group_service.counts(session, group))


@router.post(
    "/{name}/members",
    summary=f"Add a batch of patients and/or staff to a static group ({_SIZE})",
    responses={
        **_ERRORS,
        404: {"description": "No such group"},
        422: {"description": "A filter group, unknown patients or staff, too many"},
    },
)
async def add_group_members(
    name: GroupName, body: MembersIn, session: DbSession
) -> PatientGroupOut:
    return _out(
        await group_service.change_members(
            session, name, body.patient_ids, body.staff_ids, add=True
        )
    )


@router.delete(
    "/{name}/members",
    summary=f"Remove a batch of patients and/or staff from a static group ({_SIZE})",
    responses={
        **_ERRORS,
        404: {"description": "No such group"},
        422: {"description": "A filter group, too many"},
    },
)
async def remove_group_members(
    name: GroupName, body: MembersIn, session: DbSession
) -> PatientGroupOut:
    return _out(
        await group_service.change_members(
            session, name, body.patient_ids, body.staff_ids, add=False
        )
    )


@router.get(
    "/{name}/messages",
    summary="The messages broadcast to the group, newest first",
    description="Sent and scheduled, of every broadcast to it, each with its state and "
    "channel; filter by state, purpose and creation time; a page at a time to the very "
    "first.",
    responses={
        **_ERRORS,
        404: {"description": "No such group"},
        422: {"description": "A bad filter, limit or cursor"},
    },
)
async def list_group_messages(
    name: GroupName,
    where: HistoryFilter,
    session: DbSession,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    await group_service.get_group(session, name)
    return await history.page(session, history.of_group(where, name), limit=limit, cursor=cursor)


def _out(found: group_service.GroupCounts) -> PatientGroupOut:
    return PatientGroupOut.from_model(found.group, found.patients, found.staff)
