"""Groups: who a broadcast goes to. A static list is kept in group_members (patients)
and group_staff_members (staff); a filter is kept as given and evaluated over patients
when a broadcast starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidInput, NotFound
from app.groups import repository as group_repository
from app.groups.schemas import PatientGroupIn
from app.models import Group


def today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True, slots=True)
class GroupCounts:
    group: Group
    # Patients in it now, and (a static group) staff members.
    patients: int
    staff: int


async def put_group(session: AsyncSession, name: str, body: PatientGroupIn) -> GroupCounts:
    """Create or replace group `name`; returns it with its member counts. A static list
    replaces the previous members, patients and staff. Raises InvalidInput naming
    unknown patients or staff. Flushes."""
    if body.members is not None:
        await _check_patients(session, "members", body.members)
    if body.staff is not None:
        await _check_staff(session, "staff", body.staff)
    filter_ = (
        None if body.filter is None else body.filter.model_dump(mode="json", exclude_none=True)
    )
    group = await group_repository.upsert(session, name, filter_)
    await group_repository.remove_members(session, name)
    await group_repository.remove_staff(session, name)
    if body.members is not None:
        await group_repository.add_members(session, name, set(body.members))
    if body.staff is not None:
        await group_repository.add_staff(session, name, set(body.staff))
    return await counts(session, group)


async def get_group(session: AsyncSession, name: str) -> Group:
    group = await group_repository.get(session, name)
    if group is None:
        raise NotFound(f"no group '{name}'")
    return group


async def counts(session: AsyncSession, group: Group) -> GroupCounts:
    patients = await group_repository.count_members(session, group, today())
    return GroupCounts(group, patients, await group_repository.count_staff(session, group))


async def count(session: AsyncSession, group: Group) -> int:
    """Everyone a broadcast to the group would reach now: patients and staff."""
    found = await counts(session, group)
    return found.patients + found.staff


async def change_members(
    session: AsyncSession,
    name: str,
    patient_ids: Sequence[str],
    staff_ids: Sequence[str] = (),
    *,
    add: bool,
) -> GroupCounts:
    """Add or remove a batch of members (patients and staff) of a static group. Raises
    NotFound, or InvalidInput for a filter group or unknown patients or staff (adding).
    Flushes."""
    group = await get_group(session, name)
    if group.filter is not None:
        raise InvalidInput(
            f"group '{name}' is a filter: its members follow from the patients' attributes",
            details=[{"field": "patient_ids", "message": "not a static group"}],
        )
    if add:
        await _check_patients(session, "patient_ids", patient_ids)
        await _check_staff(session, "staff_ids", staff_ids)
        await group_repository.add_members(session, name, set(patient_ids))
        await group_repository.add_staff(session, name, set(staff_ids))
    else:
        if patient_ids:
            await group_repository.remove_members(session, name, set(patient_ids))
        if staff_ids:
            await group_repository.remove_staff(session, name, set(staff_ids))
    return await counts(session, group)


async def _check_staff(session: AsyncSession, field: str, staff_ids: Sequence[str]) -> None:
    if not staff_ids:
        return
    unknown = await group_repository.unknown_staff(session, staff_ids)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise InvalidInput(
            f"{len(unknown)} unknown staff: {shown}",
            details=[{"field": field, "message": f"no staff user '{s}'"} for s in unknown[:100]],
        )


async def _check_patients(session: AsyncSession, field: str, patient_ids: Sequence[str]) -> None:
    unknown = await group_repository.unknown_patients(session, patient_ids)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise InvalidInput(
            f"{len(unknown)} unknown patients: {shown}",
            details=[{"field": field, "message": f"no patient '{p}'"} for p in unknown[:100]],
        )
