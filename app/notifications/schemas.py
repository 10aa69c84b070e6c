"""Wire shapes of notifications."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Self

from pydantic import BaseModel, Field, model_validator

from app.models import DeliveryAttempt, Notification
from app.states import NotificationState
from app.validation import BoundedDate, BoundedDatetime, InputModel, SingleLine

_SLUG = r"^[a-z][a-z0-9_.\-]{0,99}$"
PURPOSE_PATTERN = r"^[a-z][a-z0-9_]{0,49}$"


class NotificationIn(InputModel):
    """One message to a patient (`patient_id`) or to a staff user (`staff_id`, by email
    only, in their locale, inside the window of STAFF_TIME_ZONE): one of the two."""

    # Added after patient_id: left out of the Idempotency-Key's hash while null, so a
    # request stored before keeps its hash (`notification_service.request_hash`).
    HASHED_ONLY_WHEN_SET: ClassVar[tuple[str, ...]] = ("staff_id",)

    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    staff_id: str | None = Field(default=None, min_length=1, max_length=64)
    purpose: str = Field(pattern=PURPOSE_PATTERN, examples=["appointment_reminder"])
    template: str = Field(pattern=_SLUG, examples=["appointment_reminder.basic"])
    variables: dict[str, SingleLine | int | float] = Field(default_factory=dict, max_length=50)
    remind_on: BoundedDate | None = Field(
        default=None, description="Send inside the messaging window of this local day."
    )
    send_at: BoundedDatetime | None = Field(
        default=None, description="Send then, or at the next opening of the window."
    )
    appointment_id: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_moment(self) -> Self:
        if (self.patient_id is None) == (self.staff_id is None):
            raise ValueError("give patient_id or staff_id, one of them")
        if self.staff_id is not None and self.appointment_id is not None:
            raise ValueError("appointment_id is a patient's: not with staff_id")
        if self.remind_on is not None and self.send_at is not None:
            raise ValueError("give remind_on or send_at, not both")
        for name, value in self.variables.items():
            if not name.isidentifier() or len(name) > 64:
                raise ValueError(f"variable name '{name[:64]}' is not an identifier")
            if isinstance(value, str) and len(value) > 500:
                raise ValueError(f"variable '{name}' is longer than 500 characters")
        return self


class DeliveryAttemptOut(BaseModel):
    channel: str
    status: str
    provider_message_id: str | None
    provider_status: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    state_history: list[dict[str, str]] | None = Field(
        default=None,
        description="Gateway phones: every state the phone reported, "
        "`[{state, at, reason?}]`, oldest first",
    )

    @classmethod
    def from_model(cls, attempt: DeliveryAttempt) -> Self:
        return cls(
            channel=attempt.channel,
            status=attempt.status,
            provider_message_id=attempt.provider_message_id,
            provider_status=attempt.provider_status,
            error_code=attempt.error_code,
            error_message=attempt.error_message,
            created_at=attempt.created_at,
            sent_at=attempt.sent_at,
            delivered_at=attempt.delivered_at,
            read_at=attempt.read_at,
            failed_at=attempt.failed_at,
            state_history=attempt.state_history,
        )


class NotificationOut(BaseModel):
    id: uuid.UUID
    patient_id: str | None = Field(description="The patient it goes to; null for a staff member")
    staff_id: str | None = Field(
        description="The staff member it goes to (by email); null for a patient"
    )
    purpose: str
    template: str
    locale: str
    variables: dict[str, Any]
    title: str
    text: str
    appointment_id: str | None
    remind_on: date | None
    send_at: datetime | None
    state: NotificationState
    due_at: datetime
    expires_at: datetime
    channel: str | None = Field(description="The channel of the latest attempt")
    failure_reason: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    created_at: datetime
    updated_at: datetime
    attempts: list[DeliveryAttemptOut]

    @classmethod
    def from_model(
        cls,
        notification: Notification,
        attempts: Sequence[DeliveryAttempt] = (),
        *,
        now: datetime | None = None,
    ) -> Self:
        state = NotificationState(notification.state)
        if state is NotificationState.SCHEDULED and notification.due_at <= (
            now or datetime.now(UTC)
        ):
            state = NotificationState.PENDING
        return cls(
            id=notification.id,
            patient_id=notification.patient_id,
            staff_id=notification.staff_id,
            purpose=notification.purpose,
            template=notification.template_key,
            locale=notification.locale,
            variables=notification.variables,
            title=notification.title,
            text=notification.body,
            appointment_id=notification.appointment_id,
            remind_on=notification.remind_on,
            send_at=notification.send_at,
            state=state,
            due_at=notification.due_at,
            expires_at=notification.expires_at,
            channel=attempts[-1].channel if attempts else None,
            failure_reason=notification.failure_reason,
            sent_at=notification.sent_at,
            delivered_at=notification.delivered_at,
            read_at=notification.read_at,
            created_at=notification.created_at,
            updated_at=notification.updated_at,
            attempts=[DeliveryAttemptOut.from_model(a) for a in attempts],
        )


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )

    @classmethod
    def from_models(
        cls,
        notifications: Sequence[Notification],
        attempts: Mapping[uuid.UUID, Sequence[DeliveryAttempt]],
        next_cursor: str | None,
    ) -> Self:
        return cls(
            items=[NotificationOut.from_model(n, attempts.get(n.id, ())) for n in notifications],
            next_cursor=next_cursor,
        )
