"""HTTP for appointments: register or move one, cancel it, record the visit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status

from app.appointments import service as appointment_service
from app.appointments.schemas import (
    APPOINTMENT_ID_PATTERN,
    AppointmentIn,
    AppointmentOut,
    VisitIn,
)
from app.db.session import DbSession

router = APIRouter(prefix="/appointments", tags=["appointments"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such appointment"}}

AppointmentIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=APPOINTMENT_ID_PATTERN,
        description="The clinic system's id: 1-64 letters, digits and `._:@~+=-`",
        examples=["a-9"],
    ),
]


def _answer(found: appointment_service.AppointmentView) -> AppointmentOut:
    return AppointmentOut.from_model(
        found.appointment, found.reminders, found.membership, reminders_note=found.reminders_note
    )


@router.put(
    "/{appointment_id}",
    summary="Register or move an appointment; its reminders follow",
    description="Schedules a reminder per entry of the plan that applies: the patient's "
    "experiment group's plan (none for a control group), else the default plan (a fresh "
    "installation has one, `default`: the day before and two days after the visit). "
    "When the answer has no reminders, `reminders_note` says why. "
    "`remind_on` is `scheduled_date + offset_days`; reminders whose day's messaging "
    "window has closed are not scheduled. Registering a new appointment may enrol the "
    "patient in a running experiment. Sending the same body again changes nothing; "
    "another date or facility clears the unsent reminders and schedules the plan's "
    "reminders for the new date. To cancel, `POST .../cancel`. 201 when the appointment "
    "was registered, 200 otherwise.",
    responses={
        **_ERRORS,
        200: {"description": "An appointment already known: unchanged or moved"},
        201: {"model": AppointmentOut, "description": "A new appointment"},
        409: {"description": "Another patient's, cancelled, or visited (and moved)"},
        422: {
            "description": "A malformed body, an unknown patient, or a variable that a "
            "reminder's template needs and the appointment cannot fill (the default plan's "
            "texts name the facility: give the appointment or its patient a `facility`)"
        },
    },
)
async def upsert_appointment(
    appointment_id: AppointmentIdPath,
    body: AppointmentIn,
    request: Request,
    response: Response,
    session: DbSession,
) -> AppointmentOut:
    found = await appointment_service.put_appointment(
        session, appointment_id, body, request.app.state.settings
    )
    response.status_code = status.HTTP_201_CREATED if found.created else status.HTTP_200_OK
    return _answer(found)


@router.get(
    "/{appointment_id}",
    summary="An appointment with its reminders",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_appointment(appointment_id: AppointmentIdPath, session: DbSession) -> AppointmentOut:
    return _answer(await appointment_service.get(session, appointment_id))


@router.post(
    "/{appointment_id}/cancel",
    summary="Cancel an appointment: its unsent reminders become `cleared`",
    description="A patient whom this appointment enrolled in an experiment is evicted "
    "from it (reason `appointment_cancelled`), and still counted. Cancelling again "
    "changes nothing. A cancelled appointment cannot be moved: register a new one.",
    responses={**_ERRORS, **_NOT_FOUND, 409: {"description": "The appointment was visited"}},
)
async def cancel_appointment(
    appointment_id: AppointmentIdPath, session: DbSession
) -> AppointmentOut:
    return _answer(await appointment_service.cancel(session, appointment_id))


@router.post(
    "/{appointment_id}/visit",
    summary="Record that the patient came",
    description="Every reminder of the appointment not yet sent (missed-visit ones "
    "included) becomes `cleared`, and the visit counts as a return for the patient's "
    "experiments. Sending it again changes nothing; of two different times the earlier "
    "is kept.",
    responses={
        **_ERRORS,
        **_NOT_FOUND,
        422: {"description": "A malformed body or a visit in the future"},
    },
)
async def record_visit(
    appointment_id: AppointmentIdPath, body: VisitIn, session: DbSession
) -> AppointmentOut:
    return _answer(await appointment_service.record_visit(session, appointment_id, body.visited_at))
