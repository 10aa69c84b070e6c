"""Patient rules: normalising a clinic system's record, storing it, reading it back.

Phone numbers are stored in E.164 and a patient's messages go to the first mobile.
A patient without a time zone gets the one that follows from the country (or numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination, phone
from app.errors import AppError, InvalidInput, NotFound, field_error, validation_details
from app.models import ImoAuthorization, Patient
from app.notifications import service as notification_service
from app.notifications.repository import NotificationFilter
from app.patients import repository as patient_repository
from app.patients.repository import PatientRecord
from app.patients.schemas import PatientBatchItemIn, PatientIn


class MalformedItem(InvalidInput):
    """A batch item whose shape is wrong: what a malformed single PUT body is."""

    code = "invalid_request"


class DuplicateId(InvalidInput):
    code = "duplicate_id"


@dataclass(frozen=True, slots=True)
class StoredPatient:
    patient: Patient
    authorization: ImoAuthorization | None
    created: bool


@dataclass(frozen=True, slots=True)
class BatchItemOutcome:
    """One item of a batch: either stored (`patient` set) or refused (`error` set)."""

    index: int
    id: str | None
    status: Literal["created", "updated", "error"]
    patient: Patient | None = None
    authorization: ImoAuthorization | None = None
    error: AppError | None = None


@dataclass(frozen=True, slots=True)
class PatientPage:
    patients: list[tuple[Patient, ImoAuthorization | None]]
    next_cursor: str | None


async def get_patient(session: AsyncSession, patient_id: str) -> Patient:
    """The patient; raises NotFound."""
    patient = await patient_repository.get(session, patient_id)
    if patient is None:
        raise NotFound(f"no patient '{patient_id}'")
    return patient


async def get_patient_with_authorization(
    session: AsyncSession, patient_id: str
) -> tuple[Patient, ImoAuthorization | None]:
    """The patient and its Imo authorisation (None before the first invitation).

    Raises NotFound.
    """
    found = await patient_repository.with_authorizations(session, [patient_id])
    if patient_id not in found:
        raise NotFound(f"no patient '{patient_id}'")
    return found[patient_id]


def to_record(patient_id: str, data: PatientIn) -> PatientRecord:
    """The row to store for `data`. Raises InvalidInput naming every bad field at once:
    `phone_numbers[i].number` for an invalid number, `time_zone` when none was given and
    none follows from the country or numbers.
    """
    details: list[dict[str, Any]] = []
    numbers: list[dict[str, Any]] = []
    for position, given in enumerate(data.phone_numbers):
        try:
            numbers.append(
                {"number": phone.to_e164(given.number, data.country), "type": given.type}
            )
        except phone.InvalidPhoneNumber as exc:
            details.append({"field": f"phone_numbers[{position}].number", "message": str(exc)})
    time_zone = data.time_zone
    if time_zone is None and not details:
        time_zone = phone.default_time_zone(data.country, [n["number"] for n in numbers])
        if time_zone is None:
            details.append(
                {
                    "field": "time_zone",
                    "message": f"required: country '{data.country}' spans several time "
                    "zones and the numbers do not tell which",
                }
            )
    if details:
        fields = ", ".join(detail["field"] for detail in details)
        raise InvalidInput(f"invalid patient: {fields}", details=details)
    assert time_zone is not None
    return PatientRecord(
        id=patient_id,
        full_name=data.full_name,
        phone_numbers=numbers,
        mobile_e164=next((n["number"] for n in numbers if n["type"] == "mobile"), None),
        country=data.country,
        locale=data.locale,
        time_zone=time_zone,
        facility_id=data.facility.id if data.facility else None,
        facility_name=data.facility.name if data.facility else None,
        reminder_consent=data.reminder_consent,
        email=data.email,
        attributes=data.attributes,
        tags=sorted(set(data.tags)),
    )


async def put_patient(session: AsyncSession, patient_id: str, data: PatientIn) -> StoredPatient:
    """Create or replace one patient. Idempotent; raises InvalidInput. Flushes."""
    record = to_record(patient_id, data)
    created = await patient_repository.upsert_many(session, [record])
    patient, authorization = (await patient_repository.with_authorizations(session, [patient_id]))[
        patient_id
    ]
    return StoredPatient(patient, authorization, created[patient_id])


def _malformed(exc: ValidationError) -> MalformedItem:
    # The same answer as a malformed single PUT body gets from the error handler.
    details = validation_details(exc.errors())
    fields = ", ".join(sorted({d["field"] for d in details if d["field"]}))
    return MalformedItem(
        f"invalid request: {fields}" if fields else "invalid request", details=details
    )


def _readable_id(raw_id: object) -> str | None:
    """What of an item's id may be quoted back in its outcome: a string (cut to 64
    characters) that JSON can carry; not a lone surrogate, which no answer can encode."""
    if not isinstance(raw_id, str):
        return None
    item_id = raw_id[:64]
    try:
        item_id.encode()
    except UnicodeEncodeError:
        return None
    return item_id


async def put_patients(session: AsyncSession, items: Sequence[object]) -> list[BatchItemOutcome]:
    """Create or replace many patients: one outcome per item, in the items' order.

    Each item is checked on its own, so a bad one is refused without touching the others.
    The valid ones are written with one statement and read back with one query. An id
    that occurs more than once: its last valid item is stored, the earlier ones answer
    `duplicate_id`. Flushes.
    """
    outcomes: dict[int, BatchItemOutcome] = {}
    records: dict[str, tuple[int, PatientRecord]] = {}
    for index, raw in enumerate(items):
        item_id = _readable_id(raw.get("id") if isinstance(raw, dict) else None)
        try:
            item = PatientBatchItemIn.model_validate(raw)
            record = to_record(item.id, item)
        except ValidationError as exc:
            outcomes[index] = BatchItemOutcome(index, item_id, "error", error=_malformed(exc))
            continue
        except AppError as exc:
            outcomes[index] = BatchItemOutcome(index, item_id, "error", error=exc)
            continue
        if record.id in records:
            earlier = records[record.id][0]
            message = f"id '{record.id}' occurs again at index {index}, which is stored instead"
            error = DuplicateId(message, details=[{"field": "id", "message": message}])
            outcomes[earlier] = BatchItemOutcome(earlier, record.id, "error", error=error)
        records[record.id] = (index, record)

    created = await patient_repository.upsert_many(session, [r for _, r in records.values()])
    stored = await patient_repository.with_authorizations(session, list(records))
    for patient_id, (index, _) in records.items():
        patient, authorization = stored[patient_id]
        status: Literal["created", "updated"] = "created" if created[patient_id] else "updated"
        outcomes[index] = BatchItemOutcome(index, patient_id, status, patient, authorization)
    return [outcomes[index] for index in range(len(items))]


async def search(
    session: AsyncSession,
    *,
    number: str | None,
    country: str | None,
    facility_id: str | None,
    name_prefix: str | None,
    limit: int,
    cursor: str | None,
) -> PatientPage:
    """Patients by any of their numbers (in any format: national ones are read with
    `country`), facility and the start of their name (case-insensitive), in id order.

    Raises InvalidInput naming `phone` (not a number, or national without `country`) or
    `cursor`.
    """
    after = pagination.decode(cursor, str)[0] if cursor else None
    e164 = None
    if number is not None:
        try:
            e164 = phone.to_e164(number, country or phone.INTERNATIONAL_ONLY)
        except phone.InvalidPhoneNumber as exc:
            hint = "" if country else " (give `country` to search by a national number)"
            raise field_error("phone", f"{exc}{hint}") from exc
    where = patient_repository.PatientFilter(
        phone=e164,
        facility_id=facility_id,
        name_prefix=name_prefix.lower() if name_prefix else None,
    )
    rows = await patient_repository.search(session, where, limit=limit + 1, after=after)
    page, next_cursor = pagination.split(rows, limit, lambda row: (row[0].id,))
    return PatientPage(page, next_cursor)


async def notifications_of(
    session: AsyncSession,
    patient_id: str,
    where: NotificationFilter | None = None,
    *,
    limit: int,
    cursor: str | None,
) -> notification_service.NotificationPage:
    """A page of the patient's notifications (those `where` selects: all by default),
    newest first, with their attempts.

    Raises NotFound for an unknown patient and InvalidInput for a bad cursor.
    """
    if not await patient_repository.exists(session, patient_id):
        raise NotFound(f"no patient '{patient_id}'")
    where = replace(where or NotificationFilter(), patient_id=patient_id)
    return await notification_service.search(session, where, limit=limit, cursor=cursor)
