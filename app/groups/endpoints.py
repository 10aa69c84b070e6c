"""HTTP for groups."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.db.session import DbSession
from app.groups import service as group_service
from app.groups.schemas import (
    GROUP_NAME_PATTERN,
    MAX_MEMBERS_PER_REQUEST,
    GroupIn,
    GroupOut,
    MembersIn,
)

router = APIRouter(prefix="/groups", tags=["groups"])

GroupName = Annotated[str, Path(pattern=GROUP_NAME_PATTERN)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_SIZE = f"at most {MAX_MEMBERS_PER_REQUEST:,} patient ids a request"


@router.put(
    "/{name}",
    summary="Create or replace a group: a static member list or a filter over patients",
    description=f"`members` ({_SIZE}; add more with POST .../members) or `filter`. A "
    "filter is evaluated when a broadcast starts.",
    responses={**_ERRORS, 422: {"description": "Both or neither, unknown patients, too many"}},
)
async def put_group(name: GroupName, body: GroupIn, session: DbSession) -> GroupOut:
    group, members = await group_service.put_group(session, name, body)
    return GroupOut.from_model(group, members)


@router.get(
    "/{name}",
    summary="A group and how many patients are in it now",
    responses={**_ERRORS, 404: {"description": "No such group"}},
)
async def get_group(name: GroupName, session: DbSession) -> GroupOut:
    group = await group_service.get_group(session, name)
    return GroupOut.from_model(group, await group_service.count(session, group))


@router.post(
    "/{name}/members",
    summary=f"Add a batch of patients to a static group ({_SIZE})",
    responses={
        **_ERRORS,
        404: {"description": "No such group"},
        422: {"description": "A filter group, unknown patients, too many"},
    },
)
async def add_members(name: GroupName, body: MembersIn, session: DbSession) -> GroupOut:
    group, members = await group_service.change_members(session, name, body.patient_ids, add=True)
    return GroupOut.from_model(group, members)


@router.delete(
    "/{name}/members",
    summary=f"Remove a batch of patients from a static group ({_SIZE})",
    responses={
        **_ERRORS,
        404: {"description": "No such group"},
        422: {"description": "A filter group, too many"},
    },
)
async def remove_members(name: GroupName, body: MembersIn, session: DbSession) -> GroupOut:
    group, members = await group_service.change_members(session, name, body.patient_ids, add=False)
    return GroupOut.from_model(group, members)
