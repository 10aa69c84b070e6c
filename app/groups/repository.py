"""SQL for groups: members, and a filter as a WHERE clause over patients."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from app.models import Group, GroupMember, Patient


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


def matches(filter_: dict[str, Any], today: date) -> ColumnElement[bool]:
    """The patients (table `patients`) a group filter selects."""
    clauses: list[ColumnElement[bool]] = []
    if filter_.get("facility_id"):
        clauses.append(Patient.facility_id.in_(filter_["facility_id"]))
    if filter_.get("country"):
        clauses.append(Patient.country.in_(filter_["country"]))
    if filter_.get("locale"):
        clauses.append(Patient.locale.in_(filter_["locale"]))
    if filter_.get("tags"):
        clauses.append(Patient.tags.contains(literal(filter_["tags"], ARRAY(Text))))
    if filter_.get("attributes"):
        clauses.append(Patient.attributes.contains(literal(filter_["attributes"], JSONB)))
    if filter_.get("age"):
        # ISO dates compare as text: no cast that a malformed birth_date could fail.
        birth_date = Patient.attributes["birth_date"].astext
        band = filter_["age"]
        if band.get("min") is not None:
            clauses.append(birth_date <= _years_before(today, band["min"]).isoformat())
        if band.get("max") is not None:
            clauses.append(birth_date > _years_before(today, band["max"] + 1).isoformat())
    return and_(true(), *clauses)


def _years_before(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


async def count_members(session: AsyncSession, group: Group, today: date) -> int:
    if group.filter is None:
        query = select(func.count()).where(GroupMember.group_name == group.name)
    else:
        query = select(func.count()).select_from(Patient).where(matches(group.filter, today))
    return int(await session.scalar(query) or 0)


async def sample_members(
    session: AsyncSession, group: Group, today: date, limit: int
) -> Sequence[Patient]:
    query = select(Patient).order_by(Patient.id).limit(limit)
    if group.filter is None:
        query = query.join(GroupMember, GroupMember.patient_id == Patient.id).where(
            GroupMember.group_name == group.name
        )
    else:
        query = query.where(matches(group.filter, today))
    return (await session.scalars(query)).all()
