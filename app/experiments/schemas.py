"""Wire shapes of experiments and their results."""

from __future__ import annotations

import enum
import math
import uuid
from datetime import date, datetime
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app import phone
from app.models import Experiment, ExperimentGroup
from app.reminder_plans.schemas import PLAN_NAME_PATTERN
from app.validation import BoundedDate, InputModel

EXPERIMENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
GROUP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,49}$"
MAX_GROUPS = 10


class ExperimentStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # before start_date
    RUNNING = "running"
    COMPLETED = "completed"  # past end_date
    STOPPED = "stopped"  # stopped early


def status_of(experiment: Experiment, today: date) -> ExperimentStatus:
    if experiment.stopped_at is not None:
        return ExperimentStatus.STOPPED
    if today < experiment.start_date:
        return ExperimentStatus.SCHEDULED
    if today > experiment.end_date:
        return ExperimentStatus.COMPLETED
    return ExperimentStatus.RUNNING


def _country(value: str) -> str:
    value = value.upper()
    if not phone.is_known_country(value):
        raise ValueError(f"'{value}' is not an ISO 3166 alpha-2 country")
    return value


Country = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$"), AfterValidator(_country)]
FacilityId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class EligibilityIn(InputModel):
    countries: list[Country] | None = Field(
        default=None,
        min_length=1,
        max_length=300,
        description="Patients of these countries only; null: every country",
        examples=[["BD"]],
    )
    facility_ids: list[FacilityId] | None = Field(
        default=None,
        min_length=1,
        max_length=10_000,
        description="Appointments at these facilities only; null: every facility",
    )


class GroupIn(InputModel):
    name: str = Field(pattern=GROUP_NAME_PATTERN, examples=["control"])
    weight: float = Field(
        gt=0, le=1_000_000, description="Share of enrolments: weight / sum of weights"
    )
    reminder_plan: str | None = Field(
        pattern=PLAN_NAME_PATTERN,
        description="The group's reminder plan; null: no reminders (the control)",
        examples=[None],
    )

    @model_validator(mode="after")
    def _finite(self) -> Self:
        if not math.isfinite(self.weight):
            raise ValueError("weight must be a finite number")
        return self


class ExperimentIn(InputModel):
    name: str = Field(pattern=EXPERIMENT_NAME_PATTERN, examples=["bd-2027-q1-cascade"])
    start_date: BoundedDate = Field(description="First day of enrolment (UTC)")
    end_date: BoundedDate = Field(
        description="Last day of enrolment (UTC). Only appointments scheduled from "
        "start_date to end_date enrol; one moved out of that range is evicted."
    )
    max_patients_per_day: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Enrolments per UTC day; null: no cap"
    )
    eligibility: EligibilityIn = Field(default_factory=EligibilityIn)
    return_window_days: int = Field(
        default=15,
        ge=0,
        le=365,
        description="A patient returned if they visited by the appointment date plus this",
    )
    groups: list[GroupIn] = Field(
        min_length=2,
        max_length=MAX_GROUPS,
        description="The first group is the control, with `reminder_plan: null`; every "
        "other group is compared with it",
    )

    @field_validator("end_date")
    @classmethod
    def _after_start(cls, end_date: date, info: ValidationInfo) -> date:
        start_date = info.data.get("start_date")
        if start_date is not None and end_date < start_date:
            raise ValueError("end_date is before start_date")
        return end_date

    @field_validator("groups")
    @classmethod
    def _control_first_and_unique(cls, groups: list[GroupIn]) -> list[GroupIn]:
        names = [g.name for g in groups]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"group names must be unique: {', '.join(repeated)} repeated")
        if groups and groups[0].reminder_plan is not None:
            raise ValueError(
                "the first group is the control: its reminder_plan must be null (no reminders)"
            )
        return groups


class GroupOut(BaseModel):
    name: str
    weight: float
    reminder_plan: str | None

    @classmethod
    def from_model(cls, group: ExperimentGroup) -> Self:
        return cls(name=group.name, weight=group.weight, reminder_plan=group.reminder_plan)


class EligibilityOut(BaseModel):
    countries: list[str] | None
    facility_ids: list[str] | None


class ExperimentOut(BaseModel):
    id: uuid.UUID
    name: str
    status: ExperimentStatus
    start_date: date
    end_date: date
    max_patients_per_day: int | None
    eligibility: EligibilityOut
    return_window_days: int
    groups: list[GroupOut]
    created_at: datetime
    stopped_at: datetime | None

    @classmethod
    def from_model(cls, experiment: Experiment, groups: list[ExperimentGroup], today: date) -> Self:
        return cls(
            id=experiment.id,
            name=experiment.name,
            status=status_of(experiment, today),
            start_date=experiment.start_date,
            end_date=experiment.end_date,
            max_patients_per_day=experiment.max_patients_per_day,
            eligibility=EligibilityOut(
                countries=experiment.countries, facility_ids=experiment.facility_ids
            ),
            return_window_days=experiment.return_window_days,
            groups=[GroupOut.from_model(g) for g in groups],
            created_at=experiment.created_at,
            stopped_at=experiment.stopped_at,
        )


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )


# ---------------------------------------------------------------------------- results


class ChannelCounts(BaseModel):
    attempts: int
    reached: int = Field(description="Attempts delivered or read")
    by_status: dict[str, int]


class VersusControl(BaseModel):
    difference: float = Field(description="This group's return rate minus the control's")
    ci95: tuple[float, float] = Field(
        description="Newcombe's hybrid score interval (method 10) of the difference"
    )
    z: float
    p_value: float = Field(description="Two-sided two-proportion z-test, pooled variance")


class GroupResult(BaseModel):
    name: str
    reminder_plan: str | None
    weight: float
    enrolled: int = Field(description="Every patient enrolled: the denominator")
    evicted: int = Field(description="Enrolled patients later evicted; still in the denominator")
    evicted_by_reason: dict[str, int]
    reminders: int = Field(description="Notifications of the group's appointments")
    reminders_by_state: dict[str, int]
    reminders_reached: int = Field(description="Reminders with an attempt delivered or read")
    attempts_by_channel: dict[str, ChannelCounts]
    patients_reached: int = Field(description="Patients with at least one reminder reached")
    returned: int = Field(description="Patients who visited by appointment date + window")
    awaiting_outcome: int = Field(
        description="Not returned yet, but their return window is still open"
    )
    return_rate: float | None
    return_rate_ci95: tuple[float, float] | None = Field(description="Wilson score interval")
    versus_control: VersusControl | None = Field(
        description="Null for the control itself, or when a group is empty"
    )


class Methods(BaseModel):
    population: str
    reached: str
    returned: str
    return_rate_interval: str
    difference_interval: str
    test: str


class ExperimentResults(BaseModel):
    experiment: ExperimentOut
    computed_at: datetime
    methods: Methods
    groups: list[GroupResult]
