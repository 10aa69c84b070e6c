"""Wire shapes of reminder plans."""

from __future__ import annotations

from datetime import datetime
from typing import Self

from pydantic import BaseModel, Field, field_validator

from app.models import ReminderPlan
from app.templates.schemas import TEMPLATE_KEY_PATTERN
from app.validation import InputModel

PLAN_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,99}$"
MAX_REMINDERS = 20
MAX_OFFSET_DAYS = 365


class PlanReminder(InputModel):
    offset_days: int = Field(
        ge=-MAX_OFFSET_DAYS,
        le=MAX_OFFSET_DAYS,
        description="Days from the appointment date: -1 is the day before, 0 the day "
        "itself (both `appointment_reminder`), 3 is three days after (`missed_visit`, "
        "cleared by a visit)",
        examples=[-1],
    )
    template: str = Field(
        min_length=1,
        max_length=100,
        pattern=TEMPLATE_KEY_PATTERN,
        description="A template whose variables are among `patient_name`, "
        "`facility_name` and `appointment_date`",
        examples=["appointment_reminder.basic"],
    )


class ReminderPlanIn(InputModel):
    reminders: list[PlanReminder] = Field(
        max_length=MAX_REMINDERS,
        description=f"Up to {MAX_REMINDERS} reminders; an empty plan sends none",
    )
    default: bool = Field(
        default=False,
        description="The plan of every appointment whose patient is in no running "
        "experiment. Making a plan the default takes it from the previous one; the "
        "default cannot be unset, only moved to another plan.",
    )

    @field_validator("reminders")
    @classmethod
    def _distinct(cls, reminders: list[PlanReminder]) -> list[PlanReminder]:
        seen = set()
        for reminder in reminders:
            pair = (reminder.offset_days, reminder.template)
            if pair in seen:
                raise ValueError(
                    f"reminder ({reminder.offset_days}, {reminder.template}) is given twice"
                )
            seen.add(pair)
        return reminders


class ReminderPlanOut(BaseModel):
    name: str
    reminders: list[PlanReminder]
    default: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, plan: ReminderPlan) -> Self:
        return cls(
            name=plan.name,
            reminders=[PlanReminder.model_validate(r) for r in plan.reminders],
            default=plan.is_default,
            created_at=plan.created_at,
            updated_at=plan.updated_at,
        )


class ReminderPlanPage(BaseModel):
    items: list[ReminderPlanOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page"
    )
