"""Wire shapes of events and trigger rules."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from app.models import Event, TriggerRule
from app.notifications.schemas import PURPOSE_PATTERN
from app.validation import BoundedDatetime, InputModel

NAME_PATTERN = r"^[a-z][a-z0-9_.\-]{0,99}$"
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_.\-]{0,49}$"
TEMPLATE_PATTERN = r"^[a-z][a-z0-9_.\-]{0,99}$"


class EventIn(InputModel):
    id: str = Field(min_length=1, max_length=64, description="The clinic system's own id")
    type: str = Field(
        pattern=EVENT_TYPE_PATTERN, examples=["registration", "enrolment", "visit_completed"]
    )
    patient_id: str = Field(min_length=1, max_length=64)
    staff_id: str | None = Field(default=None, min_length=1, max_length=64)
    occurred_at: BoundedDatetime
    data: dict[str, Any] = Field(default_factory=dict)


class EventOut(BaseModel):
    id: str
    type: str
    patient_id: str
    staff_id: str | None
    occurred_at: datetime
    data: dict[str, Any]
    voided_at: datetime | None
    rule_errors: dict[str, str] = Field(
        description="Rules that failed to evaluate on this event, with why"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, event: Event) -> Self:
        return cls(
            id=event.id,
            type=event.type,
            patient_id=event.patient_id,
            staff_id=event.staff_id,
            occurred_at=event.occurred_at,
            data=event.data,
            voided_at=event.voided_at,
            rule_errors=event.rule_errors,
            created_at=event.created_at,
            updated_at=event.updated_at,
        )


class SendAt(InputModel):
    days: int = Field(default=0, ge=0, le=366, description="Days after `occurred_at`")
    hours: int = Field(default=0, ge=0, le=23)
    at: time | None = Field(
        default=None,
        description="Local time of day in the patient's time zone (moved into the window)",
        examples=["10:00"],
    )


class TriggerRuleIn(InputModel):
    event_type: str = Field(pattern=EVENT_TYPE_PATTERN)
    condition: str = Field(
        default="true",
        min_length=1,
        max_length=2000,
        description="CEL over `event` and `patient`; false schedules nothing",
        examples=['event.data.gestational_week >= 28 && patient.locale == "hi"'],
    )
    send_at: SendAt = Field(default_factory=SendAt)
    template: str = Field(pattern=TEMPLATE_PATTERN)
    parameters: dict[str, str] = Field(
        default_factory=dict,
        max_length=50,
        description="Template variable -> CEL expression (its value is the variable)",
    )
    recipient: Literal["patient", "staff"] = Field(
        default="patient",
        description="`patient`: the event's patient; `staff`: the event's `staff_id`, by "
        "email (an event without one records the rule's error on the event)",
    )
    purpose: str = Field(pattern=PURPOSE_PATTERN)
    active: bool = True


class TriggerRuleOut(TriggerRuleIn):
    name: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, rule: TriggerRule) -> Self:
        return cls(
            name=rule.name,
            event_type=rule.event_type,
            condition=rule.condition,
            send_at=SendAt.model_validate(rule.send_at),
            template=rule.template,
            parameters=rule.parameters,
            recipient="staff" if rule.recipient == "staff" else "patient",
            purpose=rule.purpose,
            active=rule.active,
            created_at=rule.created_at,
            updated_at=rule.updated_at,
        )
