"""SQL for patients."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    String,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    null,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ImoAuthorization, Patient


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """A patient's columns, normalised and ready to store."""

    id: str
    full_name: str
    phone_numbers: list[dict[str, Any]]
    mobile_e164: str | None
    country: str
    locale: str
    time_zone: str
    facility_id: str | None
    facility_name: str | None
    reminder_consent: str
    email: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


_COLUMNS = tuple(f.name for f in fields(PatientRecord))
# Each column travels as one array parameter: one statement, compiled once, for any
# number of rows. Phone numbers, attributes and tags go as JSON text, cast back in the
# SELECT (tags to text[]).
_JSON_COLUMNS = ("phone_numbers", "attributes", "tags")
_ROWS = (
    func.unnest(
        *(
            bindparam(name, type_=ARRAY(Text if name in _JSON_COLUMNS else String))
            for name in _COLUMNS
        )
    )
    .table_valued(*(column(name, Text if name in _JSON_COLUMNS else String) for name in _COLUMNS))
    .render_derived(name="given")
)


def _stored(name: str) -> ColumnElement[Any]:
    given = _ROWS.c[name]
    if name == "tags":
        elements = select(func.jsonb_array_elements_text(cast(given, JSONB))).scalar_subquery()
        return func.array(elements, type_=ARRAY(Text))
    return cast(given, JSONB) if name in _JSON_COLUMNS else given


# The Core table, not the entity: with a parameter dict the ORM would run a bulk insert.
_PATIENTS = Patient.metadata.tables[Patient.__tablename__]
_INSERT = insert(_PATIENTS).from_select(
    list(_COLUMNS),
    select(*(_stored(name) for name in _COLUMNS)),
)
_UPSERT = _INSERT.on_conflict_do_update(
    index_elements=["id"],
    set_={
        **{name: _INSERT.excluded[name] for name in _COLUMNS if name != "id"},
        # WhatsApp's "no account" was about the old number.
        "whatsapp_no_account_at": case(
            (
                _PATIENTS.c.mobile_e164.is_distinct_from(_INSERT.excluded.mobile_e164),
                null(),
            ),
            else_=_PATIENTS.c.whatsapp_no_account_at,
        ),
        "updated_at": func.now(),
    },
).returning(
    _PATIENTS.c.id,
    # xmax is 0 on a freshly inserted row version, and set on one that an update made.
    literal_column("(xmax = 0)", Boolean).label("created"),
)


async def upsert_many(session: AsyncSession, records: Sequence[PatientRecord]) -> dict[str, bool]:
    """Insert or replace every record with one statement; id -> True if it was created.

    The ids must be distinct: PostgreSQL refuses to update one row twice in a statement.
    """
    if not records:
        return {}
    parameters: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
    # In id order, so that two batches sharing ids lock their rows in the same order
    # instead of deadlocking.
    for record in sorted(records, key=lambda record: record.id):
        for name, value in asdict(record).items():
            parameters[name].append(json.dumps(value) if name in _JSON_COLUMNS else value)
    rows = await session.execute(_UPSERT, parameters)
    return {patient_id: created for patient_id, created in rows}


async def with_authorizations(
    session: AsyncSession, patient_ids: Collection[str]
) -> dict[str, tuple[Patient, ImoAuthorization | None]]:
    """These patients with their Imo authorisation, in one query; unknown ids are absent."""
    if not patient_ids:
        return {}
    rows = await session.execute(
        select(Patient, ImoAuthorization)
        .outerjoin(ImoAuthorization, ImoAuthorization.patient_id == Patient.id)
        .where(Patient.id.in_(patient_ids)),
        # A PUT may replace a patient this session has already loaded.
        execution_options={"populate_existing": True},
    )
    return {patient.id: (patient, authorization) for patient, authorization in rows}


@dataclass(frozen=True, slots=True)
class PatientFilter:
    """Each given field narrows the search; `phone` is E.164, `name_prefix` lower-case."""

    phone: str | None = None
    facility_id: str | None = None
    name_prefix: str | None = None


async def search(
    session: AsyncSession, where: PatientFilter, *, limit: int, after: str | None
) -> Sequence[tuple[Patient, ImoAuthorization | None]]:
    """Patients matching `where` in id order after `after` (keyset), with their Imo
    authorisation. Each filter has an index: phone numbers (GIN), facility, lower-case
    name (prefix)."""
    query = select(Patient, ImoAuthorization).outerjoin(
        ImoAuthorization, ImoAuthorization.patient_id == Patient.id
    )
    if where.phone is not None:
        query = query.where(Patient.phone_numbers.contains([{"number": where.phone}]))
    if where.facility_id is not None:
        query = query.where(Patient.facility_id == where.facility_id)
    if where.name_prefix is not None:
        # One bound pattern (not `param || '%'`): the planner sees its fixed prefix.
        escaped = re.sub(r"([\\%_])", r"\\\1", where.name_prefix)
        query = query.where(func.lower(Patient.full_name).like(f"{escaped}%", escape="\\"))
    if after is not None:
        query = query.where(Patient.id > after)
    rows = await session.execute(query.order_by(Patient.id).limit(limit))
    return [(patient, authorization) for patient, authorization in rows]


async def get(session: AsyncSession, patient_id: str) -> Patient | None:
    return await session.get(Patient, patient_id)


async def exists(session: AsyncSession, patient_id: str) -> bool:
    found = await session.scalar(select(Patient.id).where(Patient.id == patient_id))
    return found is not None
