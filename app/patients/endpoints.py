"""HTTP for patients: the clinic system's copy of each contact record, and its messages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from app.db.session import DbSession
from app.errors import ErrorDetail, ErrorInfo
from app.notifications.history import HistoryFilter
from app.notifications.schemas import NotificationPage
from app.pagination import Cursor, Limit
from app.patients import service as patient_service
from app.patients.schemas import (
    PATIENT_ID_PATTERN,
    PatientBatchIn,
    PatientBatchOut,
    PatientBatchResult,
    PatientIn,
    PatientOut,
    PatientPage,
)

router = APIRouter(prefix="/patients", tags=["patients"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such patient"}}

PatientIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=PATIENT_ID_PATTERN,
        description="The clinic system's id: 1-64 letters, digits and `._:@~+=-`",
        examples=["p-1"],
    ),
]


@router.post(
    "/batch",
    summary="Create or replace up to 1,000 patients",
    description="Answers one result per item, in the items' order. A bad item is refused "
    "with its own error and does not stop the others. An id given twice in one batch: "
    "its last valid item is stored and the earlier ones answer `duplicate_id`.",
    responses={**_ERRORS, 422: {"description": "Not a batch, or more than 1,000 items"}},
)
async def upsert_patients(body: PatientBatchIn, session: DbSession) -> PatientBatchOut:
    outcomes = await patient_service.put_patients(session, body.patients)
    results = []
    for outcome in outcomes:
        result = PatientBatchResult(index=outcome.index, id=outcome.id, status=outcome.status)
        if outcome.patient is not None:
            result.patient = PatientOut.from_model(outcome.patient, outcome.authorization)
        if outcome.error is not None:
            result.error = ErrorInfo(
                code=outcome.error.code,
                message=outcome.error.message,
                details=[ErrorDetail.model_validate(d) for d in outcome.error.details],
            )
        results.append(result)
    return PatientBatchOut(results=results)


@router.get(
    "",
    summary="Find patients by phone number, facility or name",
    description="Every filter given narrows the search; none lists every patient. In id "
    "order, a page at a time.",
    responses={**_ERRORS, 422: {"description": "A bad phone number, limit or cursor"}},
)
async def list_patients(
    session: DbSession,
    phone: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=40,
            description="Any of the patient's numbers, in any format: E.164, or national "
            "with `country`",
            examples=["+8801711000001"],
        ),
    ] = None,
    country: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z]{2}$",
            description="ISO 3166-1 alpha-2: how to read a national `phone`",
            examples=["BD"],
        ),
    ] = None,
    facility_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    name_prefix: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="The start of the full name, case-insensitive",
            examples=["rahim"],
        ),
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> PatientPage:
    page = await patient_service.search(
        session,
        number=phone,
        country=country,
        facility_id=facility_id,
        name_prefix=name_prefix,
        limit=limit,
        cursor=cursor,
    )
    return PatientPage(
        items=[PatientOut.from_model(p, a) for p, a in page.patients],
        next_cursor=page.next_cursor,
    )


@router.put(
    "/{patient_id}",
    summary="Create or replace a patient",
    description="200 when an existing patient was replaced, 201 when it was created.",
    responses={
        **_ERRORS,
        200: {"description": "Replaced an existing patient"},
        201: {"model": PatientOut, "description": "Created a new patient"},
        422: {"description": "A malformed body, an invalid number or time zone"},
    },
)
async def upsert_patient(
    patient_id: PatientIdPath, body: PatientIn, response: Response, session: DbSession
) -> PatientOut:
    stored = await patient_service.put_patient(session, patient_id, body)
    response.status_code = status.HTTP_201_CREATED if stored.created else status.HTTP_200_OK
    return PatientOut.from_model(stored.patient, stored.authorization)


@router.get("/{patient_id}", summary="One patient", responses={**_ERRORS, **_NOT_FOUND})
async def get_patient(patient_id: PatientIdPath, session: DbSession) -> PatientOut:
    patient, authorization = await patient_service.get_patient_with_authorization(
        session, patient_id
    )
    return PatientOut.from_model(patient, authorization)


@router.get(
    "/{patient_id}/notifications",
    summary="The patient's notifications, newest first",
    description="Sent and scheduled, each with its state, channel and attempts; filter by "
    "state, purpose and creation time; a page at a time to the very first.",
    responses={**_ERRORS, **_NOT_FOUND, 422: {"description": "A bad filter, limit or cursor"}},
)
async def list_patient_notifications(
    patient_id: PatientIdPath,
    where: HistoryFilter,
    session: DbSession,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    page = await patient_service.notifications_of(
        session, patient_id, where, limit=limit, cursor=cursor
    )
    return NotificationPage.from_models(page.notifications, page.attempts, page.next_cursor)
