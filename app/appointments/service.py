"""Appointment rules: reminders from the plan that applies, rescheduling, cancelling,
and visits.

- A new appointment gets a reminder per entry of its plan (the patient's experiment
  group's, else the default plan), each a notification with the appointment's id,
  `remind_on = scheduled_date + offset_days`, purpose `appointment_reminder` (offset
  <= 0) or `missed_visit` (offset > 0). A reminder whose day's messaging window has
  closed already is not scheduled.
- Re-sending it unchanged changes nothing. With another date or facility, its unsent
  reminders are cleared (they name the old date) and the plan's reminders are scheduled
  again for the new one.
- Cancelling clears its unsent reminders; a visit does the same and counts for the
  experiment the patient is in.

Every change of one appointment holds its row lock, so concurrent requests about it
run one after another.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments import repository as appointment_repository
from app.appointments.schemas import AppointmentIn
from app.config import Settings
from app.errors import Conflict, NotFound, field_error
from app.experiments import repository as experiment_repository
from app.experiments import service as experiment_service
from app.models import (
    Appointment,
    Experiment,
    ExperimentGroup,
    ExperimentMembership,
    Notification,
    Patient,
)
from app.models.experiment_membership import EvictionReason
from app.notifications import service as notification_service
from app.notifications.schemas import NotificationIn
from app.notifications.window import zone
from app.reminder_plans import repository as plan_repository

# A visit a little in the future is a clock out of step; more is a mistake.
VISIT_CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class AppointmentView:
    appointment: Appointment
    reminders: list[Notification]
    membership: tuple[ExperimentMembership, Experiment, ExperimentGroup] | None
    created: bool = False

    @property
    def reminders_note(self) -> str | None:
        """Why the appointment has no reminder, when it has none; None when it has."""
        if self.reminders:
            return None
        plan = self.appointment.reminder_plan
        if plan is not None:
            return (
                f"no reminder of plan '{plan}' was scheduled: the plan has none, or the "
                "day of each has passed in the patient's time zone"
            )
        if self.membership is not None and self.membership[2].reminder_plan is None:
            return (
                f"the patient is in the control group of experiment "
                f"'{self.membership[1].name}': no reminders, by design"
            )
        return (
            "no reminder plan applies: there is no default plan. Make one the default "
            '(PUT /v1/reminder-plans/{name} with "default": true); appointments sent '
            "from then on get its reminders"
        )


def purpose_of(offset_days: int) -> str:
    return "appointment_reminder" if offset_days <= 0 else "missed_visit"


async def put_appointment(
    session: AsyncSession,
    appointment_id: str,
    request: AppointmentIn,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> AppointmentView:
    """Register or re-send an appointment and (re)schedule its reminders.

    Idempotent: the same body again changes nothing. Raises InvalidInput (unknown
    patient, a template that no longer renders), Conflict (the appointment belongs to
    another patient, was cancelled, or was visited and is now moved). Flushes.
    """
    now = now or datetime.now(UTC)
    patient = await session.get(Patient, request.patient_id)
    if patient is None:
        raise field_error("patient_id", f"no patient '{request.patient_id}'")
    facility_id: str | None
    facility_name: str | None
    if request.facility is not None:
        facility_id, facility_name = request.facility.id, request.facility.name
    else:
        facility_id, facility_name = patient.facility_id, patient.facility_name

    created = await appointment_repository.insert_if_absent(
        session,
        {
            "id": appointment_id,
            "patient_id": patient.id,
            "scheduled_date": request.scheduled_date,
            "facility_id": facility_id,
            "facility_name": facility_name,
            "status": "scheduled",
        },
    )
    appointment = await appointment_repository.get_for_update(session, appointment_id)
    assert appointment is not None
    if not created:
        if appointment.patient_id != patient.id:
            raise Conflict(
                f"appointment '{appointment_id}' belongs to another patient; "
                "register the appointment under a new id"
            )
        unchanged = (
            appointment.scheduled_date == request.scheduled_date
            and appointment.facility_id == facility_id
            and appointment.facility_name == facility_name
        )
        if unchanged:
            return await view(session, appointment)
        if appointment.status != "scheduled":
            raise Conflict(
                f"appointment '{appointment_id}' is {appointment.status}: "
                "register the next visit under a new id"
            )
        appointment.scheduled_date = request.scheduled_date
        appointment.facility_id = facility_id
        appointment.facility_name = facility_name
        await appointment_repository.clear_unsent(
            session, appointment.id, "appointment rescheduled"
        )

    choice = await experiment_service.choose_plan(
        session, patient, appointment, registering=created, now=now
    )
    membership = choice.membership
    if membership is not None and (
        membership.evicted_at is None or membership.appointment_id == appointment.id
    ):
        appointment.membership_id = membership.id
    appointment.reminder_plan = choice.plan_name
    await session.flush()
    await _schedule_plan(session, appointment, patient, choice.plan_name, settings, now)
    result = await view(session, appointment)
    return replace(result, created=created)


async def _schedule_plan(
    session: AsyncSession,
    appointment: Appointment,
    patient: Patient,
    plan_name: str | None,
    settings: Settings,
    now: datetime,
) -> None:
    if plan_name is None:
        return
    plan = await plan_repository.get(session, plan_name)
    if plan is None:
        return
    window = notification_service.window_of(settings)
    variables: dict[str, str | int | float] = {
        "appointment_date": appointment.scheduled_date.isoformat()
    }
    if appointment.facility_name:
        variables["facility_name"] = appointment.facility_name
    for reminder in plan.reminders:
        offset = int(reminder["offset_days"])
        remind_on = appointment.scheduled_date + timedelta(days=offset)
        if window.moment_on(remind_on, patient.time_zone, now) is None:
            continue  # its moment has passed
        await notification_service.schedule(
            session,
            NotificationIn(
                patient_id=patient.id,
                purpose=purpose_of(offset),
                template=reminder["template"],
                variables=variables,
                remind_on=remind_on,
                appointment_id=appointment.id,
            ),
            settings,
            now=now,
        )


async def cancel(
    session: AsyncSession, appointment_id: str, *, now: datetime | None = None
) -> AppointmentView:
    """Cancel: unsent reminders -> `cleared`; an experiment member enrolled by this
    appointment is evicted. Idempotent. Raises NotFound, Conflict (visited)."""
    now = now or datetime.now(UTC)
    appointment = await _locked(session, appointment_id)
    if appointment.status == "visited":
        raise Conflict(f"appointment '{appointment_id}' was visited; it cannot be cancelled")
    if appointment.status == "scheduled":
        appointment.status = "cancelled"
        appointment.cancelled_at = now
        await session.flush()
        await appointment_repository.clear_unsent(session, appointment.id, "appointment cancelled")
        found = await _membership(session, appointment)
        if found is not None and found[0].appointment_id == appointment.id:
            await experiment_service.evict(session, found[0], EvictionReason.CANCELLED, now)
    return await view(session, appointment)


async def record_visit(
    session: AsyncSession,
    appointment_id: str,
    visited_at: datetime,
    *,
    now: datetime | None = None,
) -> AppointmentView:
    """The patient came: unsent reminders -> `cleared`, and the return counts for the
    patient's experiments. Idempotent; of several visits the earliest is kept.
    Raises NotFound, InvalidInput (a visit in the future)."""
    now = now or datetime.now(UTC)
    if visited_at > now + VISIT_CLOCK_SKEW:
        raise field_error("visited_at", "is in the future")
    appointment = await _locked(session, appointment_id)
    patient = await session.get(Patient, appointment.patient_id)
    assert patient is not None
    visited_on = visited_at.astimezone(zone(patient.time_zone)).date()
    if appointment.visited_at is None or visited_at < appointment.visited_at:
        appointment.visited_at = visited_at
        appointment.visited_on = visited_on
    if appointment.status == "scheduled":
        appointment.status = "visited"
    await session.flush()
    await appointment_repository.clear_unsent(session, appointment.id, "visited")
    await experiment_service.record_visit(session, patient, visited_at, visited_on)
    return await view(session, appointment)


async def get(session: AsyncSession, appointment_id: str) -> AppointmentView:
    """Raises NotFound."""
    appointment = await appointment_repository.get(session, appointment_id)
    if appointment is None:
        raise NotFound(f"no appointment '{appointment_id}'")
    return await view(session, appointment)


async def view(session: AsyncSession, appointment: Appointment) -> AppointmentView:
    # A flush expired the server-set `updated_at`: read the row as stored.
    await session.refresh(appointment)
    reminders = await appointment_repository.reminders_of(session, appointment.id)
    return AppointmentView(appointment, list(reminders), await _membership(session, appointment))


async def _membership(
    session: AsyncSession, appointment: Appointment
) -> tuple[ExperimentMembership, Experiment, ExperimentGroup] | None:
    if appointment.membership_id is None:
        return None
    return await experiment_repository.membership_with_experiment(
        session, appointment.membership_id
    )


async def _locked(session: AsyncSession, appointment_id: str) -> Appointment:
    appointment = await appointment_repository.get_for_update(session, appointment_id)
    if appointment is None:
        raise NotFound(f"no appointment '{appointment_id}'")
    return appointment
