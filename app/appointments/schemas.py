"""Wire shapes of appointments."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Literal, Self, cast

from pydantic import BaseModel, Field

from app.models import Appointment, Experiment, ExperimentGroup, ExperimentMembership, Notification
from app.patients.schemas import PATIENT_ID_PATTERN, Facility, FacilityOut, PatientId
from app.states import NotificationState
from app.validation import BoundedDate, BoundedDatetime, InputModel

AppointmentStatus = Literal["scheduled", "visited", "cancelled"]
APPOINTMENT_ID_PATTERN = PATIENT_ID_PATTERN


class AppointmentIn(InputModel):
    patient_id: PatientId
    scheduled_date: BoundedDate = Field(description="The day of the visit", examples=["2027-01-15"])
    facility: Facility | None = Field(
        default=None,
        description="Where the visit is; defaults to the patient's facility. Its name "
        "fills `facility_name` in the reminders.",
    )


class VisitIn(InputModel):
    visited_at: BoundedDatetime = Field(
        description="When the patient came (not in the future)",
        examples=["2027-01-15T10:30:00+06:00"],
    )


class AppointmentReminderOut(BaseModel):
    id: uuid.UUID
    purpose: str
    template: str
    remind_on: date | None
    state: NotificationState
    due_at: datetime
    failure_reason: str | None

    @classmethod
    def from_model(cls, notification: Notification, now: datetime) -> Self:
        state = NotificationState(notification.state)
        if state is NotificationState.SCHEDULED and notification.due_at <= now:
            state = NotificationState.PENDING
        return cls(
            id=notification.id,
            purpose=notification.purpose,
            template=notification.template_key,
            remind_on=notification.remind_on,
            state=state,
            due_at=notification.due_at,
            failure_reason=notification.failure_reason,
        )


class AppointmentExperimentOut(BaseModel):
    id: uuid.UUID
    name: str
    group: str
    enrolled_by_this_appointment: bool
    evicted_reason: str | None


class AppointmentOut(BaseModel):
    id: str
    patient_id: str
    scheduled_date: date
    facility: FacilityOut | None
    status: AppointmentStatus
    visited_at: datetime | None
    cancelled_at: datetime | None
    reminder_plan: str | None = Field(
        description="The plan its reminders were scheduled from; null: none (no default "
        "plan, or the patient is in an experiment's control group)"
    )
    experiment: AppointmentExperimentOut | None = Field(
        description="The experiment membership the appointment counts for"
    )
    reminders: list[AppointmentReminderOut] = Field(
        description="Every notification of this appointment, cleared ones included"
    )
    reminders_note: str | None = Field(
        description="Why there are no reminders, when there are none (no default plan, an "
        "experiment's control group, every reminder's day passed); null when there are",
        examples=[None],
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(
        cls,
        appointment: Appointment,
        reminders: Sequence[Notification],
        membership: tuple[ExperimentMembership, Experiment, ExperimentGroup] | None,
        *,
        reminders_note: str | None = None,
        now: datetime | None = None,
    ) -> Self:
        now = now or datetime.now(UTC)
        facility = None
        if appointment.facility_id is not None:
            facility = FacilityOut(id=appointment.facility_id, name=appointment.facility_name or "")
        experiment = None
        if membership is not None:
            member, found, group = membership
            experiment = AppointmentExperimentOut(
                id=found.id,
                name=found.name,
                group=group.name,
                enrolled_by_this_appointment=member.appointment_id == appointment.id,
                evicted_reason=member.evicted_reason,
            )
        return cls(
            id=appointment.id,
            patient_id=appointment.patient_id,
            scheduled_date=appointment.scheduled_date,
            facility=facility,
            status=cast(AppointmentStatus, appointment.status),
            visited_at=appointment.visited_at,
            cancelled_at=appointment.cancelled_at,
            reminder_plan=appointment.reminder_plan,
            experiment=experiment,
            reminders=[AppointmentReminderOut.from_model(n, now) for n in reminders],
            reminders_note=reminders_note,
            created_at=appointment.created_at,
            updated_at=appointment.updated_at,
        )
