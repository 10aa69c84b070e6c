"""Groups: who a broadcast goes to. A static list is kept in group_members; a filter is
kept as given and evaluated over patients when a broadcast starts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidInput, NotFound
from app.groups import repository as group_repository
from app.groups.schemas import PatientGroupIn
from app.models import Group


def today() -> date:
    return datetime.now(UTC).date()


async def put_group(session: AsyncSession, name: str, body: PatientGroupIn) -> tuple[Group, int]:
    """Create or replace group `name`; returns it with its member count. A static list
    replaces the previous members. Raises InvalidInput naming unknown patients. Flushes."""
    if body.members is not None:
        await _check_patients(session, "members", body.members)
    filter_ = (
        None if body.filter is None else body.filter.model_dump(mode="json", exclude_none=True)
    )
    group = await group_repository.upsert(session, name, filter_)
    await group_repository.remove_members(session, name)
    if body.members is not None:
        await group_repository.add_members(session, name, set(body.members))
    return group, await group_repository.count_members(session, group, today())


async def get_group(session: AsyncSession, name: str) -> Group:
    group = await group_repository.get(session, name)
    if group is None:
        raise NotFound(f"no group '{name}'")
    return group


async def count(session: AsyncSession, group: Group) -> int:
    return await group_repository.count_members(session, group, today())


async def change_members(
    session: AsyncSession, name: str, patient_ids: Sequence[str], *, add: bool
) -> tuple[Group, int]:
    """Add or remove a batch of members of a static group. Raises NotFound, or
    InvalidInput for a filter group or unknown patients (adding). Flushes."""
    group = await get_group(session, name)
    if group.filter is not None:
        raise InvalidInput(
            f"group '{name}' is a filter: its members follow from the patients' attributes",
            details=[{"field": "patient_ids", "message": "not a static group"}],
        )
    if add:
        await _check_patients(session, "patient_ids", patient_ids)
        await group_repository.add_members(session, name, set(patient_ids))
    else:
        await group_repository.remove_members(session, name, set(patient_ids))
    return group, await group_repository.count_members(session, group, today())


async def _check_patients(session: AsyncSession, field: str, patient_ids: Sequence[str]) -> None:
    unknown = await group_repository.unknown_patients(session, patient_ids)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise InvalidInput(
            f"{len(unknown)} unknown patients: {shown}",
            details=[{"field": field, "message": f"no patient '{p}'"} for p in unknown[:100]],
        )
