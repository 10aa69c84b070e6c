"""SQL for groups: members (patients and staff), and a filter as a WHERE clause over
patients."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import date
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Group, GroupMember, GroupStaffMember, Patient, StaffMember


async def upsert(session: AsyncSession, name: str, filter_: dict[str, Any] | None) -> Group:
    statement = (
        insert(Group)
        .values(name=name, filter=filter_)
        .on_conflict_do_update(
            index_elements=[Group.name], set_={"filter": filter_, "updated_at": func.now()}
        )
        .returning(Group)
    )
    return (await session.scalars(statement, execution_options={"populate_existing": True})).one()


async def get(session: AsyncSession, name: str) -> Group | None:
    return await session.get(Group, name)


async def unknown_patients(session: AsyncSession, patient_ids: Collection[str]) -> list[str]:
    known = set(await session.scalars(select(Patient.id).where(Patient.id.in_(list(patient_ids)))))
    return sorted(set(patient_ids) - known)


async def unknown_staff(session: AsyncSession, staff_ids: Collection[str]) -> list[str]:
    known = set(
        await session.scalars(select(StaffMember.id).where(StaffMember.id.in_(list(staff_ids))))
    )
    return sorted(set(staff_ids) - known)


async def add_staff(session: AsyncSession, name: str, staff_ids: Collection[str]) -> None:
    rows = [{"group_name": name, "staff_id": staff_id} for staff_id in sorted(staff_ids)]
    if rows:
        await session.execute(insert(GroupStaffMember).values(rows).on_conflict_do_nothing())


async def remove_staff(
    session: AsyncSession, name: str, staff_ids: Collection[str] | None = None
) -> None:
    """Remove these staff members, or every one when `staff_ids` is None."""
    statement = delete(GroupStaffMember).where(GroupStaffMember.group_name == name)
    if staff_ids is not None:
        statement = statement.where(GroupStaffMember.staff_id.in_(list(staff_ids)))
    await session.execute(statement)


async def count_staff(session: AsyncSession, group: Group) -> int:
    """A static group's staff members (a filter group has none: it filters patients)."""
    if group.filter is not None:
        return 0
    counted = select(func.count()).where(GroupStaffMember.group_name == group.name)
    return int(await session.scalar(counted) or 0)


async def add_members(session: AsyncSession, name: str, patient_ids: Collection[str]) -> None:
    rows = [{"group_name": name, "patient_id": patient_id} for patient_id in sorted(patient_ids)]
    if rows:
        await session.execute(insert(GroupMember).values(rows).on_conflict_do_nothing())


async def remove_members(
    session: AsyncSession, name: str, patient_ids: Collection[str] | None = None
) -> None:
    """Remove these members, or every member when `patient_ids` is None."""
    statement = delete(GroupMember).where(GroupMember.group_name == name)
    if patient_ids is not None:
        statement = statement.where(GroupMember.patient_id.in_(list(patient_ids)))
    await session.execute(statement)


def matches(filter_: dict[str, Any], today: date) -> tuple[str, dict[str, Any]]:
    """The SQL condition (over patients as `p`) of a group filter, and its parameters.

    Text, because the broadcast fan-out splices it into its one INSERT ... SELECT."""
    clauses = ["true"]
    params: dict[str, Any] = {}
    for field in ("facility_id", "country", "locale"):
        if filter_.get(field):
            clauses.append(f"p.{field} = ANY(:g_{field})")
            params[f"g_{field}"] = list(filter_[field])
    if filter_.get("tags"):
        clauses.append("p.tags @> CAST(:g_tags AS text[])")
        params["g_tags"] = list(filter_["tags"])
    if filter_.get("attributes"):
        clauses.append("p.attributes @> CAST(:g_attributes AS jsonb)")
        params["g_attributes"] = json.dumps(filter_["attributes"])
    band = filter_.get("age") or {}
    # ISO dates compare as text: no cast that a malformed birth_date could fail.
    if band.get("min") is not None:
        clauses.append("p.attributes ->> 'birth_date' <= :g_born_by")
        params["g_born_by"] = _years_before(today, band["min"]).isoformat()
    if band.get("max") is not None:
        clauses.append("p.attributes ->> 'birth_date' > :g_born_after")
        params["g_born_after"] = _years_before(today, band["max"] + 1).isoformat()
    return " AND ".join(clauses), params


def _years_before(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


async def count_members(session: AsyncSession, group: Group, today: date) -> int:
    if group.filter is None:
        members = select(func.count()).where(GroupMember.group_name == group.name)
        return int(await session.scalar(members) or 0)
    condition, params = matches(group.filter, today)
    counted = text(f"SELECT count(*) FROM patients p WHERE {condition}")  # noqa: S608
    return int(await session.scalar(counted, params) or 0)


async def sample_members(
    session: AsyncSession, group: Group, today: date, limit: int
) -> Sequence[Patient]:
    """The first `limit` members in id order."""
    if group.filter is None:
        query = (
            select(Patient)
            .join(GroupMember, GroupMember.patient_id == Patient.id)
            .where(GroupMember.group_name == group.name)
            .order_by(Patient.id)
            .limit(limit)
        )
        return (await session.scalars(query)).all()
    condition, params = matches(group.filter, today)
    # `condition` is matches()'s own SQL; its values are bind parameters.
    statement = text(f"SELECT p.* FROM patients p WHERE {condition} ORDER BY p.id LIMIT :limit")  # noqa: S608
    rows = await session.scalars(
        select(Patient).from_statement(statement), {**params, "limit": limit}
    )
    return rows.all()
